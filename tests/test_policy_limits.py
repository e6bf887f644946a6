"""Rule-base limits, explanation templates and the verified cache: refusals with messages naming the
file and key, and one regression test per hostile input of issue 13 (rule-base parts).

Expected messages are the limits stated in engine/policy/limits.py and docs/reference/limits.md; the
expected evaluator choices come from the durable-rules boundaries measured by bench/durable_limits.py.
"""
from __future__ import annotations

import json
import os
import textwrap

import pytest

from memfit.engine.core.errors import RuleError
from memfit.engine.policy import limits
from memfit.engine.policy.cache import cache_dir
from memfit.engine.policy.durable import durable_available
from memfit.engine.policy.oracle import make_evaluator
from memfit.engine.policy.rules import Rule, check_sources, load_rules


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMFIT_CACHE_DIR", str(tmp_path / "cache"))


def _file(rule_body: str) -> str:
    return "topic: t\nrules:\n" + textwrap.indent(textwrap.dedent(rule_body), "  ")


def _rule_text(id="a", when="{fact: zero_stage, eq: 3}", because="b", fire="{zero_stage: 3}",
               nofire="{zero_stage: 2}") -> str:
    return (f"- id: {id}\n  description: d\n  when: {when}\n  then: {{score: 1}}\n  because: {json.dumps(because)}\n"
            f"  source: s\n  tests:\n    - {{facts: {fire}, fires: true}}\n    - {{facts: {nofire}, fires: false}}\n")


def _nested(depth: int) -> str:
    return "{all: [" * depth + "{fact: zero_stage, eq: 3}" + "]}" * depth


def _in_list(n: int) -> str:
    return "{fact: method, in: [" + ", ".join(f"m{i}" for i in range(n)) + "]}"


BAD = [
    ("all 150 deep", _rule_text(when=_nested(150)),
     r"bad.yaml: rules\[0\] \(a\)\.when: all/any/not nested 150 deep \(limit 16\)"),
    ("not 17 deep", _rule_text(when="{not: " * 17 + "{fact: zero_stage, eq: 3}" + "}" * 17),
     r"rules\[0\] \(a\)\.when: all/any/not nested 17 deep \(limit 16\)"),
    ("in list over the limit", _rule_text(when=_in_list(1001), fire="{method: m0}", nofire="{method: x}"),
     r"rules\[0\] \(a\)\.when\.in: 1001 literals \(limit 1000\)"),
    ("nan literal", _rule_text(when="{fact: gpu_usage, gt: .nan}", fire="{gpu_usage: 1.0}", nofire="{gpu_usage: 0.0}"),
     r"rules\[0\] \(a\)\.when\.gt: nan is not a finite number"),
    ("unknown fact under not", _rule_text(when="{not: {fact: zero_stag, eq: 3}}", fire="{zero_stag: 2}",
                                          nofire="{zero_stag: 3}"),
     r"rules\[0\] \(a\)\.when\.not\.fact: unknown fact 'zero_stag'; did you mean 'zero_stage'\?"),
    ("type mismatch under not", _rule_text(when="{not: {fact: zero_stage, eq: three}}"),
     r"\.when\.not\.eq: 'zero_stage' is int \(got 'three'\)"),
    # explanation templates (issue 13: unbounded specs, attribute access at render time)
    ("huge precision", _rule_text(because="{gpu_usage:.99999999f}"),
     r"rules\[0\] \(a\)\.because: \{gpu_usage:\.99999999f\}: precision 99999999 is above the limit of 6"),
    ("huge width", _rule_text(because="{gpu_usage:x>10000000}"),
     r"\.because: \{gpu_usage:x>10000000\}: width 10000000 is above the limit of 80"),
    ("nested field", _rule_text(because="{method:{method.__class__.__name__[0]}}"),
     r"\.because: \{method:\{method\.__class__\.__name__\[0\]\}\}: nested fields in a format spec are not allowed"),
    ("attribute access", _rule_text(because="{method.__class__}"),
     r"\.because: \{method\.__class__\}: attribute or index access is not allowed"),
    ("index access", _rule_text(because="{method[0]}"), r"\.because: \{method\[0\]\}: attribute or index access"),
    ("non-standard spec", _rule_text(because="{gpu_usage:.2fq}"), r"'\.2fq' is not a standard format spec"),
    ("spec the type cannot take", _rule_text(because="{method:.2f}"),
     r"\{method:\.2f\}: cannot format str fact 'method'"),
    ("conversion", _rule_text(because="{method!a}"), r"\{method!a\}: conversion !a is not allowed"),
    ("long template", _rule_text(because="x" * 1001), r"\.because: template is 1001 characters \(limit 1000\)"),
]


