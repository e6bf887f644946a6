"""durable-rules against the plain-Python oracle, operator by operator, and the rule loader's errors.

Expected truth values come from the operator definitions written out in each row (first principles),
never from either evaluator's output; the two evaluators are then held to each other (differential
testing, sources.md §6).
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings

from memfit.engine.policy.durable import DurableEvaluator, durable_available
from memfit.engine.core.errors import RuleError
from memfit.engine.policy.oracle import PythonEvaluator
from memfit.engine.review.generators import fact_sets
from memfit.engine.review.run import differential
from memfit.engine.policy.rules import Rule, check_sources, load_rules

pytestmark = pytest.mark.skipif(not durable_available(), reason="durable-rules does not import on this Python")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMFIT_CACHE_DIR", str(tmp_path / "cache"))


def _rule(rid: str, when: dict) -> Rule:
    return Rule(id=rid, description="d", when=when, then={"score": 1}, because="b", source="s", tests=(),
                priority=0, file="<test>", topic="t")


BUILTIN = load_rules()

# (condition, facts, expected) -- expected from the operator's meaning on the values shown.
OPERATOR_TABLE = [
    ({"fact": "zero_stage", "eq": 3}, {"zero_stage": 3}, True),
    ({"fact": "zero_stage", "eq": 3}, {"zero_stage": 2}, False),
    ({"fact": "zero_stage", "ne": 3}, {"zero_stage": 2}, True),
    ({"fact": "zero_stage", "ne": 3}, {"zero_stage": 3}, False),
    ({"fact": "zero_stage", "lt": 3}, {"zero_stage": 2}, True),
    ({"fact": "zero_stage", "lt": 3}, {"zero_stage": 3}, False),       # 3 < 3 is false
    ({"fact": "zero_stage", "le": 3}, {"zero_stage": 3}, True),
    ({"fact": "zero_stage", "le": 3}, {"zero_stage": 4}, False),
    ({"fact": "gpu_usage", "gt": 0.8}, {"gpu_usage": 0.81}, True),
    ({"fact": "gpu_usage", "gt": 0.8}, {"gpu_usage": 0.8}, False),     # exactly at budget: not over
    ({"fact": "gpu_usage", "ge": 0.8}, {"gpu_usage": 0.8}, True),
    ({"fact": "gpu_usage", "ge": 0.8}, {"gpu_usage": 0.79}, False),
    ({"fact": "method", "in": ["lora", "qlora"]}, {"method": "qlora"}, True),
    ({"fact": "method", "in": ["lora", "qlora"]}, {"method": "full"}, False),
    ({"fact": "method", "not_in": ["lora", "qlora"]}, {"method": "full"}, True),
    ({"fact": "method", "not_in": ["lora", "qlora"]}, {"method": "lora"}, False),
    ({"fact": "gradient_checkpointing", "eq": False}, {"gradient_checkpointing": False}, True),
    ({"fact": "gradient_checkpointing", "eq": True}, {"gradient_checkpointing": False}, False),
    # fact against fact
    ({"fact": "gpu_usage", "gt": {"fact": "gpu_budget"}}, {"gpu_usage": 0.9, "gpu_budget": 0.8}, True),
    ({"fact": "gpu_usage", "gt": {"fact": "gpu_budget"}}, {"gpu_usage": 0.8, "gpu_budget": 0.8}, False),
    ({"fact": "nvme_needed_gib", "le": {"fact": "nvme_capacity_gib"}}, {"nvme_needed_gib": 5.0, "nvme_capacity_gib": 5.0}, True),
    ({"fact": "seq_len", "eq": {"fact": "micro_batch_size"}}, {"seq_len": 4, "micro_batch_size": 4}, True),
    # all / any nesting: (stage 3 and (opt cpu or param cpu))
    ({"all": [{"fact": "zero_stage", "eq": 3}, {"any": [{"fact": "offload_optimizer", "eq": "cpu"},
                                                       {"fact": "offload_param", "eq": "cpu"}]}]},
     {"zero_stage": 3, "offload_optimizer": "none", "offload_param": "cpu"}, True),
    ({"all": [{"fact": "zero_stage", "eq": 3}, {"any": [{"fact": "offload_optimizer", "eq": "cpu"},
                                                       {"fact": "offload_param", "eq": "cpu"}]}]},
     {"zero_stage": 3, "offload_optimizer": "none", "offload_param": "none"}, False),
    ({"any": [{"all": [{"fact": "method", "eq": "full"}, {"fact": "total_params_b", "le": 3.0}]},
              {"fact": "require_full_finetune", "eq": True}]},
     {"method": "full", "total_params_b": 7.0, "require_full_finetune": True}, True),
    # a missing fact is false, whatever the operator (even ne / not_in)
    ({"fact": "zero_stage", "ne": 3}, {}, False),
    ({"fact": "method", "not_in": ["lora"]}, {}, False),
    ({"fact": "gpu_usage", "gt": {"fact": "gpu_budget"}}, {"gpu_usage": 0.9}, False),
    ({"any": [{"fact": "zero_stage", "eq": 3}, {"fact": "method", "eq": "full"}]}, {"method": "full"}, True),
    # not: holds exactly when the inner condition does not, so on an absent fact it holds
    ({"not": {"fact": "zero_stage", "eq": 3}}, {"zero_stage": 2}, True),
    ({"not": {"fact": "zero_stage", "eq": 3}}, {"zero_stage": 3}, False),
    ({"not": {"fact": "zero_stage", "eq": 3}}, {}, True),                 # eq on absent is false
    ({"not": {"fact": "zero_stage", "ne": 3}}, {}, True),                 # ne on absent is false too
    ({"not": {"fact": "zero_stage", "ne": 3}}, {"zero_stage": 3}, True),
    ({"not": {"fact": "zero_stage", "ne": 3}}, {"zero_stage": 2}, False),
    ({"not": {"fact": "zero_stage", "lt": 3}}, {"zero_stage": 3}, True),  # not (3 < 3)
    ({"not": {"fact": "zero_stage", "lt": 3}}, {"zero_stage": 2}, False),
    ({"not": {"fact": "zero_stage", "le": 3}}, {"zero_stage": 4}, True),
    ({"not": {"fact": "gpu_usage", "ge": 0.8}}, {"gpu_usage": 0.8}, False),
    ({"not": {"fact": "gpu_usage", "gt": 0.8}}, {"gpu_usage": 0.8}, True),
    ({"not": {"fact": "gpu_usage", "gt": {"fact": "gpu_budget"}}}, {"gpu_usage": 0.8, "gpu_budget": 0.8}, True),
    ({"not": {"fact": "gpu_usage", "gt": {"fact": "gpu_budget"}}}, {"gpu_usage": 0.9, "gpu_budget": 0.8}, False),
    ({"not": {"fact": "gpu_usage", "gt": {"fact": "gpu_budget"}}}, {"gpu_usage": 0.9}, True),   # right side absent
    ({"not": {"fact": "gpu_usage", "gt": {"fact": "gpu_budget"}}}, {"gpu_budget": 0.8}, True),  # left side absent
    ({"not": {"fact": "method", "in": ["lora", "qlora"]}}, {"method": "full"}, True),
    ({"not": {"fact": "method", "in": ["lora", "qlora"]}}, {"method": "lora"}, False),
    ({"not": {"fact": "method", "in": ["lora", "qlora"]}}, {}, True),
    ({"not": {"fact": "method", "not_in": ["lora"]}}, {"method": "lora"}, True),
    ({"not": {"fact": "method", "not_in": ["lora"]}}, {"method": "full"}, False),
    ({"not": {"fact": "method", "not_in": ["lora"]}}, {}, True),
    ({"not": {"fact": "gradient_checkpointing", "eq": False}}, {"gradient_checkpointing": True}, True),
    # De Morgan: not (stage 3 and full) / not (stage 3 or full)
    ({"not": {"all": [{"fact": "zero_stage", "eq": 3}, {"fact": "method", "eq": "full"}]}},
     {"zero_stage": 3, "method": "lora"}, True),
    ({"not": {"all": [{"fact": "zero_stage", "eq": 3}, {"fact": "method", "eq": "full"}]}},
     {"zero_stage": 3, "method": "full"}, False),
    ({"not": {"any": [{"fact": "zero_stage", "eq": 3}, {"fact": "method", "eq": "full"}]}},
     {"zero_stage": 2, "method": "lora"}, True),
    ({"not": {"any": [{"fact": "zero_stage", "eq": 3}, {"fact": "method", "eq": "full"}]}},
     {"zero_stage": 2, "method": "full"}, False),
    ({"not": {"not": {"fact": "zero_stage", "eq": 3}}}, {}, False),       # double negation: eq on absent
    ({"not": {"not": {"fact": "zero_stage", "eq": 3}}}, {"zero_stage": 3}, True),
    ({"all": [{"fact": "method", "eq": "full"}, {"not": {"fact": "offload_param", "eq": "nvme"}}]},
     {"method": "full", "offload_param": "cpu"}, True),
]


@pytest.mark.parametrize("cond,facts,expected", OPERATOR_TABLE, ids=[str(i) for i in range(len(OPERATOR_TABLE))])
def test_operator_translation(cond, facts, expected):
    rules = [_rule("r", cond)]
    assert (PythonEvaluator(rules).fired(facts) == ["r"]) is expected
    assert (DurableEvaluator(rules).fired(facts) == ["r"]) is expected


def test_differential_helper_reports_nothing_on_rule_examples():
    # review.differential over every example's facts of the built-in rules
    assert differential(BUILTIN, [t["facts"] for r in BUILTIN for t in r.tests]) == []


@pytest.mark.slow  # ~2 s: 200 fact sets through durable-rules
@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(fact_sets(BUILTIN, drop_some=False, plain_floats=True))
def test_durable_matches_oracle_on_complete_facts(facts):
    # complete fact sets, as advise builds them, with values near every threshold the rules use;
    # one evaluator pair for all examples (evaluator reuse is part of what is compared)
    _assert_same(BUILTIN, facts)


OPERATOR_RULES = [_rule(f"op-{i}", cond) for i, (cond, _, _) in enumerate(OPERATOR_TABLE)]


@pytest.mark.slow  # ~3 s: 200 fact sets through durable-rules
@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(fact_sets(OPERATOR_RULES, drop_some=False, plain_floats=True))
def test_durable_matches_oracle_on_every_operator(facts):
    _assert_same(OPERATOR_RULES, facts)


@pytest.mark.slow  # ~3 s: 200 fact sets through durable-rules
@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(fact_sets(OPERATOR_RULES, drop_some=True, plain_floats=False))
def test_durable_matches_oracle_with_missing_facts(facts):
    # fact-vs-fact comparisons with either side absent, and floats in exponent form ("3e-05") included:
    # both were durable-rules mismatches until the adapter's $ex guard and number nudge
    _assert_same(OPERATOR_RULES, facts)


_PAIRS: dict[int, tuple] = {}


def _assert_same(rules, facts):
    durable, oracle = _PAIRS.setdefault(id(rules), (DurableEvaluator(rules), PythonEvaluator(rules)))
    assert durable.fired(facts) == oracle.fired(facts), facts


def test_missing_right_hand_fact_is_false_in_both():
    # found by hypothesis: nvme_capacity_gib absent, and host_margin < 0.05 partially matches another rule
    facts = {"host_margin": 0.04, "nvme_needed_gib": 0.0}
    assert differential(BUILTIN, [facts]) == []


def test_exponent_form_float_is_evaluated():
    # 3e-05 > 0.0, so dataset-caching rules see a (tiny) data set; the oracle agrees by definition of gt
    assert differential(BUILTIN, [{"dataset_gib": 3e-05, "dataset_host_share": 0.0, "streaming": "auto"}]) == []


@pytest.mark.parametrize("rule", BUILTIN, ids=lambda r: r.id)
def test_every_builtin_example_fires_as_stated(rule):
    durable, oracle = DurableEvaluator(BUILTIN), PythonEvaluator(BUILTIN)
    for ex in rule.tests:
        assert (rule.id in durable.fired(ex["facts"])) is ex["fires"], ex
        assert (rule.id in oracle.fired(ex["facts"])) is ex["fires"], ex


def test_sessions_are_deleted():
    # durable-rules keeps at most 1,024 live sessions per ruleset (sources.md §6): 3,000 evaluations on
    # one evaluator only work if every session is deleted.
    ev = DurableEvaluator([_rule("big", {"fact": "zero_stage", "ge": 2})])
    for i in range(3000):
        assert ev.fired({"zero_stage": i % 4}) == (["big"] if i % 4 >= 2 else [])


_FIRST_MISS = """
from memfit.engine.policy.durable import DurableEvaluator
from memfit.engine.policy.rules import Rule
rule = Rule(id="r", description="d", when={"fact": "zero_stage", "eq": 3}, then={"score": 1}, because="b",
            source="s", tests=(), priority=0, file="t", topic="t")
