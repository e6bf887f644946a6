"""`advise` and `estimate`: the library calls behind the CLI.

plan -> model facts -> candidate sweep (estimates + facts) -> rule firings -> verdicts -> ranking ->
typed Advice (with DeepSpeed JSON and launch lines per candidate).
"""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from ..deepspeed.parity import deepspeed_estimate
from ..core.errors import PlanError, about
from ..policy.oracle import make_evaluator
from ..memory.band import band_for
from ..memory.estimate import MemoryEstimate, estimate_memory
from ..model.spec import ModelSpec, plan_model
from ..plan.schema import Plan
from ..plan.load import load_plan
from .results import (Advice, CandidateResult, EstimateResult, Explanation, GpuBand, HardwareSummary, MemoryReport,
                      ModelSummary)
from ..policy.knobs import accelerate_for, env_for
from ..policy.rules import Rule, load_rules
from ..plan.strategy import Strategy
from ..evidence.match import Evidence
from ..search.feasibility import Feasibility, largest_passing
from ..search.judge import Judged, judge
from ..search.sweep import Candidate, PlanProbe, sweep
from .outlook import what_it_would_take
from ..core.units import describe_size

if TYPE_CHECKING:
    from ..policy.verdicts import Verdict

VERSION = "0.1.0"


def _as_plan(plan: Plan | str | Path) -> Plan:
    return plan if isinstance(plan, Plan) else load_plan(plan)


def model_summary(model: ModelSpec, plan: Plan, method: str) -> ModelSummary:
    lora = plan.training.lora
    by_method = {"full": model.total_params,
                 "lora": model.lora_trainable_params(lora.rank, lora.target_modules)}
    by_method["qlora"] = by_method["lora"]
    return ModelSummary(
        name=model.name, model_type=model.model_type, source=model.source, total_params=model.total_params,
        trainable_params=by_method[method], trainable_params_by_method=by_method,
        largest_layer_params=model.largest_layer_params, active_params=model.active_params,
        num_layers=model.num_layers, hidden_size=model.hidden_size, vocab_size=model.vocab_size,
        frozen_extra_params=model.frozen_extra_params, counted_by=model.counted_by)


def hardware_summary(plan: Plan) -> HardwareSummary:
    hw = plan.hardware
    readings = [f"hardware.gpu_memory: {describe_size(hw.gpu_memory, gb_means_gib=True)} (GPU 'GB' is GiB)"
                if hw.gpu_memory is not None else f"hardware.gpu: {hw.gpu} = {hw.gpu_memory_gib:g} GiB",
                f"hardware.host_memory: {describe_size(hw.host_memory)} per node"]
    if hw.nvme_gib:
        readings.append(f"hardware.nvme: {describe_size(hw.nvme)} per node")
    return HardwareSummary(gpu_memory_gib=hw.gpu_memory_gib, gpus_per_node=hw.gpus_per_node, nodes=hw.nodes,
                           host_memory_gib=hw.host_memory_gib, nvme_gib=hw.nvme_gib,
                           gpu_headroom=plan.policy.gpu_headroom, host_headroom=plan.policy.host_headroom,
                           readings=readings)


def _gpu_band(gpu_peak_gib: float, s: Strategy, plan: Plan) -> GpuBand:
    """The estimate times its family's residual quantiles at the policy's level (engine/memory/band.py)."""
    b = band_for(s, plan.policy.band_quantile, plan.hardware.world_size, plan.training.framework)
    return GpuBand(low=round(gpu_peak_gib * b.low, 3), high=round(gpu_peak_gib * b.high, 3), n=b.n, pool=b.pool,
                   level=b.level)


def _breakdown(e: MemoryEstimate) -> dict[str, dict[str, float]]:
    """GPU and host terms, plus the allocator's view: allocated (tensors) and reserved (segments, what ends a run)."""
    return {"gpu": {k: round(v, 3) for k, v in e.gpu.as_dict().items()},
            "host": {k: round(v, 3) for k, v in e.host.as_dict().items()},
            "allocator": {"allocated_gib": round(e.gpu_allocated_gib, 3), "reserved_gib": round(e.gpu_reserved_gib, 3)},
            # the named terms' sum and the held-out centre that scales it (memory/band.py centre_for)
            "calibration": {"modelled_gib": round(e.gpu_modelled_gib, 3),
                            "centre": round(e.gpu_centre, 4)}}


