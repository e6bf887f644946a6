"""Estimate every candidate strategy and turn each into the facts the rules see.

Data flows one way: plan + model facts -> strategy shapes -> micro-batch sizing -> memory estimates
-> neighbour facts -> CandidateFacts. Nothing here decides; the rules do.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .candidates import largest_fitting, micro_batch_limit, strategy_shapes
from .facts import CandidateFacts
from .memory import MemoryEstimate, estimate_memory
from .strategy import Strategy


@dataclass(frozen=True)
class Evidence:
    """Measured facts already matched to the plan (engine/measured.py builds it)."""

    oom_strategies: tuple = ()          # (Strategy, est. GPU peak, est. host peak, source, kind) of measured OOMs
    ratio: float = 0.0                  # measured / estimated peak (0: nothing measured)
    fragmentation: bool = False
    present: bool = False


@dataclass(frozen=True)
class Candidate:
    strategy: Strategy
    estimate: MemoryEstimate
    facts: CandidateFacts
    notes: tuple[str, ...] = field(default_factory=tuple)


def within_budget(plan, est: MemoryEstimate) -> bool:
    """Peak within capacity minus the policy's headroom on GPU and host, and NVMe within space."""
    p = plan.policy
    return (est.gpu_peak_gib <= est.gpu_capacity_gib * (1 - p.gpu_headroom)
            and est.host_peak_gib <= est.host_capacity_gib * (1 - p.host_headroom)
            and est.nvme_fits)


def size_micro_batch(plan, model, shape: Strategy) -> Strategy:
    """Pin the plan's micro-batch, or take the largest within the GPU budget (1 if none fits)."""
    pinned = plan.training.micro_batch_size
    if pinned != "auto":
        return shape.model_copy(update={"micro_batch_size": pinned})
    budget = plan.hardware.gpu_memory_gib * (1 - plan.policy.gpu_headroom)

    def fits(mb: int) -> bool:
        s = shape.model_copy(update={"micro_batch_size": mb})
        return estimate_memory(plan, model, s).gpu_peak_gib <= budget

    best = largest_fitting(1, micro_batch_limit(plan), fits)
    return shape.model_copy(update={"micro_batch_size": best or 1})


def sweep(plan, model, evidence: Evidence = Evidence()) -> list[Candidate]:
    """All candidates of the plan, each with its estimate and facts (unranked, in search order)."""
    sized = [size_micro_batch(plan, model, s) for s in strategy_shapes(plan)]
    estimates = [estimate_memory(plan, model, s) for s in sized]
    ok_by_method: dict[str, bool] = {}
    for s, e in zip(sized, estimates):
        ok_by_method[s.method] = ok_by_method.get(s.method, False) or within_budget(plan, e)
    return [Candidate(s, e, _facts(plan, model, s, e, ok_by_method, evidence)) for s, e in zip(sized, estimates)]


def _neighbour_ok(plan, model, strategy: Strategy, **change) -> bool:
    return within_budget(plan, estimate_memory(plan, model, strategy.model_copy(update=change)))


def _lower_stage_ok(plan, model, s: Strategy) -> bool:
    return any(_neighbour_ok(plan, model, s, zero_stage=z, offload_optimizer="none", offload_param="none")
               for z in range(s.zero_stage))


def _facts(plan, model, s: Strategy, e: MemoryEstimate, ok_by_method: dict, ev: Evidence) -> CandidateFacts:
    hw, pol, t = plan.hardware, plan.policy, plan.training
    g = e.gpu
    dynamic = g.activations_gib + g.logits_loss_gib
    oom = _matching_oom(s, e, ev)
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
        total_params_b=model.total_params / 1e9, trainable_params_b=e.trainable_params / 1e9,
        gpu_peak_gib=e.gpu_peak_gib, gpu_capacity_gib=e.gpu_capacity_gib,
        gpu_usage=e.gpu_peak_gib / e.gpu_capacity_gib, gpu_headroom=pol.gpu_headroom,
        gpu_budget=1 - pol.gpu_headroom,
        gpu_margin=(1 - pol.gpu_headroom) - e.gpu_peak_gib / e.gpu_capacity_gib,
        gpu_budget_gib=e.gpu_capacity_gib * (1 - pol.gpu_headroom),
        gpu_excess_gib=e.gpu_peak_gib - e.gpu_capacity_gib * (1 - pol.gpu_headroom),
        host_peak_gib=e.host_peak_gib, host_capacity_gib=e.host_capacity_gib,
        host_usage=e.host_peak_gib / e.host_capacity_gib, host_headroom=pol.host_headroom,
        host_budget=1 - pol.host_headroom,
        host_margin=(1 - pol.host_headroom) - e.host_peak_gib / e.host_capacity_gib,
        host_budget_gib=e.host_capacity_gib * (1 - pol.host_headroom),
        host_excess_gib=e.host_peak_gib - e.host_capacity_gib * (1 - pol.host_headroom),
        nvme_needed_gib=e.nvme_gib, nvme_capacity_gib=e.nvme_capacity_gib,
        activation_share=dynamic / e.gpu_peak_gib if e.gpu_peak_gib else 0.0,
        fits_without_checkpointing=_neighbour_ok(plan, model, s, gradient_checkpointing=False),
        fits_without_offload=_neighbour_ok(plan, model, s, offload_optimizer="none", offload_param="none"),
        fits_pinned=_neighbour_ok(plan, model, s, pin_memory=True),
        fits_with_gather=_neighbour_ok(plan, model, s, gather_16bit_on_save=True),
        lower_stage_fits=_lower_stage_ok(plan, model, s),
        lora_fits=ok_by_method.get("lora", False), full_fits=ok_by_method.get("full", False),
        measured=ev.present, measured_oom=oom is not None, measured_oom_source=oom or "",
        measured_ratio=ev.ratio, fragmentation_seen=ev.fragmentation,
        dataset_gib=plan.data.dataset_gib,
        dataset_host_share=plan.data.dataset_gib * ranks_copies / e.host_capacity_gib,
        streaming=str(plan.data.streaming).lower(),
    )


def _matching_oom(s: Strategy, e: MemoryEstimate, ev: Evidence) -> str | None:
    """A measured OOM rules out the strategy that produced it and every candidate predicted to need at
    least as much of the memory that ran out."""
    for oom_strategy, gpu_peak, host_peak, source, kind in ev.oom_strategies:
        same = s.model_copy(update={"micro_batch_size": oom_strategy.micro_batch_size}) == oom_strategy \
            and s.micro_batch_size >= oom_strategy.micro_batch_size
        hungrier = (e.gpu_peak_gib >= gpu_peak) if kind == "gpu_oom" else (e.host_peak_gib >= host_peak)
        if same or hungrier:
            return source
    return None
