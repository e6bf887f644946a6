"""Which rules fire on a set of facts: the plain-Python evaluator (the oracle) and the backend choice.

The conditions evaluate themselves (engine/policy/conditions.py states the semantics); this module is
the evaluator over them, and picks the backend: durable-rules (engine/policy/durable.py) where it
imports and the rule base is within what it handles (engine/policy/limits.py), else this one, with the
reason in the evaluator's name (the advice records it: "python (durable-rules not used: ...)").
"""
from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence

from .conditions import Condition
from .parse import from_dict
from .rules import Rule

__all__ = ["Evaluator", "PythonEvaluator", "holds", "make_evaluator"]


class Evaluator(Protocol):
    name: str

    def fired(self, facts: Mapping[str, Any]) -> list[str]: ...

    def close(self) -> None: ...


def holds(cond: Condition | Mapping[str, Any], facts: Mapping[str, Any]) -> bool:
    """Whether a condition (parsed, or as a rule file writes it) holds on the facts."""
    return from_dict(cond).holds(facts)


class PythonEvaluator:
    """Evaluates rule conditions in plain Python."""

    def __init__(self, rules: Sequence[Rule], name: str = "python"):
        self._rules = [(r.id, r.when) for r in rules]
        self.name = name

    def fired(self, facts: Mapping[str, Any]) -> list[str]:
        """Ids of the rules whose condition holds, in rule-base order."""
        return [rid for rid, when in self._rules if when.holds(facts)]

    def close(self) -> None:
        pass


def make_evaluator(rules: Sequence[Rule], backend: str = "auto") -> Evaluator:
    """The evaluator for a rule base.

    Args:
        backend: 'durable' (durable-rules), 'python' (the oracle), or 'auto': durable-rules where it
            imports (Python < 3.13), else the plain-Python evaluator. A rule base beyond durable-rules'
            limits gets the plain-Python evaluator under either 'durable' or 'auto', named with why.
    Returns:
        An evaluator; call close() when done (the durable-rules ruleset is shared and reference-counted).
    """
    if backend == "python":
        return PythonEvaluator(rules)
    from .durable import DurableEvaluator, durable_available, unsupported

    if backend != "durable" and not durable_available():
        return PythonEvaluator(rules)
    reason = unsupported(rules)
    if reason:
        return PythonEvaluator(rules, name=f"python (durable-rules not used: {reason})")
    return DurableEvaluator(rules)
