"""Estimate every candidate strategy and turn each into the facts the rules see.

Data flows one way: plan + model facts -> strategy shapes -> micro-batch sizing -> memory estimates
-> neighbour facts -> CandidateFacts. Python measures (numbers with units, the plan's choices); the
rule base decides: a micro-batch is the largest on which no reject rule fires, and a neighbour is
feasible when no reject rule fires on it (search/feasibility.py, one evaluator for both).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

from .candidates import micro_batch_limit, strategy_shapes
from .feasibility import Feasibility, largest_passing
from .fsdp_shapes import engine_facts, pinned_sharding
from ..core.errors import PlanError
from ..policy.vocabulary import CandidateFacts
from ..memory.band import band_for
from ..memory.data import data_host_terms
from ..memory.quant import checkpoint_quantization
from ..memory.states import PAGED_OPTIMIZERS, modules_to_save_params
from ..core.units import GIB
from ..memory.estimate import MemoryEstimate, estimate_memory
from ..evidence.match import Evidence
from ..plan.stack import resolve_stack
from ..plan.strategy import Strategy

if TYPE_CHECKING:
    from ..model.spec import ModelSpec
    from ..plan.schema import Plan


@dataclass(frozen=True)
class Candidate:
    strategy: Strategy
    estimate: MemoryEstimate
    facts: CandidateFacts
    notes: tuple[str, ...] = field(default_factory=tuple)


class PlanProbe:
    """One plan's strategies measured and put to the reject rules, memoised per strategy.

    Args:
        plan, model: the checked plan and its model.
        feasibility: the reject-only view of the rule base (shared across plans: its memo is per fact values).
        evidence: measured facts (calibration, OOMs) that enter the facts.
    """

    def __init__(self, plan: Plan, model: ModelSpec, feasibility: Feasibility, evidence: Evidence = Evidence()):
        self.plan, self.model, self.feasibility, self.evidence = plan, model, feasibility, evidence
        self._estimates: dict[Strategy, MemoryEstimate] = {}
        self._measures: dict[Strategy, dict[str, Any]] = {}

    def estimate(self, s: Strategy) -> MemoryEstimate:
        if s not in self._estimates:
            self._estimates[s] = estimate_memory(self.plan, self.model, s)
        return self._estimates[s]

    def measures(self, s: Strategy) -> dict[str, Any]:
        """Every fact of the strategy except the relational ones (feasibility.RELATIONAL_FACTS)."""
        if s not in self._measures:
            self._measures[s] = _measures(self.plan, self.model, s, self.estimate(s), self.evidence)
        return self._measures[s]

    def rejected_by(self, s: Strategy) -> tuple[str, ...]:
        """The reject rules that fire on the strategy's first-pass facts."""
        return self.feasibility.rejected_by(self.measures(s))

    def passes(self, s: Strategy) -> bool:
        return not self.rejected_by(s)

    def size(self, shape: Strategy) -> Strategy:
        """Pin the plan's micro-batch, or take the largest on which no reject rule fires (1 if none)."""
        pinned = self.plan.training.micro_batch_size
        if pinned != "auto":
            return shape.model_copy(update={"micro_batch_size": pinned})
        best = largest_passing(1, micro_batch_limit(self.plan),
                               lambda mb: self.passes(shape.model_copy(update={"micro_batch_size": mb})))
        return shape.model_copy(update={"micro_batch_size": best or 1})

    def candidate(self, s: Strategy, cross: dict[str, bool]) -> Candidate:
        """The sized strategy with every fact: its measures, its neighbours' verdicts and `cross`."""
        facts = CandidateFacts(**self.measures(s), **_neighbours(self, s), **cross)
        return Candidate(s, self.estimate(s), facts)


