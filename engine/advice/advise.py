"""`advise` and `estimate`: the library calls behind the CLI.

plan -> model facts -> candidate sweep (estimates + facts) -> rule firings -> verdicts -> ranking ->
typed Advice (with DeepSpeed JSON and launch lines per candidate).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from ..search.candidates import largest_fitting, micro_batch_limit
from ..deepspeed.parity import deepspeed_estimate
from ..core.errors import PlanError
from ..policy.oracle import make_evaluator
from ..policy.vocabulary import to_message
from ..memory.estimate import estimate_memory
from ..model.spec import ModelSpec, resolve_model
from ..plan.schema import Plan, load_plan
from ..policy.verdicts import rank_key, verdict
from .results import (Advice, CandidateResult, EstimateResult, Explanation, HardwareSummary, MemoryReport,
                      ModelSummary)
from ..policy.rules import Rule, load_rules
from ..plan.strategy import Strategy
from ..evidence.match import Evidence
from ..search.sweep import Candidate, sweep, within_budget
from ..core.units import describe_size

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
        num_layers=model.num_layers, hidden_size=model.hidden_size, vocab_size=model.vocab_size)


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


def _memory_report(c: Candidate) -> MemoryReport:
    e = c.estimate
    return MemoryReport(gpu_peak_gib=round(e.gpu_peak_gib, 3), gpu_peak_phase=e.gpu_peak_phase,
                        host_peak_gib=round(e.host_peak_gib, 3), host_peak_phase=e.host_peak_phase,
                        nvme_gib=round(e.nvme_gib, 3), gpu_fits=e.gpu_fits, host_fits=e.host_fits,
                        breakdown={"gpu": {k: round(v, 3) for k, v in e.gpu.as_dict().items()},
                                   "host": {k: round(v, 3) for k, v in e.host.as_dict().items()}})


def _ds_config(strategy: Strategy, plan: Plan, model: ModelSpec) -> tuple[dict, list[str]]:
    from ..deepspeed.config import config_notes, deepspeed_config

    try:
        cfg = deepspeed_config(strategy, plan, model, pin_memory=strategy.pin_memory,
                               gather_16bit_on_save=strategy.gather_16bit_on_save)
    except ValueError as exc:
        return {}, [f"no DeepSpeed config: {exc}"]
    return cfg, config_notes(strategy, plan)


def _result(rank: int, c: Candidate, v, plan: Plan, model: ModelSpec) -> CandidateResult:
    from ..deepspeed.launch import launch_commands

    s = c.strategy
    cfg, notes = _ds_config(s, plan, model)
    explanation = [Explanation(rule=f.rule, topic=f.topic, effect=f.effect, score=f.score, message=f.message,
                               advice=f.advice, source=f.source) for f in v.firings]
    return CandidateResult(
        rank=rank, key=s.key, feasible=not v.rejected, method=s.method, zero_stage=s.zero_stage,
        offload_optimizer=s.offload_optimizer, offload_param=s.offload_param,
        gradient_checkpointing=s.gradient_checkpointing, micro_batch_size=s.micro_batch_size,
        gradient_accumulation_steps=c.estimate.gradient_accumulation_steps, pin_memory=s.pin_memory,
        gather_16bit_on_save=s.gather_16bit_on_save, score=v.score, memory=_memory_report(c),
        rejected_because=[f.message for f in v.firings if f.effect == "reject"],
        explanation=explanation, settings=dict(v.settings), notes=notes + list(v.conflicts),
        deepspeed_config=cfg, launch=launch_commands(plan, s) if cfg else {})


def evaluate_candidates(plan: Plan, model: ModelSpec, rules: Sequence[Rule], backend: str = "auto",
                        evidence: Evidence = Evidence()):
    """Sweep, fire rules, and rank: [(candidate, verdict)] best first, plus the evaluator's name."""
    candidates = sweep(plan, model, evidence)
    by_id = {r.id: r for r in rules}
    evaluator = make_evaluator(rules, backend)
    try:
        scored = []
        for c in candidates:
            facts = to_message(c.facts)
            v = verdict(evaluator.fired(facts), by_id, facts)
            scored.append((rank_key(v.rejected, v.score, facts, c.strategy.key), c, v))
    finally:
        evaluator.close()
    scored.sort(key=lambda t: t[0])
    return [(c, v) for _, c, v in scored], evaluator.name


