"""The one module that talks to durable-rules.

Contained as measured (docs/reference/limits.md, bench/durable_limits.py, bench/library_memory.py):
- A Host subclass whose `_run` does nothing: the stock Host starts two timer threads that never stop.
- One compiled ruleset per distinct rule base per process, shared by every evaluator of that base
  (advise() makes one per call) and reference-counted; when the last evaluator closes, the ruleset
  stays for the next call, and beyond _IDLE_KEPT idle rule bases the oldest is freed with
  delete_ruleset. Compiling one per call grew RSS by ~430 KB per advise() call.
- Every call into durable-rules holds one process-wide lock: its C engine keeps per-ruleset state
  (the action queue, sessions) that concurrent callers would interleave.
- One session per evaluation, deleted in `finally` (at most 1,024 live sessions per ruleset); action
  errors are read back from the session state and raised instead of swallowed.
- Rule bases beyond what it handles (rule count, `$or` width, exponent-form literals) are reported by
  unsupported() so the caller uses the plain-Python evaluator; an evaluation it refuses (more than 64
  rules firing on one fact, a non-finite or unreadable fact) falls back to the plain-Python evaluator
  for the rest of that evaluator's life, and its name says so. No durable-rules error code escapes.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import threading
import weakref
from collections import OrderedDict
from typing import Any, Callable, Mapping, Sequence

from ..core.errors import RuleError
from .conditions import ABSENT_MARK, Condition, In, Not, NotIn, facts_read, literals, walk
from .limits import DURABLE_MAX_BRANCHES, DURABLE_MAX_FIRING, DURABLE_MAX_RULES
from .rules import Rule

__all__ = ["DurableEvaluator", "durable_available", "to_durable", "unsupported", "live_rulesets"]

# A sentinel rule: not a fact name (the loader rejects unknown facts), so no memfit rule reads it.
_PRIME = "memfit_prime"
_IDLE_KEPT = 4
_LOCK = threading.RLock()
_ruleset_ids = itertools.count()


def durable_available() -> bool:
    """durable-rules imports here (its C extension fails to import on Python 3.13+)."""
    try:
        import durable.engine  # noqa: F401
    except Exception:  # ImportError, or the undefined-symbol OSError/ImportError of 3.13
        return False
    return True


def to_durable(cond: Condition | Mapping[str, Any]) -> dict[str, Any]:
    """A memfit condition in durable-rules' JSON grammar."""
    from .parse import from_dict

    return from_dict(cond).durable()


def _bare_exponent(v: Any) -> bool:
    # durable-rules 2.0.28 cannot parse a JSON number in exponent form without a fraction ("3e-05")
    return isinstance(v, float) and "e" in repr(v) and "." not in repr(v)


def _widest(tree: Any) -> int:
    """The most branches of one `$or` in compiled durable-rules JSON (iterative)."""
    widest, stack = 0, [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("$or"), list):
                widest = max(widest, len(node["$or"]))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return widest


def unsupported(rules: Sequence[Rule]) -> str | None:
    """Why durable-rules cannot evaluate this rule base fast and faithfully, or None."""
    if len(rules) > DURABLE_MAX_RULES:
        return f"{len(rules)} rules; durable-rules compiles at most {DURABLE_MAX_RULES}"
    for r in rules:
        bad = [v for _, v in literals(r.when) if _bare_exponent(v)]
        if bad:
            return f"rule {r.id} compares with {bad[0]!r}, a number durable-rules cannot read"
        width = _widest(r.when.durable())
        if width > DURABLE_MAX_BRANCHES:
            kind = "an in: list" if any(isinstance(n, (In, NotIn, Not)) for n in walk(r.when)) else "any:"
            return (f"rule {r.id} compiles to {kind} of {width} alternatives; durable-rules handles at most "
                    f"{DURABLE_MAX_BRANCHES}")
    return None


def _durable_number(v: Any) -> Any:
    """The next float away from zero whose JSON has a fraction digit ("3e-05" -> 3.0000000000000004e-05);
    it orders the same against every literal durable-rules can register (those have a fraction)."""
    while _bare_exponent(v):  # a few steps at most (denormals)
        v = math.nextafter(v, math.copysign(math.inf, v))  # away from zero: the sign never flips
    return v


# Makes a rule's durable-rules action: (rule id, the firing sink) -> the callable durable-rules runs.
Action = Callable[[str, list[str]], Callable[[Any], None]]


class _Compiled:
    """One registered ruleset: its host, the rule order, and the firing sink its actions write to."""

    def __init__(self, key: str, rules: Sequence[Rule], action: Action) -> None:
        from durable import engine

        class _SyncHost(engine.Host):  # type: ignore[misc]  # durable-rules ships no type information
            def _run(self) -> None:  # no timer threads: everything stays on the caller's thread
                pass

        self.key, self.users = key, 0
        self.order = {r.id: i for i, r in enumerate(rules)}
        self.reads = sorted(set().union(*(facts_read(r.when) for r in rules)))
        self.sink: list[str] = []
        self.name = f"memfit_{next(_ruleset_ids)}"
        definition = {r.id: {"all": [{"m": r.when.durable()}], "run": action(r.id, self.sink)} for r in rules}
        definition[_PRIME] = {"all": [{"m": {_PRIME: True}}], "run": lambda c: None}
        self.host: Any = _SyncHost()
        self.host.register_rulesets({self.name: definition})
        self.sessions = itertools.count()
        # durable-rules 2.0.28 crashes (SIGSEGV, uncatchable) deleting a session before the ruleset
        # ever stored state: store and delete one session first (found by tests/test_rules_engine.py).
        self.host.assert_fact(self.name, {_PRIME: True, "sid": "prime"})
        self.host.delete_state(self.name, "prime")

    def free(self) -> None:
        import durable_rules_engine

        ruleset = self.host.get_ruleset(self.name)
        durable_rules_engine.delete_ruleset(ruleset._handle)
        self.host = None