@pytest.mark.parametrize("text,match", [(t, m) for _, t, m in BAD], ids=[n for n, _, _ in BAD])
def test_refused_at_load(text, match):
    with pytest.raises(RuleError, match=match):
        check_sources([("bad.yaml", _file(text))])


def test_at_the_limits_loads():
    # the base of each limit case above loads at exactly the limit
    text = _rule_text(id="a", when=_nested(16)) + _rule_text(
        id="b", when=_in_list(1000), fire="{method: m0}", nofire="{method: x}", because="{gpu_usage:>80.6f}")
    assert [r.id for r in check_sources([("ok.yaml", _file(text))])] == ["a", "b"]


@pytest.mark.slow  # ~3 s: loads a rule base past the limit
def test_too_many_rules():
    text = "".join(_rule_text(id=f"r{i}") for i in range(limits.MAX_RULES + 1))
    with pytest.raises(RuleError, match=r"2001 rules in the rule base \(limit 2000\); last file big.yaml"):
        check_sources([("big.yaml", _file(text))])


def _write(d, name: str, text: str):
    d.mkdir(exist_ok=True)
    (d / name).write_text(text, encoding="utf-8")


def test_oversized_file(tmp_path):
    d = tmp_path / "r"
    _write(d, "big.yaml", _file(_rule_text()) + "#" * limits.MAX_RULE_FILE_BYTES)
    with pytest.raises(RuleError, match=r"big.yaml: \d+ bytes \(limit 1048576 per rule file\)"):
        load_rules([d], include_builtin=False)