def advise(plan: Plan | str | Path, *, rules_dirs: Iterable[str | Path] = (), measured: Iterable[str | Path] = (),
           backend: str = "auto", rules: Sequence[Rule] | None = None) -> Advice:
    """Rank every candidate strategy for a plan and explain each verdict.

    Args:
        plan: a Plan or the path of a plan YAML file.
        rules_dirs: extra rule directories (added to the built-in rules and the plan's `rules:`).
        measured: logs of real runs (added to the plan's `measured:`).
        backend: rules backend: 'auto' (durable-rules where available), 'durable' or 'python'.
        rules: an already loaded rule base (overrides rules_dirs and the built-ins).
    Returns:
        Advice: candidates ranked, feasible first, best first.
    Raises:
        PlanError, ModelNotFoundError, RuleError, LogError: each with every problem found.
    """
    plan = _as_plan(plan)
    base = Path(plan.base_dir)
    if rules is None:
        rules = load_rules([*rules_dirs, *(base / d for d in plan.rules)])
    model = resolve_model(plan.model, plan.base_dir)
    from ..evidence.match import evidence_for

    evidence = evidence_for(plan, model, [*measured, *(base / m for m in plan.measured)])
    judged, evaluator_name = evaluate_candidates(plan, model, rules, backend, evidence)
    results = [_result(i + 1, c, v, plan, model) for i, (c, v) in enumerate(judged)]
    best = next((r for r in results if r.feasible), None)
    return Advice(
        memfit_version=VERSION, plan=plan.source, model=model_summary(
            model, plan, best.method if best else judged[0][0].strategy.method),
        hardware=hardware_summary(plan), evaluator=evaluator_name, rules_loaded=len(rules),
        measured=list(evidence.notes),
        summary=_summary(best, results), what_it_would_take=what_it_would_take(plan, model, judged),
        candidates=results)


def _summary(best: CandidateResult | None, results: list[CandidateResult]) -> str:
    if best is None:
        return (f"Nothing fits: all {len(results)} candidates are rejected; the closest is {results[0].key} "
                f"({'; '.join(results[0].rejected_because[:2])}).")
    m = best.memory
    return (f"Recommended: {best.key} (GPU {m.gpu_peak_gib:.1f} GiB per device, host {m.host_peak_gib:.0f} GiB "
            f"per node); {sum(r.feasible for r in results)} of {len(results)} candidates fit the policy.")


def what_it_would_take(plan: Plan, model: ModelSpec, judged) -> list[str]:
    """For each method with no feasible candidate: what the closest candidate needs, and which larger
    hardware (more nodes, NVMe) would make one fit the memory budget. When memory is not what rejects
    it (a precision or compatibility rule), say that instead of proposing hardware."""
    lines = []
    methods = dict.fromkeys(c.strategy.method for c, _ in judged)
    for method in methods:
        ranked = [(c, v) for c, v in judged if c.strategy.method == method]
        if any(not v.rejected for _, v in ranked):
            continue
        c, v = ranked[0]
        if within_budget(plan, c.estimate):
            reasons = "; ".join(dict.fromkeys(f.message for f in v.firings if f.effect == "reject"))
            lines.append(f"{method}: nothing fits, and not for lack of memory: {reasons}.")
            continue
        e, pol = c.estimate, plan.policy
        need_gpu = e.gpu_peak_gib / (1 - pol.gpu_headroom)
        need_host = e.host_peak_gib / (1 - pol.host_headroom)
        line = (f"{method}: nothing fits. Closest: {c.strategy.key}, GPU {e.gpu_peak_gib:.1f} GiB (needs "
                f"{need_gpu:.1f} GiB with headroom, have {e.gpu_capacity_gib:.1f}), host {e.host_peak_gib:.0f} GiB "
                f"per node (needs {need_host:.0f} GiB with headroom, have {e.host_capacity_gib:.0f}).")
        lines.append(line + _bigger_hardware(plan, model, method))
    return lines