assert DurableEvaluator([rule]).fired({"zero_stage": 2}) == []
"""


def test_first_miss_does_not_crash():
    # Regression: durable-rules 2.0.28 SIGSEGVs deleting a session before its ruleset stored any state;
    # advise hit it on any plan whose first candidate fires no rule (e.g. Qwen2.5-3B full/z0/nogc/mb2
    # on 8 x 141 GiB). In a child process: the crash kills the interpreter.
    done = subprocess.run([sys.executable, "-c", _FIRST_MISS], capture_output=True, timeout=120)
    assert done.returncode == 0, done.returncode


class _FailingAfterRecord(DurableEvaluator):
    def _action(self, rule_id, sink):
        def run(closure):
            sink.append(rule_id)
            raise ValueError("planted action failure")
        return run


class _FailingBeforeRecord(DurableEvaluator):
    def _action(self, rule_id, sink):
        def run(closure):
            raise ValueError("planted action failure")
        return run


def test_action_error_surfaces_as_rule_error():
    ev = _FailingAfterRecord([_rule("r", {"fact": "zero_stage", "eq": 3})])  # fires first: no crash
    with pytest.raises(RuleError, match="durable-rules action failed: .*planted action failure"):
        ev.fired({"zero_stage": 3})


def test_action_error_before_recording_surfaces():
    # Regression: the adapter used to read the session state only when a firing was recorded.
    ev = _FailingBeforeRecord([_rule("r", {"fact": "zero_stage", "eq": 3})])
    with pytest.raises(RuleError, match="planted action failure"):
        ev.fired({"zero_stage": 3})


def _file(rule_body: str, topic: str = "t") -> str:
    return f"topic: {topic}\nrules:\n" + textwrap.indent(textwrap.dedent(rule_body), "  ")


GOOD = """\
- id: {id}
  description: d
  when: {when}
  then: {{score: 1}}
  because: {because}
  source: s
  tests:
    - {{facts: {fire}, fires: true}}
    - {{facts: {nofire}, fires: false}}