def _memory_report(c: Candidate, plan: Plan) -> MemoryReport:
    e = c.estimate
    return MemoryReport(gpu_peak_gib=round(e.gpu_peak_gib, 3), gpu_peak_phase=e.gpu_peak_phase,
                        host_peak_gib=round(e.host_peak_gib, 3), host_peak_phase=e.host_peak_phase,
                        nvme_gib=round(e.nvme_gib, 3), gpu_fits=e.gpu_fits, host_fits=e.host_fits,
                        breakdown=_breakdown(e), gpu_band=_gpu_band(e.gpu_peak_gib, c.strategy, plan))


def _ds_config(strategy: Strategy, plan: Plan, model: ModelSpec) -> tuple[dict[str, Any], list[str]]:
    from ..deepspeed.config import config_notes, deepspeed_config

    try:
        cfg = deepspeed_config(strategy, plan, model, pin_memory=strategy.pin_memory,
                               gather_16bit_on_save=strategy.gather_16bit_on_save)
    except ValueError as exc:
        return {}, [f"no DeepSpeed config: {exc}"]
    return cfg, config_notes(strategy, plan)


def _common(rank: int, c: Candidate, v: Verdict, plan: Plan) -> dict[str, Any]:
    """The fields every candidate result has, DeepSpeed or FSDP: strategy, verdict, memory, reasons."""
    s = c.strategy
    explanation = [Explanation(rule=f.rule, topic=f.topic, effect=f.effect, score=f.score, message=f.message,
                               advice=f.advice, source=f.source) for f in v.firings]
    return dict(rank=rank, key=s.key, feasible=not v.rejected, method=s.method, zero_stage=s.zero_stage,
                offload_optimizer=s.offload_optimizer, offload_param=s.offload_param,
                gradient_checkpointing=s.gradient_checkpointing, micro_batch_size=s.micro_batch_size,
                gradient_accumulation_steps=c.estimate.gradient_accumulation_steps, pin_memory=s.pin_memory,
                gather_16bit_on_save=s.gather_16bit_on_save, score=v.score, memory=_memory_report(c, plan),
                explanation=explanation, rejected_because=list(v.reject_reasons), settings=dict(v.settings))


def _result(rank: int, c: Candidate, v: Verdict, plan: Plan, model: ModelSpec) -> CandidateResult:
    from ..deepspeed.launch import launch_commands

    s = c.strategy
    if s.sharding == "fsdp":
        return _fsdp_result(rank, c, v, plan)
    cfg, notes = _ds_config(s, plan, model)
    return CandidateResult(
        **_common(rank, c, v, plan), notes=notes + list(v.conflicts), deepspeed_config=cfg,
        launch=launch_commands(plan, s, env=env_for(v.settings)) if cfg else {})


def _fsdp_result(rank: int, c: Candidate, v: Verdict, plan: Plan) -> CandidateResult:
    """An FSDP candidate: the accelerate config instead of DeepSpeed JSON (engine/fsdp/config.py)."""
    from ..fsdp.config import accelerate_config, framework_keys, torchtune_overrides

    s = c.strategy
    keys = {**framework_keys(s, plan), "torchtune": torchtune_overrides(s, plan)}
    env = "".join(f"{k}={shlex.quote(val)} " for k, val in env_for(v.settings).items())
    line = f"{env}accelerate launch --config_file fsdp_config.yaml train.py  # {s.key}"
    acc = accelerate_config(s, plan)
    acc.setdefault("fsdp_config", {}).update(accelerate_for(v.settings))  # the rules' `set` (policy/knobs.py)
    return CandidateResult(
        **_common(rank, c, v, plan), notes=list(v.conflicts), deepspeed_config={}, launch={"accelerate": line},
        sharding="fsdp", fsdp={"fsdp_version": s.fsdp_version, "fsdp_sharding": s.effective_fsdp_sharding},
        accelerate_config=acc, framework_keys=keys)


