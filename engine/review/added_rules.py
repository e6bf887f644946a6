"""Reject rules a user might add, drawn for the review's properties about the search.

The properties "an added reject rule never leaves nothing-fits while something passes", "every
what-it-would-take proposal passes every reject rule" and "not for lack of memory only when no memory
rule fired" hold for any rule base, so the review draws one extra user-style reject rule per example
(a GPU-use cap for large models, as in docs/how-to/write-your-own-rules.md; no NVMe; no parameter
offload; a host-use cap) on top of the rule base under review. hypothesis is imported only inside
`added_reject_rules`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..policy.parse import from_dict
from ..policy.rules import Rule

ADDED_RULE_FILE = "<drawn by advise review>"

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy


def added_rule(kind: str, threshold: float = 0.0) -> Rule:
    """One user-style reject rule: 'gpu-cap' (gpu_usage > threshold for models over 30B), 'host-cap'
    (host_usage > threshold), 'no-nvme' or 'no-param-offload'."""
    conditions: dict[str, dict[str, Any]] = {
        "gpu-cap": {"all": [{"fact": "total_params_b", "gt": 30.0}, {"fact": "gpu_usage", "gt": threshold}]},
        "host-cap": {"fact": "host_usage", "gt": threshold},
        "no-nvme": {"any": [{"fact": "offload_optimizer", "eq": "nvme"}, {"fact": "offload_param", "eq": "nvme"}]},
        "no-param-offload": {"fact": "offload_param", "ne": "none"},
    }
    when = conditions[kind]
    return Rule(id=f"review-added-{kind}", description=f"drawn user policy: {kind} {threshold:g}", when=from_dict(when),
                then={"reject": True}, because=f"drawn user policy {kind} {threshold:g}", source="advise review",
                tests=(), priority=0, file=ADDED_RULE_FILE, topic="review-added")


def added_reject_rules() -> SearchStrategy[dict[str, Any]]:
    """A hypothesis strategy of one drawn rule as plain data, {"kind", "threshold"} (see added_rule), so
    that a counterexample stays JSON."""
    from hypothesis import strategies as st

    def drawn(kind: str, thresholds: SearchStrategy[float]) -> SearchStrategy[dict[str, Any]]:
        return st.fixed_dictionaries({"kind": st.just(kind), "threshold": thresholds})

    return st.one_of(drawn("gpu-cap", st.sampled_from((0.7, 0.5, 0.3)) | st.floats(0.05, 0.95)),
                     drawn("host-cap", st.sampled_from((0.5, 0.2)) | st.floats(0.05, 0.95)),
                     drawn("no-nvme", st.just(0.0)), drawn("no-param-offload", st.just(0.0)))
