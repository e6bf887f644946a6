"""Estimate every candidate strategy and turn each into the facts the rules see.

Data flows one way: plan + model facts -> strategy shapes -> micro-batch sizing -> memory estimates
-> neighbour facts -> CandidateFacts. Nothing here decides; the rules do.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .candidates import largest_fitting, micro_batch_limit, strategy_shapes
from ..policy.vocabulary import CandidateFacts
from ..memory.estimate import MemoryEstimate, estimate_memory
from ..evidence.match import Evidence
from ..plan.strategy import Strategy


@dataclass(frozen=True)
class Candidate:
    strategy: Strategy
    estimate: MemoryEstimate
    facts: CandidateFacts
    notes: tuple[str, ...] = field(default_factory=tuple)


def within_budget(plan, est: MemoryEstimate, gpu_scale: float = 1.0, gpu_headroom: float | None = None) -> bool:
    """Peak within capacity minus the headroom on GPU and host, and NVMe within space.

    gpu_scale and gpu_headroom carry a measured calibration (Evidence.calibration) when there is one.
    """
    p = plan.policy
    headroom = p.gpu_headroom if gpu_headroom is None else gpu_headroom
    return (est.gpu_peak_gib * gpu_scale <= est.gpu_capacity_gib * (1 - headroom)
            and est.host_peak_gib <= est.host_capacity_gib * (1 - p.host_headroom)
            and est.nvme_fits)


def size_micro_batch(plan, model, shape: Strategy, evidence: Evidence = Evidence(), memo=None) -> Strategy:
    """Pin the plan's micro-batch, or take the largest within the GPU budget (1 if none fits)."""
    pinned = plan.training.micro_batch_size
    if pinned != "auto":
        return shape.model_copy(update={"micro_batch_size": pinned})
    scale, headroom = evidence.calibration(shape, plan.policy.gpu_headroom)
    budget = plan.hardware.gpu_memory_gib * (1 - headroom)

    estimate = memo or (lambda s: estimate_memory(plan, model, s))

    def fits(mb: int) -> bool:
        return estimate(shape.model_copy(update={"micro_batch_size": mb})).gpu_peak_gib * scale <= budget

    best = largest_fitting(1, micro_batch_limit(plan), fits)
    return shape.model_copy(update={"micro_batch_size": best or 1})


class _Memo:
    """estimate_memory memoised per strategy: neighbours and micro-batch searches repeat strategies."""

    def __init__(self, plan, model):
        self.plan, self.model, self._cache = plan, model, {}

    def __call__(self, s: Strategy) -> MemoryEstimate:
        if s not in self._cache:
            self._cache[s] = estimate_memory(self.plan, self.model, s)
        return self._cache[s]


def sweep(plan, model, evidence: Evidence = Evidence()) -> list[Candidate]:
    """All candidates of the plan, each with its estimate and facts (unranked, in search order)."""
    memo = _Memo(plan, model)
    sized = [size_micro_batch(plan, model, s, evidence, memo) for s in strategy_shapes(plan)]
    estimates = [memo(s) for s in sized]
    ok_by_method: dict[str, bool] = {}
    for s, e in zip(sized, estimates):
        ok = within_budget(plan, e, *evidence.calibration(s, plan.policy.gpu_headroom))
        ok_by_method[s.method] = ok_by_method.get(s.method, False) or ok
    return [Candidate(s, e, _facts(plan, memo, s, e, ok_by_method, evidence)) for s, e in zip(sized, estimates)]


def _neighbour_ok(plan, memo: _Memo, ev: Evidence, strategy: Strategy, **change) -> bool:
    other = strategy.model_copy(update=change)
    return within_budget(plan, memo(other), *ev.calibration(other, plan.policy.gpu_headroom))


def _lower_stage_ok(plan, memo: _Memo, ev: Evidence, s: Strategy) -> bool:
    return any(_neighbour_ok(plan, memo, ev, s, zero_stage=z, offload_optimizer="none", offload_param="none")
               for z in range(s.zero_stage))


def _facts(plan, memo: _Memo, s: Strategy, e: MemoryEstimate, ok_by_method: dict, ev: Evidence) -> CandidateFacts:
    hw, pol, t = plan.hardware, plan.policy, plan.training
    g = e.gpu
    dynamic = g.activations_gib + g.logits_loss_gib
    oom = _matching_oom(s, e, ev)
    scale, gpu_headroom = ev.calibration(s, pol.gpu_headroom)
    gpu_peak = e.gpu_peak_gib * scale
    ranks_copies = hw.gpus_per_node * (1 + plan.data.dataloader_workers)
    return CandidateFacts(
        method=s.method, zero_stage=s.zero_stage, offload_optimizer=s.offload_optimizer,
        offload_param=s.offload_param, gradient_checkpointing=s.gradient_checkpointing,
        micro_batch_size=s.micro_batch_size, pin_memory=s.pin_memory,
        gather_16bit_on_save=s.gather_16bit_on_save, accumulation_steps=e.gradient_accumulation_steps,
        precision=t.precision, optimizer=t.optimizer, seq_len=t.seq_len, world_size=hw.world_size,
        nodes=hw.nodes, gpus_per_node=hw.gpus_per_node, gpu_bf16=hw.supports_bf16,
        require_full_finetune=pol.require_full_finetune, method_pinned=t.method != "auto",
        nvme_path_set=hw.nvme_path is not None,
        total_params_b=memo.model.total_params / 1e9, trainable_params_b=e.trainable_params / 1e9,
        gpu_peak_gib=gpu_peak, gpu_capacity_gib=e.gpu_capacity_gib,
        gpu_usage=gpu_peak / e.gpu_capacity_gib, gpu_headroom=gpu_headroom,
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
        fits_without_checkpointing=_neighbour_ok(plan, memo, ev, s, gradient_checkpointing=False),
        fits_without_offload=_neighbour_ok(plan, memo, ev, s, offload_optimizer="none", offload_param="none"),
        fits_pinned=_neighbour_ok(plan, memo, ev, s, pin_memory=True),
        fits_with_gather=_neighbour_ok(plan, memo, ev, s, gather_16bit_on_save=True),
        lower_stage_fits=_lower_stage_ok(plan, memo, ev, s),
        lora_fits=ok_by_method.get("lora", False), full_fits=ok_by_method.get("full", False),
        measured=ev.present, measured_oom=oom is not None, measured_oom_source=oom or "",
        measured_ratio=ev.ratio_for(s),
        measured_ratio_source=ev.ratio_source if ev.ratio_for(s) else "",
        fragmentation_seen=ev.fragmentation,
        dataset_gib=plan.data.dataset_gib,
        dataset_host_share=plan.data.dataset_gib * ranks_copies / e.host_capacity_gib,
        streaming=str(plan.data.streaming).lower(),
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