def evaluate_candidates(plan: Plan, model: ModelSpec, rules: Sequence[Rule], backend: str = "auto",
                        evidence: Evidence = Evidence(), feasibility: Feasibility | None = None
                        ) -> tuple[list[Judged], str]:
    """Sweep (micro-batches sized by the reject rules), fire every rule, and rank.

    Args:
        feasibility: the reject-only view of `rules` to size with (made and closed here when None).
    Returns:
        (judged candidates best first, the evaluator's name).
    """
    own = feasibility is None
    feasibility = feasibility or Feasibility(rules, backend)
    evaluator = make_evaluator(rules, backend)
    try:
        judged = judge(sweep(plan, model, feasibility, evidence), rules, evaluator)
    finally:
        evaluator.close()
        if own:
            feasibility.close()
    return judged, evaluator.name


def advise(plan: Plan | str | Path, *, rules_dirs: Iterable[str | Path] = (), measured: Iterable[str | Path] = (),
           backend: str = "auto", rules: Sequence[Rule] | None = None, history: bool = True) -> Advice:
    """Rank every candidate strategy for a plan and explain each verdict.

    Args:
        plan: a Plan or the path of a plan YAML file.
        rules_dirs: extra rule directories (added to the built-in rules and the plan's `rules:`).
        measured: logs of real runs (added to the plan's `measured:`).
        backend: rules backend: 'auto' (durable-rules where available), 'durable' or 'python'.
        rules: an already loaded rule base (overrides rules_dirs and the built-ins).
        history: calibrate from the store of recorded runs (MEMFIT_STORE; engine/store/calibrate.py).
    Returns:
        Advice: candidates ranked, feasible first, best first.
    Raises:
        PlanError, ModelNotFoundError, ModelSpecError, RuleError, LogError, StoreError: each with every
            problem found.
    """
    plan = _as_plan(plan)
    base = Path(plan.base_dir)
    rules_dirs, measured = tuple(rules_dirs), tuple(measured)  # read twice below
    if rules is None:
        with about(_origin(plan.source, "rules", plan.rules, rules_dirs)):
            rules = load_rules([*rules_dirs, *(base / d for d in plan.rules)])
    model = plan_model(plan)
    from ..evidence.match import evidence_for

    with about(_origin(plan.source, "measured", plan.measured, measured)):
        evidence = evidence_for(plan, model, [*measured, *(base / m for m in plan.measured)])
    if history:
        from ..store.calibrate import with_history

        evidence = with_history(evidence, plan, model)
    with Feasibility(rules, backend) as feasibility:
        judged, evaluator_name = evaluate_candidates(plan, model, rules, backend, evidence, feasibility)
        outlook = what_it_would_take(plan, model, judged, rules, feasibility)
    results = [_result(i + 1, j.candidate, j.verdict, plan, model) for i, j in enumerate(judged)]
    best = next((r for r in results if r.feasible), None)
    return Advice(
        memfit_version=VERSION, plan=plan.source, model=model_summary(
            model, plan, best.method if best else judged[0].candidate.strategy.method),
        hardware=hardware_summary(plan), evaluator=evaluator_name, rules_loaded=len(rules),
        measured=list(evidence.notes), summary=_summary(best, results), what_it_would_take=outlook,
        candidates=results)


def _origin(source: str, key: str, from_plan: Sequence[Any], from_caller: Iterable[Any]) -> str:
    """What brought extra files in, for messages: the plan's key, else the caller's option."""
    return f"{source}: {key}" if from_plan else f"--{key}" if list(from_caller) else ""


def _summary(best: CandidateResult | None, results: list[CandidateResult]) -> str:
    if best is None:
        return (f"Nothing fits: all {len(results)} candidates are rejected; the closest is {results[0].key} "
                f"({'; '.join(results[0].rejected_because[:2])}).")
    m = best.memory
    return (f"Recommended: {best.key} (GPU {m.gpu_peak_gib:.1f} GiB per device, host {m.host_peak_gib:.0f} GiB "
            f"per node); {sum(r.feasible for r in results)} of {len(results)} candidates fit the policy.")


