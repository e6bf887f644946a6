"""Rule conditions as objects: parsed and type-checked once, when a rule file is loaded.

A `when:` block becomes a tree of `Comparison`, `In`, `NotIn`, `All`, `Any` and `Not`. Each node
evaluates itself (the plain-Python oracle), compiles itself to durable-rules' JSON grammar, and is
visited by one walker (`walk`) from which the facts a rule reads, the literals it compares with and
its fact-against-fact pairs are all derived.

Semantics (both evaluators implement exactly these):
- A comparison or membership test on a fact that is absent is false, whatever the operator (`ne`
  and `not_in` included); a fact-against-fact comparison is false when either fact is absent.
- `not: C` holds exactly when C does not hold (two-valued logic). So `not {fact: x, eq: 3}` holds
  when x is absent, and `not {fact: x, ne: 3}` holds when x is absent or equals 3.

A node is also a read-only mapping with the keys of its YAML form (`cond["fact"]`, `"all" in cond`),
so code that reads rule conditions as plain data keeps working.
"""
from __future__ import annotations

import operator
import typing
from collections.abc import Mapping
from dataclasses import dataclass
import typing  # not `from typing import Any`: Any below is the any-of condition
from typing import Iterator

ORDERING_OPS = ("lt", "le", "gt", "ge")
COMPARE_OPS = ("eq", "ne", *ORDERING_OPS)
OPS = (*COMPARE_OPS, "in", "not_in")
_PY: dict[str, typing.Callable[[typing.Any, typing.Any], bool]] = {"eq": operator.eq, "ne": operator.ne, "lt": operator.lt, "le": operator.le, "gt": operator.gt,
       "ge": operator.ge}
_DURABLE = {"ne": "$neq", "lt": "$lt", "le": "$lte", "gt": "$gt", "ge": "$gte"}
# The operator that holds exactly when OP does not, for two present (finite, same-typed) values.
_COMPLEMENT = {"eq": "ne", "ne": "eq", "lt": "ge", "ge": "lt", "le": "gt", "gt": "le"}


class Condition(Mapping[str, typing.Any]):
    """A parsed condition. Subclasses implement holds, durable, negated_durable, children, as_dict."""

    def holds(self, facts: Mapping[str, object]) -> bool:
        raise NotImplementedError

    def durable(self) -> dict[str, typing.Any]:
        """This condition in durable-rules' expression grammar."""
        raise NotImplementedError

    def negated_durable(self) -> dict[str, typing.Any]:
        """The negation of this condition in durable-rules' grammar (which has no expression-level
        `not`: its `$not` is the absence of a matching fact), pushed down to the leaves."""
        raise NotImplementedError

    def children(self) -> tuple["Condition", ...]:
        return ()

    def as_dict(self) -> dict[str, typing.Any]:
        """The YAML form, as a rule file writes it."""
        raise NotImplementedError

    # Mapping view of the YAML form
    def __getitem__(self, key: str) -> object:
        return self._view()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._view())

    def __len__(self) -> int:
        return len(self._view())

    def _view(self) -> dict[str, typing.Any]:
        return self.as_dict()

    def __repr__(self) -> str:
        return repr(self.as_dict())


@dataclass(frozen=True, eq=False, repr=False)
class FactRef:
    """The right-hand side of a fact-against-fact comparison."""

    name: str


# durable-rules 2.0.28 spins at 100% CPU when a `$nex` (field absent) test holds, alone or inside an
# `$or` (measured: tests/test_rules_engine.py, bench/durable_limits.py). So "fact X is absent" is
# compiled as the marker field ABSENT_MARK + X being true, which the durable-rules adapter adds to every
# asserted fact for each absent fact the rule base reads. Not a fact name (the loader rejects unknown
# facts), so no rule can read or set it.
ABSENT_MARK = "memfit_absent_"


def _exists(name: str) -> dict[str, typing.Any]:
    return {"$ex": {name: 1}}


def _absent(name: str) -> dict[str, typing.Any]:
    return {ABSENT_MARK + name: True}


def _compare(name: str, op: str, operand: object) -> dict[str, typing.Any]:
    return {name: operand} if op == "eq" else {_DURABLE[op]: {name: operand}}


@dataclass(frozen=True, eq=False, repr=False)
class Comparison(Condition):
    """`{fact: NAME, OP: VALUE}` with OP in eq/ne/lt/le/gt/ge; VALUE a literal or a FactRef."""

    fact: str
    op: str
    operand: object

    def holds(self, facts: Mapping[str, object]) -> bool:
        if self.fact not in facts:
            return False
        right = self.operand
        if isinstance(right, FactRef):
            if right.name not in facts:
                return False
            right = facts[right.name]
        return bool(_PY[self.op](facts[self.fact], right))

    def _durable(self, op: str) -> dict[str, typing.Any]:
        if isinstance(self.operand, FactRef):
            return _compare(self.fact, op, {"$m": self.operand.name})
        return _compare(self.fact, op, self.operand)

    def durable(self) -> dict[str, typing.Any]:
        if isinstance(self.operand, FactRef):
            # durable-rules matches a fact-vs-fact comparison whose right-hand fact is absent
            return {"$and": [_exists(self.operand.name), self._durable(self.op)]}
        return self._durable(self.op)

    def negated_durable(self) -> dict[str, typing.Any]:
        missing = [_absent(self.fact)]
        if isinstance(self.operand, FactRef):
            missing.append(_absent(self.operand.name))
        return {"$or": [*missing, self._durable(_COMPLEMENT[self.op])]}

    def as_dict(self) -> dict[str, typing.Any]:
        value = {"fact": self.operand.name} if isinstance(self.operand, FactRef) else self.operand
        return {"fact": self.fact, self.op: value}


