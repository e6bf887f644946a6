"""Which rules fire on a set of facts: the plain-Python evaluator (the oracle) and the backend choice.

The production backend is durable-rules (engine/policy/durable.py) where it runs; this evaluator
implements the same condition semantics directly and is the oracle the tests compare it with.
Semantics shared by both: a comparison on a fact that is absent is false.
"""
from __future__ import annotations

import operator
from typing import Any, Mapping, Protocol, Sequence

from .rules import Rule

_CMP = {"eq": operator.eq, "ne": operator.ne, "lt": operator.lt, "le": operator.le,
        "gt": operator.gt, "ge": operator.ge}


class Evaluator(Protocol):
    name: str

    def fired(self, facts: Mapping[str, Any]) -> list[str]: ...

    def close(self) -> None: ...


def holds(cond: dict, facts: Mapping[str, Any]) -> bool:
    """Whether a condition holds on the facts."""
    if "all" in cond:
        return all(holds(c, facts) for c in cond["all"])
    if "any" in cond:
        return any(holds(c, facts) for c in cond["any"])
    name = cond["fact"]
    if name not in facts:
        return False
    left = facts[name]
    op = next(k for k in cond if k != "fact")
    value = cond[op]
    if op == "in":
        return any(_same(left, v) for v in value)
    if op == "not_in":
        return not any(_same(left, v) for v in value)
    if isinstance(value, dict):
        if value["fact"] not in facts:
            return False
        value = facts[value["fact"]]
    if op in ("eq", "ne"):
        return _same(left, value) == (op == "eq")
    return _CMP[op](left, value)


def _same(a: Any, b: Any) -> bool:
    # Types are checked at load, so a bool fact is only ever compared with a bool.
    return a == b


class PythonEvaluator:
    """Evaluates rule conditions in plain Python."""

    name = "python"

    def __init__(self, rules: Sequence[Rule]):
        self._rules = list(rules)

    def fired(self, facts: Mapping[str, Any]) -> list[str]:
        return [r.id for r in self._rules if holds(r.when, facts)]

    def close(self) -> None:
        pass


def make_evaluator(rules: Sequence[Rule], backend: str = "auto") -> Evaluator:
    """The evaluator for a rule base.

    Args:
        backend: 'durable' (durable-rules), 'python' (the oracle), or 'auto': durable-rules where it
            imports (Python < 3.13), else the plain-Python evaluator.
    """
    if backend == "python":
        return PythonEvaluator(rules)
    from .durable import DurableEvaluator, durable_available

    if backend == "durable" or durable_available():
        return DurableEvaluator(rules)
    return PythonEvaluator(rules)