_SHARED: "OrderedDict[str, _Compiled]" = OrderedDict()


def _key(rules: Sequence[Rule]) -> str:
    body = [[r.id, r.when.as_dict()] for r in rules]
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=repr).encode()).hexdigest()


def _acquire(rules: Sequence[Rule], action: Action, shared: bool) -> _Compiled:
    with _LOCK:
        key = _key(rules) if shared else f"private-{next(_ruleset_ids)}"
        compiled = _SHARED.get(key)
        if compiled is None:
            compiled = _Compiled(key, rules, action)
            _SHARED[key] = compiled
        _SHARED.move_to_end(key)
        compiled.users += 1
        return compiled


def _release(compiled: _Compiled) -> None:
    with _LOCK:
        compiled.users -= 1
        if compiled.key.startswith("private-") and compiled.users == 0:
            _SHARED.pop(compiled.key, None)
            compiled.free()
        idle = [c for c in _SHARED.values() if c.users == 0]
        for c in idle[:max(0, len(idle) - _IDLE_KEPT)]:  # oldest first
            _SHARED.pop(c.key)
            c.free()


def live_rulesets() -> int:
    """Rulesets registered with durable-rules in this process (for tests and benchmarks)."""
    with _LOCK:
        return len(_SHARED)


class DurableEvaluator:
    """Evaluates a rule base with durable-rules, synchronously, one session per fact set."""

    def __init__(self, rules: Sequence[Rule]):
        self.name = "durable-rules"
        self._rules = list(rules)
        self._fallback = False
        # a subclass with its own actions (tests plant failures) gets a ruleset of its own
        shared = type(self)._action is DurableEvaluator._action
        self._compiled: _Compiled | None = _acquire(self._rules, self._action, shared)
        # an evaluator dropped without close() still releases its ruleset when collected
        self._release = weakref.finalize(self, _release, self._compiled)
        self._release.atexit = False

    def _action(self, rule_id: str, sink: list[str]) -> Callable[[Any], None]:
        def run(closure: Any) -> None:  # durable-rules' closure object, unused
            sink.append(rule_id)
        return run

    def fired(self, facts: Mapping[str, Any]) -> list[str]:
        """Ids of the rules that fire on the facts, in rule-base order.

        Raises:
            RuleError: a rule action failed inside durable-rules.
        """
        if not self._fallback:
            bad = next((k for k, v in facts.items() if isinstance(v, float) and not math.isfinite(v)), None)
            if bad is not None:
                self._fall_back(f"fact {bad} is {facts[bad]!r}")
        if self._fallback:
            return self._python(facts)
        if self._compiled is None:
            raise RuleError("durable-rules evaluator used after close()")
        with _LOCK:
            fired, error = self._assert(self._compiled, facts)
        if error:
            self._fall_back(error)
            return self._python(facts)
        return fired

    def _assert(self, c: _Compiled, facts: Mapping[str, Any]) -> tuple[list[str], str]:
        sid = str(next(c.sessions))
        c.sink.clear()
        try:
            try:
                # Only the facts some rule reads: durable-rules serialises the message on assertion and
                # parses it again for every rule that fires, so an unread fact is pure cost (the
                # sizing view reads 17 of ~64 facts; bench/cold_path.py).
                message = {k: _durable_number(facts[k]) for k in c.reads if k in facts}
                message.update({ABSENT_MARK + k: True for k in c.reads if k not in facts})
                c.host.assert_fact(c.name, {**message, "sid": sid})
            except Exception as exc:  # durable raises MessageNotHandled when nothing matches
                if type(exc).__name__ != "MessageNotHandledException":
                    return [], _describe(exc, len(c.order))
            try:
                state = c.host.get_state(c.name, sid)
            except Exception:  # nothing stored for this session
                state = {}
            if "exception" in state:
                raise RuleError(f"durable-rules action failed: {state['exception']}")
            return sorted(set(c.sink), key=c.order.__getitem__), ""
        finally:
            c.sink.clear()
            try:
                c.host.delete_state(c.name, sid)
            except Exception:  # nothing was stored for a fact that matched no rule
                pass

    def _python(self, facts: Mapping[str, Any]) -> list[str]:
        # what engine/policy/oracle.py's PythonEvaluator does (imported from there it would be a cycle)
        return [r.id for r in self._rules if r.when.holds(facts)]

    def _fall_back(self, why: str) -> None:
        self._fallback = True
        self.name = f"python (durable-rules failed: {why})"

    def close(self) -> None:
        """Release the shared ruleset (idempotent)."""
        self._compiled = None
        self._release()  # runs _release once; later calls do nothing


def _describe(exc: Exception, n_rules: int) -> str:
    text = str(exc)
    if "303" in text and n_rules > DURABLE_MAX_FIRING:
        return f"more than {DURABLE_MAX_FIRING} rules fire on one candidate"
    return "it refused a candidate's facts"
