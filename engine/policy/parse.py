"""From YAML to condition objects: depth bounded first (without recursion), then built and checked.

The vocabulary checks (fact names, value types) are passed in by the rule loader (engine/policy/rules.py),
so that rules built in code and the verified cache can reuse the same builder.
"""
from __future__ import annotations

import typing  # not `from typing import Any`: conditions.Any is the any-of condition
from collections.abc import Mapping
from typing import Callable

from .conditions import OPS, All, Any, Comparison, Condition, FactRef, In, Not, NotIn

__all__ = ["depth", "build", "from_dict"]


def depth(raw: object) -> int:
    """Nesting depth of all/any/not in a raw (YAML) condition, measured without recursion."""
    deepest, stack = 0, [(raw, 0)]
    while stack:
        node, d = stack.pop()
        if not isinstance(node, Mapping):
            continue
        deepest = max(deepest, d)
        for key in ("all", "any"):
            if isinstance(node.get(key), (list, tuple)):
                stack.extend((sub, d + 1) for sub in node[key])
        if "not" in node:
            stack.append((node["not"], d + 1))
    return deepest


# A checker of one comparison: (the comparison's raw mapping, its place) -> problems.
Check = Callable[[dict[str, typing.Any], str], list[str]]


def build(raw: Mapping[str, typing.Any], check: Check | None = None,
          where: str = "when") -> tuple[Condition | None, list[str]]:
    """A Condition from a schema-valid raw condition whose depth was bounded (see depth()).

    Args:
        raw: the `when:` mapping as YAML loaded it.
        check: called on every comparison with its place (`where.all[0]`), returns problems.
        where: the place of `raw`, for messages.
    Returns:
        (condition, problems): the condition is None when there are problems.
    """
    problems: list[str] = []
    cond = _build(dict(raw), check, where, problems)
    return (None if problems else cond), problems


def _build(raw: dict[str, typing.Any], check: Check | None, where: str, problems: list[str]) -> Condition:
    if "all" in raw or "any" in raw:
        key = "all" if "all" in raw else "any"
        parts = tuple(_build(sub, check, f"{where}.{key}[{i}]", problems) for i, sub in enumerate(raw[key]))
        return All(parts) if key == "all" else Any(parts)
    if "not" in raw:
        return Not(_build(raw["not"], check, f"{where}.not", problems))
    if check is not None:
        problems += check(raw, where)
    op = next(k for k in OPS if k in raw)
    value = raw[op]
    if op == "in":
        return In(raw["fact"], tuple(value))
    if op == "not_in":
        return NotIn(raw["fact"], tuple(value))
    return Comparison(raw["fact"], op, FactRef(value["fact"]) if isinstance(value, dict) else value)


def from_dict(raw: Mapping[str, object]) -> Condition:
    """A Condition from a raw condition, without the vocabulary checks (rules built in code, cache)."""
    if isinstance(raw, Condition):
        return raw
    cond, _ = build(dict(raw))
    assert cond is not None
    return cond
