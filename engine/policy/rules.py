"""Rule files: load, check against the schema and the facts vocabulary, and represent them.

A rule is data: `when` (conditions over named facts), `then` (reject, score, advise, set a knob),
`because` (an explanation template over fact names), `source`, and `tests` (examples that fire or not).
Everything is checked when loaded, and every problem of every file is reported at once.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import string
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from ..core.errors import RuleError
from .vocabulary import FACT_TYPES

# libyaml's loader where PyYAML was built with it: 10x faster than the pure-Python one on the rule base.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
ORDERING_OPS = ("lt", "le", "gt", "ge")
OPS = ("eq", "ne", *ORDERING_OPS, "in", "not_in")


@dataclass(frozen=True)
class Rule:
    id: str
    description: str
    when: dict
    then: dict
    because: str
    source: str
    tests: tuple
    priority: int
    file: str
    topic: str

    @property
    def facts_used(self) -> frozenset[str]:
        return frozenset(_facts_in(self.when))


def _facts_in(cond: dict) -> Iterable[str]:
    for key in ("all", "any"):
        if key in cond:
            for sub in cond[key]:
                yield from _facts_in(sub)
            return
    yield cond["fact"]
    for op in OPS:
        v = cond.get(op)
        if isinstance(v, dict):
            yield v["fact"]


def _schema() -> dict:
    text = resources.files("memfit.schemas").joinpath("rule.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def _suggest(name: str) -> str:
    close = difflib.get_close_matches(name, list(FACT_TYPES), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _value_ok(fact_type: type, value: Any) -> bool:
    if fact_type is bool:
        return isinstance(value, bool)
    if fact_type in (int, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, str)


def _check_condition(cond: dict, where: str) -> list[str]:
    if "all" in cond or "any" in cond:
        key = "all" if "all" in cond else "any"
        return [p for i, sub in enumerate(cond[key]) for p in _check_condition(sub, f"{where}.{key}[{i}]")]
    name = cond["fact"]
    if name not in FACT_TYPES:
        return [f"{where}.fact: unknown fact '{name}'{_suggest(name)}"]
    ftype = FACT_TYPES[name]
    op = next(k for k in cond if k != "fact")
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
    bad = [v for v in values if not _value_ok(ftype, v)]
    return [f"{where}.{op}: '{name}' is {ftype.__name__} (got {bad[0]!r})"] if bad else []


def _check_template(template: str, where: str) -> list[str]:
    problems = []
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        return [f"{where}: bad template ({exc})"]
    for f in fields:
        if f not in FACT_TYPES:
            problems.append(f"{where}: unknown fact '{{{f}}}'{_suggest(f)} (only plain fact names are allowed)")
    return problems


def _check_rule(raw: dict, where: str) -> list[str]:
    problems = _check_condition(raw["when"], f"{where}.when")
    problems += _check_template(raw["because"], f"{where}.because")
    used = frozenset(_facts_in(raw["when"]))
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
    return problems


def _read_file(path: Path, text: str, validator) -> tuple[list[Rule], list[str]]:
    try:
        data = yaml.load(text, Loader=_YAML_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        return [], [f"{path}: not valid YAML{at}: {getattr(exc, 'problem', exc)}"]
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        return [], [f"{path}: {_json_path(e.absolute_path)}: {e.message}" for e in errors]
    rules, problems = [], []
    for i, raw in enumerate(data["rules"]):
        where = f"{path}: rules[{i}] ({raw['id']})"
        problems += _check_rule(raw, where)
        rules.append(Rule(id=raw["id"], description=raw["description"], when=raw["when"], then=raw["then"],
                          because=raw["because"], source=raw["source"], tests=tuple(raw["tests"]),
                          priority=raw.get("priority", 0), file=str(path), topic=data["topic"]))
    return rules, problems


def _json_path(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def builtin_rule_files() -> list[tuple[str, str]]:
    """(name, text) of the rule files shipped in memfit.rules, sorted by name."""
    root = resources.files("memfit.rules")
    return sorted((f"rules/{p.name}", p.read_text(encoding="utf-8"))
                  for p in root.iterdir() if p.name.endswith(".yaml"))


def load_rules(extra_dirs: Iterable[str | Path] = (), include_builtin: bool = True) -> list[Rule]:
    """Load and check the built-in rules plus every *.yaml in extra_dirs.

    A rule base whose exact bytes (with the same schema and facts vocabulary) were checked before is
    read back from the cache of checked rule bases, as Python reuses .pyc files; any change re-checks.

    Raises:
        RuleError: every problem of every file (schema, unknown facts, types, duplicate ids, examples
        that cannot be evaluated).
    """
    sources: list[tuple[str, str]] = builtin_rule_files() if include_builtin else []
    problems: list[str] = []
    for d in extra_dirs:
        directory = Path(d)
        if not directory.is_dir():
            problems.append(f"{directory}: rule directory not found")
            continue
        for f in sorted(directory.glob("*.yaml")):
            sources.append((str(f), f.read_text(encoding="utf-8")))
    if problems:
        raise RuleError(problems)
    key = _cache_key(sources)
    cached = _read_cache(key)
    if cached is not None:
        return cached
    rules = check_sources(sources)
    _write_cache(key, rules)
    return rules


def check_sources(sources: Sequence[tuple[str, str]]) -> list[Rule]:
    """Parse and check (name, text) rule files; every problem of every file at once.

    Raises:
        RuleError: schema violations, unknown facts, type errors, duplicate ids.
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
    if problems:
        raise RuleError(problems)
    return rules


def _cache_dir() -> Path:
    root = os.environ.get("MEMFIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "memfit")
    return Path(root)


def _cache_key(sources: Sequence[tuple[str, str]]) -> str:
    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())  # the checker itself
    h.update(json.dumps(_schema(), sort_keys=True).encode())
    h.update(json.dumps({k: v.__name__ for k, v in FACT_TYPES.items()}, sort_keys=True).encode())
    for name, text in sources:
        h.update(name.encode() + b"\0" + text.encode() + b"\0")
    return h.hexdigest()[:32]


def _read_cache(key: str) -> list[Rule] | None:
    try:
        data = json.loads((_cache_dir() / f"rules-{key}.json").read_text(encoding="utf-8"))
        return [Rule(**{**r, "tests": tuple(r["tests"])}) for r in data]
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _write_cache(key: str, rules: Sequence[Rule]) -> None:
    """Best effort: a read-only home only costs the re-check next time."""
    try:
        d = _cache_dir()
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".rules-")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump([dataclasses.asdict(r) for r in rules], fh)
        os.replace(tmp, d / f"rules-{key}.json")
    except OSError:
        pass