def sweep(plan: Plan, model: ModelSpec, feasibility: Feasibility, evidence: Evidence = Evidence()) -> list[Candidate]:
    """All candidates of the plan, each with its estimate and facts (unranked, in search order).

    Args:
        plan, model: the checked plan and its model.
        feasibility: the reject-only view of the rule base that sizes micro-batches and judges neighbours.
        evidence: measured facts.
    """
    probe = PlanProbe(plan, model, feasibility, evidence)
    sized = [probe.size(s) for s in strategy_shapes(plan)]
    if not sized:
        raise PlanError(_no_candidate(plan))
    cross = cross_facts(probe, sized)
    return [probe.candidate(s, cross) for s in sized]


_PINNABLE = ("method", "zero_stage", "offload_optimizer", "offload_param", "gradient_checkpointing", "sharding")


def _no_candidate(plan: Plan) -> str:
    """Why the pinned training keys leave nothing to search, naming the keys (and FSDP's own limits)."""
    t = plan.training
    pins = ", ".join(f"{k}: {getattr(t, k)}" for k in _PINNABLE if getattr(t, k) != "auto")
    why = ""
    if t.sharding in ("fsdp1", "fsdp2") and t.zero_stage != "auto":
        try:
            pinned_sharding(plan)
        except ValueError as exc:
            why = f": {exc}"
    fsdp = t.sharding.startswith("fsdp")
    if not why and fsdp and "nvme" in (t.offload_optimizer, t.offload_param):
        why = ": FSDP offloads to CPU only"
    elif not why and fsdp and "cpu" in (t.offload_optimizer, t.offload_param):
        why = ": FSDP offloads parameters and optimizer together, and only when it reshards after forward (zero_stage 3)"
    return f"{plan.source}: training: the pinned keys ({pins}) leave no candidate strategy{why}"


def cross_facts(probe: PlanProbe, sized: Iterable[Strategy]) -> dict[str, bool]:
    """Facts about the other candidates, from the first pass of the reject rules over all of them."""
    sized = list(sized)
    return {"lora_feasible": any(s.method == "lora" and probe.passes(s) for s in sized),
            "deepspeed_feasible": any(s.sharding == "deepspeed" and probe.passes(s) for s in sized),
            "fsdp_feasible": any(s.sharding == "fsdp" and probe.passes(s) for s in sized)}


def _neighbours(probe: PlanProbe, s: Strategy) -> dict[str, bool]:
    def ok(**change: Any) -> bool:
        return probe.passes(s.model_copy(update=change))

    return {
        "feasible_without_checkpointing": ok(gradient_checkpointing=False),
        "feasible_without_offload": ok(offload_optimizer="none", offload_param="none"),
        "feasible_pinned": ok(pin_memory=True),
        "lower_stage_feasible": any(ok(zero_stage=z, offload_optimizer="none", offload_param="none")
                                    for z in range(s.zero_stage)),
    }


