"""The one module that talks to durable-rules.

Contained as ../shared/DOMAIN.md §6 measured: a Host subclass whose `_run` does nothing (the stock
Host starts two timer threads that never stop and race the caller), rulesets registered as plain dicts
with our own rule ids, one session per evaluation deleted in `finally` (at most 1,024 live sessions
per ruleset), and action errors read back from the session state and raised instead of swallowed.
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Mapping, Sequence

from ..core.errors import RuleError
from .rules import Rule

_COMPARE = {"ne": "$neq", "lt": "$lt", "le": "$lte", "gt": "$gt", "ge": "$gte"}
# A sentinel rule: not a fact name (the loader rejects unknown facts), so no memfit rule reads it.
_PRIME = "memfit_prime"
_ruleset_ids = itertools.count()


def durable_available() -> bool:
    """durable-rules imports here (its C extension fails to import on Python 3.13+)."""
    try:
        import durable.engine  # noqa: F401
    except Exception:  # ImportError, or the undefined-symbol OSError/ImportError of 3.13
        return False
    return True


def to_durable(cond: dict) -> dict:
    """Translate a memfit condition into durable-rules' JSON grammar."""
    if "all" in cond:
        return {"$and": [to_durable(c) for c in cond["all"]]}
    if "any" in cond:
        return {"$or": [to_durable(c) for c in cond["any"]]}
    name = cond["fact"]
    op = next(k for k in cond if k != "fact")
    value = cond[op]
    if op == "in":
        return {"$or": [{name: v} for v in value]}
    if op == "not_in":
        return {"$and": [{"$neq": {name: v}} for v in value]}
    operand = {"$m": value["fact"]} if isinstance(value, dict) else value
    compare = {name: operand} if op == "eq" else {_COMPARE[op]: {name: operand}}
    if isinstance(value, dict):
        # durable-rules can match a fact-vs-fact comparison whose right-hand fact is absent; memfit's
        # semantics (and the oracle's) say a comparison on an absent fact is false.
        return {"$and": [{"$ex": {value["fact"]: 1}}, compare]}
    return compare


def _durable_number(v: Any) -> Any:
    """durable-rules 2.0.28 cannot parse a JSON number in exponent form without a fraction ("3e-05");
    the next float away from zero has a fraction digit and orders the same against every literal it can register."""
    while isinstance(v, float) and "e" in repr(v) and "." not in repr(v):  # a few steps at most (denormals)
        v = math.nextafter(v, math.copysign(math.inf, v))  # away from zero: the sign never flips
    return v


class DurableEvaluator:
    """Evaluates a rule base with durable-rules, synchronously, one session per fact set."""

    name = "durable-rules"

    def __init__(self, rules: Sequence[Rule]):
        from durable import engine

        class _SyncHost(engine.Host):
            def _run(self) -> None:  # no timer threads: everything stays on the caller's thread
                pass

        self._order = {r.id: i for i, r in enumerate(rules)}
        self._fired: list[str] = []
        self._ruleset = f"memfit_{next(_ruleset_ids)}"
        definition = {r.id: {"all": [{"m": to_durable(r.when)}], "run": self._action(r.id)} for r in rules}
        definition[_PRIME] = {"all": [{"m": {_PRIME: True}}], "run": lambda c: None}
        self._host = _SyncHost()
        self._host.register_rulesets({self._ruleset: definition})
        self._sessions = itertools.count()
        # durable-rules 2.0.28 crashes (SIGSEGV, uncatchable) deleting a session before the ruleset
        # ever stored state, and a fact that matched nothing still holds a session that must be
        # deleted: store and delete one session first (found by tests/test_rules_engine.py).
        self._host.assert_fact(self._ruleset, {_PRIME: True, "sid": "prime"})
        self._host.delete_state(self._ruleset, "prime")

    def _action(self, rule_id: str):
        def run(closure) -> None:
            self._fired.append(rule_id)
        return run

    def fired(self, facts: Mapping[str, Any]) -> list[str]:
        sid = str(next(self._sessions))
        self._fired = []
        try:
            try:
                self._host.assert_fact(self._ruleset, {**{k: _durable_number(v) for k, v in facts.items()}, "sid": sid})
            except Exception as exc:  # durable raises MessageNotHandled when nothing matches
                if type(exc).__name__ != "MessageNotHandledException":
                    raise RuleError(f"durable-rules failed: {exc}") from None
            try:
                state = self._host.get_state(self._ruleset, sid)
            except Exception:  # nothing stored for this session
                state = {}
            if "exception" in state:
                raise RuleError(f"durable-rules action failed: {state['exception']}")
            return sorted(set(self._fired), key=self._order.__getitem__)
        finally:
            try:
                self._host.delete_state(self._ruleset, sid)
            except Exception:  # nothing was stored for a fact that matched no rule
                pass

    def close(self) -> None:
        self._fired = []