def _bigger_hardware(plan: Plan, model: ModelSpec, method: str) -> str:
    from ..search.candidates import strategy_shapes
    from ..search.sweep import size_micro_batch

    def first_fit(p: Plan, min_stage: int = 0) -> Strategy | None:
        for shape in strategy_shapes(p):
            if shape.method != method or shape.zero_stage < min_stage:
                continue
            s = size_micro_batch(p, model, shape)
            if within_budget(p, estimate_memory(p, model, s)):
                return s
        return None

    training = plan.training.model_copy(update={"method": method})
    options = []
    for nodes in (2, 4, 8, 16):
        p = plan.model_copy(update={"hardware": plan.hardware.model_copy(update={"nodes": plan.hardware.nodes * nodes}),
                                    "training": training})
        s = first_fit(p)
        if s:
            options.append(f"{plan.hardware.nodes * nodes} nodes of this kind ({s.key})")
            break
    hw = plan.hardware.model_copy(update={"nvme": 100_000, "nvme_path": plan.hardware.nvme_path or "/local_nvme"})
    p = plan.model_copy(update={"hardware": hw, "training": training.model_copy(update={"offload_optimizer": "nvme"})})
    s = first_fit(p, min_stage=2)  # ZeRO-Offload needs a ZeRO stage to partition
    if s:
        nvme = estimate_memory(p, model, s).nvme_gib
        options.append(f"NVMe offload with at least {nvme:.0f} GiB free NVMe per node ({s.key})")
    return (" It would take: " + "; or ".join(options) + ".") if options else " No larger setup tried (up to 16x nodes, NVMe) fits."


def estimate(plan: Plan | str | Path) -> EstimateResult:
    """Memory of exactly the strategy the plan pins (no search).

    Raises:
        PlanError: a training choice is still 'auto' (each one named).
    """
    plan = _as_plan(plan)
    t = plan.training
    pins = {"method": t.method, "zero_stage": t.zero_stage, "offload_optimizer": t.offload_optimizer,
            "offload_param": t.offload_param, "gradient_checkpointing": t.gradient_checkpointing,
            "micro_batch_size": t.micro_batch_size}
    unpinned = [f"training.{k}: is 'auto'; advise estimate needs every strategy choice pinned" for k, v in pins.items() if v == "auto"]
    if unpinned:
        raise PlanError(unpinned)
    model = resolve_model(plan.model, plan.base_dir)
    s = Strategy(**pins)
    e = estimate_memory(plan, model, s)
    ds = deepspeed_estimate(model, s, plan)
    return EstimateResult(
        plan=plan.source, model=model_summary(model, plan, s.method), strategy=s.model_dump(),
        gpu_peak_gib=round(e.gpu_peak_gib, 3), host_peak_gib=round(e.host_peak_gib, 3), nvme_gib=round(e.nvme_gib, 3),
        gpu_fits=e.gpu_fits, host_fits=e.host_fits, nvme_fits=e.nvme_fits, gpu_capacity_gib=e.gpu_capacity_gib,
        host_capacity_gib=e.host_capacity_gib, gpu_peak_phase=e.gpu_peak_phase, host_peak_phase=e.host_peak_phase,
        breakdown={"gpu": {k: round(v, 3) for k, v in e.gpu.as_dict().items()},
                   "host": {k: round(v, 3) for k, v in e.host.as_dict().items()}},
        max_micro_batch_size=_largest(plan, model, s, "micro_batch_size", 1, 4096),
        max_seq_len=_largest(plan, model, s, "seq_len", 1, 1 << 21),
        deepspeed_estimate=ds.model_dump() if ds else None)


def estimate_strategy(plan: Plan, model: ModelSpec, strategy: Strategy):
    """The memory estimate of one strategy on a plan (for tools that bring their own strategy)."""
    return estimate_memory(plan, model, strategy)


def _largest(plan: Plan, model: ModelSpec, s: Strategy, what: str, lo: int, hi: int) -> int | None:
    budget = plan.hardware.gpu_memory_gib * (1 - plan.policy.gpu_headroom)

    def fits(n: int) -> bool:
        if what == "micro_batch_size":
            return estimate_memory(plan, model, s.model_copy(update={"micro_batch_size": n})).gpu_peak_gib <= budget
        p = plan.model_copy(update={"training": plan.training.model_copy(update={"seq_len": n})})
        return estimate_memory(p, model, s).gpu_peak_gib <= budget

    return largest_fitting(lo, hi, fits)