def _measures(plan: Plan, model: ModelSpec, s: Strategy, e: MemoryEstimate, ev: Evidence) -> dict[str, Any]:
    hw, pol, t = plan.hardware, plan.policy, plan.training
    g = e.gpu
    dynamic = g.activations_gib + g.logits_loss_gib
    oom = _matching_oom(s, e, ev)
    scale, gpu_headroom = ev.calibration(s, pol.gpu_headroom)
    gpu_peak = e.gpu_peak_gib * scale
    # The band's upper end after any measured calibration scale: the conformal quantile, at the
    # policy's level, of the out-of-sample residuals of this family (engine/memory/band.json; bench/band.py).
    gpu_upper = gpu_peak * band_for(s, pol.band_quantile, hw.world_size, t.framework).high
    data = data_host_terms(plan, s.micro_batch_size)
    paged = t.optimizer in PAGED_OPTIMIZERS
    own_quant = checkpoint_quantization(model)
    return dict(
        method=s.method, zero_stage=s.zero_stage, offload_optimizer=s.offload_optimizer,
        offload_param=s.offload_param, gradient_checkpointing=s.gradient_checkpointing,
        micro_batch_size=s.micro_batch_size, pin_memory=s.pin_memory,
        gather_16bit_on_save=s.gather_16bit_on_save, accumulation_steps=e.gradient_accumulation_steps,
        precision=t.precision, optimizer=t.optimizer, seq_len=t.seq_len, world_size=hw.world_size,
        nodes=hw.nodes, gpus_per_node=hw.gpus_per_node, gpu_bf16=hw.supports_bf16,
        require_full_finetune=pol.require_full_finetune, method_pinned=t.method != "auto",
        nvme_path_set=hw.nvme_path is not None,
        total_params_b=model.total_params / 1e9, trainable_params_b=e.trainable_params / 1e9,
        base_quantization=own_quant.label if own_quant else "",
        modules_to_save_b=(modules_to_save_params(model, t.lora.modules_to_save) / 1e9
                           if s.method != "full" else 0.0),
        optimizer_paged=paged, paged_optimizer_gib=g.optimizer_states_gib if paged else 0.0,
        gpu_peak_gib=gpu_peak, gpu_peak_phase=e.gpu_peak_phase, gpu_capacity_gib=e.gpu_capacity_gib,
        gpu_usage=gpu_peak / e.gpu_capacity_gib, gpu_headroom=gpu_headroom,
        gpu_peak_upper_gib=gpu_upper, gpu_usage_upper=gpu_upper / e.gpu_capacity_gib,
        gpu_budget=1 - gpu_headroom,
        gpu_margin=(1 - gpu_headroom) - gpu_peak / e.gpu_capacity_gib,
        gpu_budget_gib=e.gpu_capacity_gib * (1 - gpu_headroom),
        gpu_excess_gib=gpu_peak - e.gpu_capacity_gib * (1 - gpu_headroom),
        host_peak_gib=e.host_peak_gib, host_capacity_gib=e.host_capacity_gib,
        host_usage=e.host_peak_gib / e.host_capacity_gib, host_headroom=pol.host_headroom,
        host_budget=1 - pol.host_headroom,
        host_margin=(1 - pol.host_headroom) - e.host_peak_gib / e.host_capacity_gib,
        host_budget_gib=e.host_capacity_gib * (1 - pol.host_headroom),
        host_excess_gib=e.host_peak_gib - e.host_capacity_gib * (1 - pol.host_headroom),
        nvme_needed_gib=e.nvme_gib, nvme_capacity_gib=e.nvme_capacity_gib,
        activation_share=dynamic / e.gpu_peak_gib if e.gpu_peak_gib else 0.0,
        measured=ev.present, measured_oom=oom is not None, measured_oom_source=oom or "",
        measured_ratio=ev.ratio_for(s),
        measured_ratio_source=ev.ratio_source if ev.ratio_for(s) else "",
        fragmentation_seen=ev.fragmentation,
        dataset_gib=plan.data.dataset_gib,
        dataset_host_share=data.training / GIB / e.host_capacity_gib,
        streaming=str(plan.data.streaming).lower(),
        data_format=data.format, dataloader_workers=plan.data.dataloader_workers,
        dataset_private_gib=data.dataset_private / GIB, dataset_page_cache_gib=data.page_cache / GIB,
        host_free_gib=e.host_capacity_gib - e.host_peak_gib,
        zero_init=resolve_stack(plan, model).zero_init,
        **engine_facts(plan, s),
    )


def _matching_oom(s: Strategy, e: MemoryEstimate, ev: Evidence) -> str | None:
    """A measured OOM rules out the strategy that produced it and every candidate predicted to need at
    least as much of the memory that ran out."""
    for oom in ev.ooms:
        same = s.model_copy(
            update={"micro_batch_size": oom.strategy.micro_batch_size}) == oom.strategy \
            and s.micro_batch_size >= oom.strategy.micro_batch_size
        hungrier = (e.gpu_peak_gib >= oom.gpu_gib) if oom.kind == "gpu_oom" else (e.host_peak_gib >= oom.host_gib)
        if same or hungrier:
            return oom.source
    return None