def test_fifo_is_refused_without_blocking(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    os.mkfifo(d / "pipe.yaml")
    with pytest.raises(RuleError, match=r"pipe.yaml: not a regular file"):
        load_rules([d], include_builtin=False)


def test_directory_named_yaml_and_file_as_dir(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "sub.yaml").mkdir()
    with pytest.raises(RuleError, match=r"sub.yaml: not a regular file"):
        load_rules([tmp_path / "r"], include_builtin=False)
    (tmp_path / "f").write_text("x", encoding="utf-8")
    with pytest.raises(RuleError, match=r"f: not a directory"):
        load_rules([tmp_path / "f"], include_builtin=False)


def test_latin1_file(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    (d / "l.yaml").write_bytes(("# caf\xe9\n" + _file(_rule_text())).encode("latin-1"))
    with pytest.raises(RuleError, match=r"l.yaml: not UTF-8 text"):
        load_rules([d], include_builtin=False)


# --- the cache of checked rule bases ---------------------------------------------------------------

def _entries():
    return sorted(cache_dir().glob("rules-*.json"))


def _load_one(tmp_path, text=None):
    d = tmp_path / "r"
    _write(d, "a.yaml", text or _file(_rule_text()))
    return load_rules([d], include_builtin=False)


def test_cache_content_empty_list_is_rebuilt(tmp_path):
    # Regression (issue 13): a cache file whose content is [] loaded 0 rules, so everything fit
    assert [r.id for r in _load_one(tmp_path)] == ["a"]
    [entry] = _entries()
    entry.write_text("[]", encoding="utf-8")
    assert [r.id for r in _load_one(tmp_path)] == ["a"]
    assert json.loads(entry.read_text(encoding="utf-8")) != []  # rewritten


def test_cache_tampered_rule_is_not_trusted(tmp_path):
    # Regression (issue 13): a changed rule in the cached list was trusted
    _load_one(tmp_path)
    [entry] = _entries()
    data = json.loads(entry.read_text(encoding="utf-8"))
    data["rules"][0]["when"] = {"fact": "zero_stage", "eq": 99}
    entry.write_text(json.dumps(data), encoding="utf-8")
    [rule] = _load_one(tmp_path)
    assert rule.when.as_dict() == {"fact": "zero_stage", "eq": 3}


def test_cache_entry_under_another_key_is_not_trusted(tmp_path):
    _load_one(tmp_path)
    [entry] = _entries()
    other = _file(_rule_text(id="other"))
    (tmp_path / "r" / "a.yaml").write_text(other, encoding="utf-8")
    load_rules([tmp_path / "r"], include_builtin=False)
    # copy the first entry over the second one's name: its key does not match, so it is ignored
    second = next(p for p in _entries() if p != entry)
    second.write_text(entry.read_text(encoding="utf-8"), encoding="utf-8")
    assert [r.id for r in load_rules([tmp_path / "r"], include_builtin=False)] == ["other"]


def test_cache_is_bounded_and_leaves_no_temp_files(tmp_path):
    for i in range(limits.MAX_CACHE_ENTRIES + 5):
        _load_one(tmp_path, _file(_rule_text(id=f"r{i}")))
    assert len(_entries()) == limits.MAX_CACHE_ENTRIES
    assert list(cache_dir().glob(".rules-*")) == []


def test_cache_unwritable_leaves_no_temp_files(tmp_path):
    cache_dir().mkdir(parents=True)
    cache_dir().chmod(0o500)
    try:
        if os.access(cache_dir(), os.W_OK):
            pytest.skip("running as a user that can write anywhere (root)")
        assert [r.id for r in _load_one(tmp_path)] == ["a"]
    finally:
        cache_dir().chmod(0o700)
    assert list(cache_dir().iterdir()) == []


# --- durable-rules beyond its limits: the plain-Python evaluator, with the reason -----------------

needs_durable = pytest.mark.skipif(not durable_available(), reason="durable-rules does not import on this Python")


def _rule(rid: str, when: dict) -> Rule:
    return Rule(id=rid, description="d", when=when, then={"score": 1}, because="b", source="s", tests=(),
                priority=0, file="<test>", topic="t")


@needs_durable
@pytest.mark.parametrize("rules,facts,expected,why", [
    # 600 literals: durable-rules spins in create_ruleset beyond 512 branches of one $or
    ([_rule("big-in", {"fact": "method", "in": [f"m{i}" for i in range(600)]})], {"method": "m599"}, ["big-in"],
     r"rule big-in compiles to an in: list of 600 alternatives; durable-rules handles at most 480"),
    # 500 rules: durable-rules spins in create_ruleset at 512
    ([_rule(f"r{i}", {"fact": "zero_stage", "ge": i}) for i in range(500)], {"zero_stage": 1}, ["r0", "r1"],
     r"500 rules; durable-rules compiles at most 480"),
    # gt: 1.0e-5 was error code 204 (1e-05 has no fraction digit in JSON)
    ([_rule("tiny", {"fact": "dataset_gib", "gt": 1.0e-5})], {"dataset_gib": 2e-5}, ["tiny"],
     r"rule tiny compares with 1e-05, a number durable-rules cannot read"),
], ids=["in-600", "rules-500", "exponent-literal"])
def test_beyond_durable_limits_falls_back(rules, facts, expected, why):
    ev = make_evaluator(rules, "durable")
    try:
        assert ev.fired(facts) == expected  # from the operator definitions on the facts shown
        assert ev.name.startswith("python (durable-rules not used: ")
        assert len(ev.name.splitlines()) == 1
        import re
        assert re.search(why, ev.name), ev.name
    finally:
        ev.close()


@needs_durable
def test_too_many_firing_rules_falls_back_at_evaluation():
    # durable-rules fails with error code 303 when more than 64 rules fire on one fact (measured with
    # distinct thresholds: bench/durable_limits.py "firing")
    rules = [_rule(f"r{i}", {"fact": "zero_stage", "ge": -i}) for i in range(70)]
    ev = make_evaluator(rules, "durable")
    try:
        assert ev.name == "durable-rules"
        assert ev.fired({"zero_stage": 1}) == [f"r{i}" for i in range(70)]  # 1 >= -i for every i
        assert ev.name == "python (durable-rules failed: more than 64 rules fire on one candidate)"
        assert ev.fired({"zero_stage": -1}) == ["r1", *(f"r{i}" for i in range(2, 70))]  # -1 >= -i for i >= 1
    finally:
        ev.close()


@needs_durable
def test_non_finite_fact_falls_back():
    # .inf reached durable-rules as error code 202; nan > x is false by IEEE 754
    ev = make_evaluator([_rule("r", {"fact": "gpu_usage", "gt": 0.8})], "durable")
    try:
        assert ev.fired({"gpu_usage": float("inf")}) == ["r"]
        assert ev.fired({"gpu_usage": float("nan")}) == []
        assert "durable-rules failed: fact gpu_usage is inf" in ev.name
    finally:
        ev.close()