def estimate(plan: Plan | str | Path, *, rules_dirs: Iterable[str | Path] = (), backend: str = "auto",
             rules: Sequence[Rule] | None = None) -> EstimateResult:
    """Memory of exactly the strategy the plan pins (no search), and the largest micro-batch and
    sequence on which no reject rule of the rule base fires.

    Args:
        plan: a Plan or the path of a plan YAML file.
        rules_dirs: extra rule directories (added to the built-in rules and the plan's `rules:`).
        backend: rules backend ('auto', 'durable' or 'python').
        rules: an already loaded rule base (overrides rules_dirs and the built-ins).
    Raises:
        PlanError: a training choice is still 'auto' (each one named).
        ModelNotFoundError, ModelSpecError: the model cannot be found or counted.
        RuleError: the rule base does not load.
    """
    plan = _as_plan(plan)
    t = plan.training
    pins = {"method": t.method, "zero_stage": t.zero_stage, "offload_optimizer": t.offload_optimizer,
            "offload_param": t.offload_param, "gradient_checkpointing": t.gradient_checkpointing,
            "micro_batch_size": t.micro_batch_size}
    unpinned = [f"training.{k}: is 'auto'; advise estimate needs every strategy choice pinned" for k, v in pins.items() if v == "auto"]
    if unpinned:
        raise PlanError(unpinned)
    if rules is None:
        with about(_origin(plan.source, "rules", plan.rules, tuple(rules_dirs))):
            rules = load_rules([*rules_dirs, *(Path(plan.base_dir) / d for d in plan.rules)])
    model = plan_model(plan)
    from ..search.fsdp_shapes import pinned_sharding

    try:
        s = Strategy(**pins, **pinned_sharding(plan))
    except ValueError as exc:
        raise PlanError(f"{plan.source}: {exc}") from None
    e = estimate_memory(plan, model, s)
    with Feasibility(rules, backend) as feasibility:
        max_mb, max_seq = _largest(plan, model, s, feasibility)
    ds = deepspeed_estimate(model, s, plan) if s.sharding == "deepspeed" else None
    return EstimateResult(
        plan=plan.source, model=model_summary(model, plan, s.method), strategy=s.model_dump(),
        gpu_peak_gib=round(e.gpu_peak_gib, 3), host_peak_gib=round(e.host_peak_gib, 3), nvme_gib=round(e.nvme_gib, 3),
        gpu_fits=e.gpu_fits, host_fits=e.host_fits, nvme_fits=e.nvme_fits, gpu_capacity_gib=e.gpu_capacity_gib,
        host_capacity_gib=e.host_capacity_gib, gpu_peak_phase=e.gpu_peak_phase, host_peak_phase=e.host_peak_phase,
        breakdown=_breakdown(e), max_micro_batch_size=max_mb, max_seq_len=max_seq,
        deepspeed_estimate=ds.model_dump() if ds else None, gpu_band=_gpu_band(e.gpu_peak_gib, s, plan))


def estimate_strategy(plan: Plan, model: ModelSpec, strategy: Strategy) -> MemoryEstimate:
    """The memory estimate of one strategy on a plan (for tools that bring their own strategy)."""
    return estimate_memory(plan, model, strategy)


def _largest(plan: Plan, model: ModelSpec, s: Strategy, feasibility: Feasibility) -> tuple[int | None, int | None]:
    """(largest micro-batch at the plan's seq_len, longest sequence at the strategy's micro-batch) on
    which no reject rule fires: the sizing the search uses (search.feasibility.largest_passing)."""
    probe = PlanProbe(plan, model, feasibility)
    max_mb = largest_passing(1, 4096, lambda n: probe.passes(s.model_copy(update={"micro_batch_size": n})))

    def seq_passes(n: int) -> bool:
        p = plan.model_copy(update={"training": plan.training.model_copy(update={"seq_len": n})})
        return PlanProbe(p, model, feasibility).passes(s)

    return max_mb, largest_passing(1, 1 << 21, seq_passes)
