"""What it would take: for a method with no feasible candidate, what blocks it and which larger
hardware would let one pass.

The same rule base decides here as in the search: a hypothetical plan (more nodes of the same kind,
or free NVMe with a path) is searched with the same reject rules (search/feasibility.py), and only a
candidate on which no reject rule fires is proposed. "Not for lack of memory" is said only when no
memory rule (policy.verdicts.is_memory_rule) rejected the closest candidate.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from ..plan.schema import Plan
from ..plan.strategy import Strategy
from ..policy.rules import Rule
from ..policy.verdicts import is_memory_rule
from ..policy.vocabulary import to_message
from ..search.candidates import strategy_shapes
from ..search.feasibility import Feasibility
from ..search.judge import Judged
from ..search.sweep import PlanProbe, cross_facts

if TYPE_CHECKING:
    from ..model.spec import ModelSpec

NODE_FACTORS = (2, 4, 8, 16)
# A hypothetical NVMe large enough that space never rejects: what is asked is how much is needed.
_HYPOTHETICAL_NVME = 100_000


@dataclass(frozen=True)
class Proposal:
    plan: Plan            # the hypothetical plan (more nodes, or NVMe)
    strategy: Strategy    # its first candidate of the method on which no reject rule fires
    text: str


@dataclass(frozen=True)
class Outlook:
    method: str
    closest: Judged
    memory_rules: tuple[str, ...]   # memory reject rules that fired on the closest candidate
    proposals: tuple[Proposal, ...]
    text: str


def outlooks(plan: Plan, model: ModelSpec, judged: Sequence[Judged], rules: Sequence[Rule],
             feasibility: Feasibility) -> list[Outlook]:
    """One Outlook per method of the plan with no feasible candidate.

    Args:
        plan, model: the plan advised on and its model.
        judged: the ranked candidates (search.judge.judge).
        rules: the rule base (to tell memory rules from the others).
        feasibility: the reject-only view of the same rule base, for the hypothetical plans.
    """
    by_id = {r.id: r for r in rules}
    out = []
    for method in dict.fromkeys(j.candidate.strategy.method for j in judged):
        ranked = [j for j in judged if j.candidate.strategy.method == method]
        if any(not j.verdict.rejected for j in ranked):
            continue
        closest = ranked[0]
        rejecting = [f for f in closest.verdict.firings if f.effect == "reject"]
        memory = tuple(f.rule for f in rejecting if is_memory_rule(by_id[f.rule]))
        # A non-memory rule that rejects every candidate of the method (bf16 on a GPU without it)
        # decides it whatever memory would be bought: say that, not what more GPUs would take.
        blocking = [f.message for f in rejecting if not is_memory_rule(by_id[f.rule])
                    and all(any(g.rule == f.rule and g.effect == "reject" for g in j.verdict.firings) for j in ranked)]
        if not memory:
            reasons = "; ".join(closest.verdict.reject_reasons)
            out.append(Outlook(method, closest, (), (), f"{method}: nothing fits, and not for lack of memory: {reasons}."))
            continue
        if blocking:  # memory misses too, so "not for lack of memory" would not be true (advise review)
            reasons = "; ".join(dict.fromkeys(blocking))
            out.append(Outlook(method, closest, (), (), f"{method}: nothing fits, whatever the memory: every {method} "
                                                        f"plan is rejected because {reasons} (the closest misses on memory too)."))
            continue
        proposals = tuple(_bigger_hardware(plan, model, method, feasibility))
        out.append(Outlook(method, closest, memory, proposals, _closest_line(method, closest, plan) + _options(proposals)))
    return out


def what_it_would_take(plan: Plan, model: ModelSpec, judged: Sequence[Judged], rules: Sequence[Rule],
                       feasibility: Feasibility) -> list[str]:
    """The lines of `outlooks` (Advice.what_it_would_take)."""
    return [o.text for o in outlooks(plan, model, judged, rules, feasibility)]


def _closest_line(method: str, closest: Judged, plan: Plan) -> str:
    e, pol = closest.candidate.estimate, plan.policy
    need_gpu = e.gpu_peak_gib / (1 - pol.gpu_headroom)
    need_host = e.host_peak_gib / (1 - pol.host_headroom)
    return (f"{method}: nothing fits. Closest: {closest.key}, GPU {e.gpu_peak_gib:.1f} GiB (needs "
            f"{need_gpu:.1f} GiB with headroom, have {e.gpu_capacity_gib:.1f}), host {e.host_peak_gib:.0f} GiB "
            f"per node (needs {need_host:.0f} GiB with headroom, have {e.host_capacity_gib:.0f}).")


def _options(proposals: Sequence[Proposal]) -> str:
    if not proposals:
        return f" No larger setup tried (up to {NODE_FACTORS[-1]}x nodes, NVMe) passes the rules."
    return " It would take: " + "; or ".join(p.text for p in proposals) + "."


def first_passing(p: Plan, model: ModelSpec, feasibility: Feasibility, method: str, min_stage: int = 0) -> Strategy | None:
    """The first candidate of `method` (search order) on p on which no reject rule fires, with every
    fact (relational ones included). p pins the method, so its only candidates are of that method and
    the cross-candidate facts of the one found are those of p's whole search."""
    probe = PlanProbe(p, model, feasibility)
    for shape in strategy_shapes(p):
        if shape.method != method or shape.zero_stage < min_stage:
            continue
        s = probe.size(shape)
        if probe.passes(s) and not feasibility.rejected_by(to_message(probe.candidate(s, cross_facts(probe, [s])).facts)):
            return s
    return None


def _bigger_hardware(plan: Plan, model: ModelSpec, method: str, feasibility: Feasibility) -> list[Proposal]:
    training = plan.training.model_copy(update={"method": method})
    options = []
    for factor in NODE_FACTORS:
        nodes = plan.hardware.nodes * factor
        p = plan.model_copy(update={"hardware": plan.hardware.model_copy(update={"nodes": nodes}), "training": training})
        s = first_passing(p, model, feasibility, method)
        if s:
            options.append(Proposal(p, s, f"{nodes} nodes of this kind ({s.key})"))
            break
    hw = plan.hardware.model_copy(update={"nvme": _HYPOTHETICAL_NVME, "nvme_path": plan.hardware.nvme_path or "/local_nvme"})
    p = plan.model_copy(update={"hardware": hw, "training": training.model_copy(update={"offload_optimizer": "nvme"})})
    s = first_passing(p, model, feasibility, method, min_stage=2)  # the auto search offers offload from ZeRO-2 up
    if s:
        nvme = PlanProbe(p, model, feasibility).estimate(s).nvme_gib
        options.append(Proposal(p, s, f"NVMe offload with at least {nvme:.0f} GiB free NVMe per node ({s.key})"))
    return options
