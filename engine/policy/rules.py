"""Rule files: load, check against the schema and the facts vocabulary, and represent them.

A rule is data: `when` (conditions over named facts), `then` (reject, score, advise, set a knob),
`because` (an explanation template over fact names), `source`, and `tests` (examples that fire or not).
Everything is checked when loaded, and every problem of every file is reported at once.
"""
from __future__ import annotations

import difflib
import json
import math
import os
import stat
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from ..core.errors import RuleError
from . import cache
from .conditions import ORDERING_OPS, OPS, Condition, facts_read
from .parse import build, depth, from_dict
from .limits import MAX_DEPTH, MAX_LITERALS, MAX_RULE_FILE_BYTES, MAX_RULES
from .templates import check_template
from .vocabulary import FACT_TYPES

# libyaml's loader where PyYAML was built with it: 10x faster than the pure-Python one on the rule base.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
__all__ = ["Rule", "load_rules", "check_sources", "builtin_rule_files", "ORDERING_OPS", "OPS"]


@dataclass(frozen=True)
class Rule:
    """One checked rule. `when` is a parsed Condition (a dict given here is parsed, unchecked)."""

    id: str
    description: str
    when: Condition
    then: dict[str, Any]
    because: str
    source: str
    tests: tuple[dict[str, Any], ...]
    priority: int
    file: str
    topic: str

    def __post_init__(self) -> None:
        if not isinstance(self.when, Condition):
            object.__setattr__(self, "when", from_dict(self.when))

    @property
    def facts_used(self) -> frozenset[str]:
        return facts_read(self.when)

    def as_dict(self) -> dict[str, Any]:
        """Plain data (the cache's form): `when` as a rule file writes it."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return {**out, "when": self.when.as_dict(), "tests": list(self.tests)}


def _schema() -> dict[str, Any]:
    text = resources.files("memfit.schemas").joinpath("rule.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def _suggest(name: str) -> str:
    close = difflib.get_close_matches(name, list(FACT_TYPES), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _value_ok(fact_type: type, value: Any) -> bool:
    if fact_type is bool:
        return isinstance(value, bool)
    if fact_type in (int, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, str)


def _check_comparison(cond: dict[str, Any], where: str) -> list[str]:
    """Problems of one comparison (fact names and value types); all/any/not are walked by build()."""
    name = cond["fact"]
    if name not in FACT_TYPES:
        return [f"{where}.fact: unknown fact '{name}'{_suggest(name)}"]
    ftype = FACT_TYPES[name]
    op = next(k for k in OPS if k in cond)
    value = cond[op]
    if op in ORDERING_OPS and ftype not in (int, float):
        return [f"{where}.{op}: '{name}' is {ftype.__name__}; only numbers can be ordered"]
    if isinstance(value, dict):
        other = value["fact"]
        if other not in FACT_TYPES:
            return [f"{where}.{op}.fact: unknown fact '{other}'{_suggest(other)}"]
        if (FACT_TYPES[other] in (int, float)) != (ftype in (int, float)) or \
                (ftype not in (int, float) and FACT_TYPES[other] is not ftype):
            return [f"{where}.{op}: cannot compare {name} ({ftype.__name__}) with {other} "
                    f"({FACT_TYPES[other].__name__})"]
        return []
    values = value if op in ("in", "not_in") else [value]
    if len(values) > MAX_LITERALS:
        return [f"{where}.{op}: {len(values)} literals (limit {MAX_LITERALS})"]
    bad = [v for v in values if not _value_ok(ftype, v)]
    if bad:
        return [f"{where}.{op}: '{name}' is {ftype.__name__} (got {_excerpt(bad[0])})"]
    return [f"{where}.{op}: {v!r} is not a finite number" for v in values
            if isinstance(v, float) and not math.isfinite(v)][:1]


def _excerpt(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_rule(raw: dict[str, Any], where: str) -> tuple[Condition | None, list[str]]:
    when, problems = build(raw["when"], _check_comparison, f"{where}.when")
    problems += check_template(raw["because"], f"{where}.because", FACT_TYPES)
    used = facts_read(when) if when is not None else frozenset()
    for i, example in enumerate(raw["tests"]):
        unknown = [k for k in example["facts"] if k not in FACT_TYPES]
        problems += [f"{where}.tests[{i}].facts.{k}: unknown fact{_suggest(k)}" for k in unknown]
        missing = sorted(used - set(example["facts"]))
        if missing:
            problems.append(f"{where}.tests[{i}].facts: must give every fact the rule reads (missing {', '.join(missing)})")
        problems += [f"{where}.tests[{i}].facts.{k}: expected {FACT_TYPES[k].__name__} (got {v!r})"
                     for k, v in example["facts"].items() if k in FACT_TYPES and not _value_ok(FACT_TYPES[k], v)]
    fires = {e["fires"] for e in raw["tests"]}
    if fires != {True, False}:
        problems.append(f"{where}.tests: needs at least one example that fires and one that does not")
    return when, problems


def _read_file(path: Path, text: str, validator: Any) -> tuple[list[Rule], list[str]]:
    # validator: a jsonschema Draft202012Validator (jsonschema ships no type information)
    try:
        data = yaml.load(text, Loader=_YAML_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        return [], [f"{path}: not valid YAML{at}: {getattr(exc, 'problem', exc)}"]
    except RecursionError:
        return [], [f"{path}: YAML nested too deeply"]
    # Before the schema: jsonschema recurses once per level and would raise RecursionError on `all:`
    # nested a few hundred deep.
    too_deep = _too_deep(path, data)
    if too_deep:
        return [], too_deep
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        return [], [f"{path}: {_json_path(e.absolute_path)}: {_excerpt(e.message, 300)}" for e in errors]
    rules, problems = [], []
    for i, raw in enumerate(data["rules"]):
        where = f"{path}: rules[{i}] ({raw['id']})"
        when, issues = _check_rule(raw, where)
        problems += issues
        if when is not None:
            rules.append(Rule(id=raw["id"], description=raw["description"], when=when, then=raw["then"],
                              because=raw["because"], source=raw["source"], tests=tuple(raw["tests"]),
                              priority=raw.get("priority", 0), file=str(path), topic=data["topic"]))
    return rules, problems


def _too_deep(path: Path, data: Any) -> list[str]:
    rules = data.get("rules") if isinstance(data, dict) else None
    if not isinstance(rules, list):
        return []
    out = []
    for i, raw in enumerate(rules):
        if isinstance(raw, dict) and isinstance(raw.get("when"), dict):
            d = depth(raw["when"])
            if d > MAX_DEPTH:
                out.append(f"{path}: rules[{i}] ({str(raw.get('id'))[:60]}).when: all/any/not nested {d} deep "
                           f"(limit {MAX_DEPTH})")
    return out


def _json_path(parts: Iterable[int | str]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def builtin_rule_files() -> list[tuple[str, str]]:
    """(name, text) of the rule files shipped in memfit.rules, sorted by name."""
    root = resources.files("memfit.rules")
    return sorted((f"rules/{p.name}", p.read_text(encoding="utf-8"))
                  for p in root.iterdir() if p.name.endswith(".yaml"))


def _read_source(f: Path) -> tuple[str | None, str | None]:
    """(text, None) or (None, problem): regular files only, bounded, UTF-8."""
    try:
        st = f.stat()
        if not stat.S_ISREG(st.st_mode):
            return None, f"{f}: not a regular file"
        if st.st_size > MAX_RULE_FILE_BYTES:
            return None, f"{f}: {st.st_size} bytes (limit {MAX_RULE_FILE_BYTES} per rule file)"
        with open(f, "rb") as fh:  # read at most the limit: the size may grow after stat
            data = fh.read(MAX_RULE_FILE_BYTES + 1)
    except OSError as exc:
        return None, f"{f}: cannot read ({exc.strerror or exc})"
    if len(data) > MAX_RULE_FILE_BYTES:
        return None, f"{f}: more than {MAX_RULE_FILE_BYTES} bytes (limit per rule file)"
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return None, f"{f}: not UTF-8 text (byte {exc.start})"


def load_rules(extra_dirs: Iterable[str | Path] = (), include_builtin: bool = True) -> list[Rule]:
    """Load and check the built-in rules plus every *.yaml in extra_dirs.

    A rule base whose exact sources (with the same checker, schema and facts vocabulary) were checked
    before is read back from the verified cache of checked rule bases (engine/policy/cache.py).

    Raises:
        RuleError: every problem of every file (unreadable or oversized files, schema, unknown facts,
        types, limits, duplicate ids, examples that cannot be evaluated).
    """
    sources: list[tuple[str, str]] = builtin_rule_files() if include_builtin else []
    problems: list[str] = []
    for d in extra_dirs:
        directory = Path(d)
        if not directory.is_dir():
            problems.append(f"{directory}: rule directory not found" if not directory.exists()
                            else f"{directory}: not a directory (a rules entry names a directory of *.yaml)")
            continue
        for f in sorted(directory.glob("*.yaml")):
            text, problem = _read_source(f)
            if problem or text is None:
                problems.append(problem or f"{f}: cannot read")
            else:
                sources.append((str(f), text))
    if problems:
        raise RuleError(problems)
    key = cache.content_key(sources, _checker_parts())
    cached = _from_cache(key)
    if cached is not None:
        return cached
    rules = check_sources(sources)
    cache.write_entry(key, [r.as_dict() for r in rules])
    return rules


def check_sources(sources: Sequence[tuple[str, str]]) -> list[Rule]:
    """Parse and check (name, text) rule files; every problem of every file at once.

    Raises:
        RuleError: schema violations, unknown facts, type errors, limits, duplicate ids.
    """
    import jsonschema  # only when a rule base is checked (it is the slowest import on the cold path)

    validator = jsonschema.Draft202012Validator(_schema())
    rules: list[Rule] = []
    problems: list[str] = []
    for name, text in sources:
        found, issues = _read_file(Path(name), text, validator)
        rules += found
        problems += issues
    seen: dict[str, str] = {}
    for r in rules:
        if r.id in seen:
            problems.append(f"{r.file}: rule id '{r.id}' already defined in {seen[r.id]}")
        seen.setdefault(r.id, r.file)
    if len(rules) > MAX_RULES:
        problems.append(f"{len(rules)} rules in the rule base (limit {MAX_RULES}); last file {rules[-1].file}")
    if problems:
        raise RuleError(problems)
    return rules


def _checker_parts() -> list[bytes]:
    """What a checked rule base depends on besides its sources: the checker's code, schema, vocabulary."""
    here = Path(__file__).parent
    code = [(here / m).read_bytes() for m in ("rules.py", "conditions.py", "parse.py", "templates.py", "limits.py", "cache.py")]
    return [*code, json.dumps(_schema(), sort_keys=True).encode(),
            json.dumps({k: v.__name__ for k, v in FACT_TYPES.items()}, sort_keys=True).encode()]


def _from_cache(key: str) -> list[Rule] | None:
    """Rules of a verified cache entry; conditions re-built with the vocabulary checks (cheap)."""
    entry = cache.read_entry(key)
    if entry is None:
        return None
    rules = []
    try:
        for r in entry:
            when, problems = build(r["when"], _check_comparison, r["id"])
            if problems or when is None:
                return None
            rules.append(Rule(**{**r, "when": when, "tests": tuple(r["tests"])}))
    except (KeyError, TypeError, ValueError, StopIteration, RecursionError):
        return None
    return rules