"""


def _good(id="a", when="{fact: zero_stage, eq: 3}", because="b", fire="{zero_stage: 3}", nofire="{zero_stage: 2}"):
    return GOOD.format(id=id, when=when, because=because, fire=fire, nofire=nofire)


LOAD_ERRORS = [
    ("unknown fact with suggestion", _good(when="{fact: zero_stag, eq: 3}", fire="{zero_stag: 3}", nofire="{zero_stag: 2}"),
     r"unknown fact 'zero_stag'; did you mean 'zero_stage'\?"),
    ("wrong value type", _good(when="{fact: zero_stage, eq: three}"), r"'zero_stage' is int \(got 'three'\)"),
    ("ordering a string", _good(when="{fact: method, lt: full}", fire="{method: a}", nofire="{method: z}"),
     r"'method' is str; only numbers can be ordered"),
    ("template naming an unknown fact", _good(because="'{gpu_peek_gib} GiB'"),
     r"unknown fact '\{gpu_peek_gib\}'; did you mean 'gpu_peak_gib'\?"),
    ("example missing a fact the rule reads",
     _good(when="{all: [{fact: zero_stage, eq: 3}, {fact: method, eq: full}]}", fire="{zero_stage: 3, method: full}"),
     r"tests\[1\]\.facts: must give every fact the rule reads \(missing method\)"),
    ("only firing examples", _good(nofire="{zero_stage: 3}").replace("fires: false", "fires: true"),
     r"needs at least one example that fires and one that does not"),
    ("schema violation: missing because", _good().replace("  because: b\n", ""),
     r"'because' is a required property"),
]


@pytest.mark.parametrize("text,match", [(t, m) for _, t, m in LOAD_ERRORS], ids=[n for n, _, _ in LOAD_ERRORS])
def test_load_time_errors(text, match):
    with pytest.raises(RuleError, match=match):
        check_sources([("bad.yaml", _file(text))])


def test_duplicate_ids_across_two_dirs(tmp_path):
    for d in ("one", "two"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "rules.yaml").write_text(_file(_good(id="same-id")), encoding="utf-8")
    with pytest.raises(RuleError, match=r"two/rules.yaml: rule id 'same-id' already defined in .*one/rules.yaml"):
        load_rules([tmp_path / "one", tmp_path / "two"], include_builtin=False)


def test_good_rule_loads():
    # the base of every bad case above loads: each case fails for the one thing it changes
    assert [r.id for r in check_sources([("ok.yaml", _file(_good()))])] == ["a"]
