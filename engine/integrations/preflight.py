"""The training-run side of memfit, independent of any trainer: a preflight verdict for the run's own
plan (does it fit its headroom, calibrated by the store like `advise`), and the measurement record the
run leaves in the store at its end."""
from __future__ import annotations

from pathlib import Path

from dataclasses import dataclass
from typing import Any, Optional

from ..evidence.match import Evidence
from ..memory.estimate import MemoryEstimate, estimate_memory
from ..model.spec import ModelSpec, resolve_model
from ..plan.schema import Plan
from ..plan.load import plan_from_dict
from ..plan.strategy import Strategy
from ..policy.rules import load_rules
from ..search.fsdp_shapes import pinned_sharding
from ..search.judge import strategy_verdict
from ..store.calibrate import with_history
from ..store.ingest import pinned_strategy
from ..store.make import estimate_dict, plan_dict, versions
from ..store.open import open_store
from ..store.record import MeasurementRecord, model_fingerprint


@dataclass(frozen=True)
class Preflight:
    """The verdict on a run before its first step."""

    fits: bool
    message: str
    plan: Plan
    model: ModelSpec
    strategy: Strategy
    estimate: MemoryEstimate
    notes: tuple[str, ...]


def _passes(plan: Plan, model: ModelSpec, s: Strategy, ev: Evidence, gpu_known: bool) -> bool:
    """The rule base's verdict (user rules of the plan included). Without a known GPU, reject rules
    that read GPU facts are left out: the GPU capacity is a placeholder then."""
    rules = load_rules([Path(plan.base_dir) / d for d in plan.rules])
    if not gpu_known:
        rules = [r for r in rules if not any(f.startswith("gpu_") for f in r.facts_used)]
    return not strategy_verdict(plan, model, s, rules, evidence=ev)


def _verdict_line(plan: Plan, model: ModelSpec, s: Strategy, e: MemoryEstimate, ev: Evidence,
                  gpu_known: bool) -> tuple[bool, str]:
    pol = plan.policy
    scale, headroom = ev.calibration(s, pol.gpu_headroom)
    gpu = e.gpu_peak_gib * scale
    host_budget = e.host_capacity_gib * (1 - pol.host_headroom)
    cal = f" (estimate x {scale:.2f}, calibrated by {ev.ratio_source})" if scale != 1.0 else ""
    parts = []
    if gpu_known:
        parts.append(f"GPU {gpu:.2f} GiB per device{cal} against {e.gpu_capacity_gib * (1 - headroom):.2f} GiB "
                     f"({e.gpu_capacity_gib:.2f} GiB less {headroom:.0%} headroom)")
    fits = _passes(plan, model, s, ev, gpu_known)
    parts.append(f"host {e.host_peak_gib:.2f} GiB per node against {host_budget:.2f} GiB "
                 f"({e.host_capacity_gib:.2f} GiB less {pol.host_headroom:.0%} headroom)")
    verdict = "fits" if fits else "does NOT fit"
    return fits, f"memfit preflight: {s.key} {verdict}: " + "; ".join(parts)


def _alternative(plan: Plan) -> str:
    """What memfit would run instead (the same plan with every strategy choice open)."""
    from ..advice.advise import advise

    t = plan.training.model_copy(update={k: "auto" for k in ("method", "zero_stage", "offload_optimizer",
                                                             "offload_param", "gradient_checkpointing",
                                                             "micro_batch_size")})
    best = advise(plan.model_copy(update={"training": t})).best
    return f"; memfit would run {best.key} instead (advise on this plan for the full table)" if best else \
        "; no strategy memfit knows fits this hardware (advise on this plan for what it would take)"


def preflight(plan_data: dict[str, Any], gpu_known: bool = True, notes: tuple[str, ...] = (),
              history: bool = True) -> Preflight:
    """Estimate a run's own plan and judge it against its headroom.

    Args:
        plan_data: the run's plan, every strategy choice pinned (integrations/trainer_plan.py).
        gpu_known: False when the GPU capacity is a placeholder (no GPU): only host memory is judged.
        notes: what was read or assumed while building the plan.
        history: calibrate from the store of recorded runs.
    Returns:
        Preflight with the verdict and a message naming the numbers (and an alternative when it does not fit).
    Raises:
        PlanError, StoreError: the plan is invalid, or the store unreadable.
    """
    plan = plan_from_dict(plan_data, "memfit callback plan")
    model = resolve_model(plan.model, plan.base_dir)
    # the plan's sharding (fsdp1 / fsdp2 from an FSDP run) sets the FSDP fields of the strategy
    s = Strategy(**{**pinned_strategy(plan, "memfit callback plan").model_dump(), **pinned_sharding(plan)})
    e = estimate_memory(plan, model, s)
    ev = with_history(Evidence(), plan, model) if history else Evidence()
    fits, message = _verdict_line(plan, model, s, e, ev, gpu_known)
    if not fits:
        message += _alternative(plan)
    return Preflight(fits, message, plan, model, s, e, tuple(notes) + ev.notes)


def record_run(pre: Preflight, peaks: dict[str, Optional[int]], *, status: str = "ok", error: Optional[str] = None,
               case: str = "", device: tuple[Optional[str], Optional[int]] = (None, None),
               step_seconds: Optional[float] = None, notes: tuple[str, ...] = (), run_id: str = "",
               url: Optional[str] = None) -> tuple[int, MeasurementRecord]:
    """Write the run's measurement record into the store (one transaction).

    With a run_id, each call replaces the run's previous record: a live run checkpoints its record
    (status "incomplete") so that a kill leaves the last one behind, and its end replaces it.

    Returns:
        (the record's id in the store, the record).
    Raises:
        StoreError: the store cannot be opened or written.
    """
    rec = MeasurementRecord(
        case=case, status=status, plan=plan_dict(pre.plan, pre.model), strategy_key=pre.strategy.key,
        strategy=pre.strategy.model_dump(), model_key=model_fingerprint(pre.model), error=error,
        estimate=estimate_dict(pre.plan, pre.model, pre.strategy), device_name=device[0], gpu_memory_bytes=device[1],
        step_seconds=step_seconds, versions=versions(), source="callback", notes=[*pre.notes, *notes],
        run_id=run_id, **peaks)
    with open_store(url) as store:
        rid, _ = store.add(rec)
    return rid, rec