@dataclass(frozen=True, eq=False, repr=False)
class In(Condition):
    """`{fact: NAME, in: [literals]}`: the fact equals one of the literals."""

    fact: str
    choices: tuple[typing.Any, ...]

    op = "in"

    def holds(self, facts: Mapping[str, object]) -> bool:
        return self.fact in facts and any(facts[self.fact] == v for v in self.choices)

    def _any_equal(self) -> dict[str, typing.Any]:
        return {"$or": [{self.fact: v} for v in self.choices]}

    def _none_equal(self) -> dict[str, typing.Any]:
        return {"$and": [{"$neq": {self.fact: v}} for v in self.choices]}

    def durable(self) -> dict[str, typing.Any]:
        return self._any_equal()

    def negated_durable(self) -> dict[str, typing.Any]:
        return {"$or": [_absent(self.fact), self._none_equal()]}

    def as_dict(self) -> dict[str, typing.Any]:
        return {"fact": self.fact, self.op: list(self.choices)}


@dataclass(frozen=True, eq=False, repr=False)
class NotIn(In):
    """`{fact: NAME, not_in: [literals]}`: the fact is present and equals none of the literals."""

    op = "not_in"

    def holds(self, facts: Mapping[str, object]) -> bool:
        return self.fact in facts and not any(facts[self.fact] == v for v in self.choices)

    def durable(self) -> dict[str, typing.Any]:
        return self._none_equal()

    def negated_durable(self) -> dict[str, typing.Any]:
        return {"$or": [_absent(self.fact), *self._any_equal()["$or"]]}


@dataclass(frozen=True, eq=False, repr=False)
class All(Condition):
    parts: tuple[Condition, ...]

    def holds(self, facts: Mapping[str, object]) -> bool:
        return all(p.holds(facts) for p in self.parts)

    def durable(self) -> dict[str, typing.Any]:
        return {"$and": [p.durable() for p in self.parts]}

    def negated_durable(self) -> dict[str, typing.Any]:  # De Morgan
        return {"$or": [p.negated_durable() for p in self.parts]}

    def children(self) -> tuple[Condition, ...]:
        return self.parts

    def as_dict(self) -> dict[str, typing.Any]:
        return {"all": [p.as_dict() for p in self.parts]}

    def _view(self) -> dict[str, typing.Any]:
        return {"all": list(self.parts)}


@dataclass(frozen=True, eq=False, repr=False)
class Any(Condition):
    parts: tuple[Condition, ...]

    def holds(self, facts: Mapping[str, object]) -> bool:
        return any(p.holds(facts) for p in self.parts)

    def durable(self) -> dict[str, typing.Any]:
        return {"$or": [p.durable() for p in self.parts]}

    def negated_durable(self) -> dict[str, typing.Any]:  # De Morgan
        return {"$and": [p.negated_durable() for p in self.parts]}

    def children(self) -> tuple[Condition, ...]:
        return self.parts

    def as_dict(self) -> dict[str, typing.Any]:
        return {"any": [p.as_dict() for p in self.parts]}

    def _view(self) -> dict[str, typing.Any]:
        return {"any": list(self.parts)}


@dataclass(frozen=True, eq=False, repr=False)
class Not(Condition):
    inner: Condition

    def holds(self, facts: Mapping[str, object]) -> bool:
        return not self.inner.holds(facts)

    def durable(self) -> dict[str, typing.Any]:
        return self.inner.negated_durable()

    def negated_durable(self) -> dict[str, typing.Any]:
        return self.inner.durable()

    def children(self) -> tuple[Condition, ...]:
        return (self.inner,)

    def as_dict(self) -> dict[str, typing.Any]:
        return {"not": self.inner.as_dict()}

    def _view(self) -> dict[str, typing.Any]:
        return {"not": self.inner}



def walk(cond: Condition) -> Iterator[Condition]:
    """Every node of a condition tree, parents before children (iterative: no recursion limit)."""
    stack = [cond]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(node.children()))


def facts_read(cond: Condition) -> frozenset[str]:
    """The fact names a condition reads, both sides of fact-against-fact comparisons included."""
    names = set()
    for node in walk(cond):
        if isinstance(node, (Comparison, In)):
            names.add(node.fact)
        if isinstance(node, Comparison) and isinstance(node.operand, FactRef):
            names.add(node.operand.name)
    return frozenset(names)


def literals(cond: Condition) -> Iterator[tuple[str, object]]:
    """(fact, literal) for every literal the condition compares a fact with."""
    for node in walk(cond):
        if isinstance(node, In):
            yield from ((node.fact, v) for v in node.choices)
        elif isinstance(node, Comparison) and not isinstance(node.operand, FactRef):
            yield node.fact, node.operand


def fact_pairs(cond: Condition) -> Iterator[tuple[str, str]]:
    """(left, right) for every fact-against-fact comparison."""
    for node in walk(cond):
        if isinstance(node, Comparison) and isinstance(node.operand, FactRef):
            yield node.fact, node.operand.name
