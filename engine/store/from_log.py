"""A training log + its plan -> one measurement record (the parsers behind `advise facts`)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from ..core.errors import StoreError
from ..core.units import GIB
from ..evidence.logs import parse_log
from ..evidence.record import LogRecord
from ..evidence.match import infer_run, run_strategy
from ..model.spec import resolve_model
from ..plan.schema import Plan
from .make import estimate_dict, plan_dict, versions
from .record import MeasurementRecord, model_fingerprint


def _peak(facts: Iterable[LogRecord], *fields: str) -> Optional[int]:
    values = [getattr(f, k) for f in facts for k in fields if getattr(f, k) is not None]
    return int(round(max(values) * GIB)) if values else None


def record_from_log(path: Path, plan: Plan) -> MeasurementRecord:
    """Read one log of a run of `plan`.

    Peaks, in bytes: allocated = torch max allocated (or allocated at an OOM); reserved = torch/DeepSpeed
    max reserved (or reserved at an OOM); NVML-like = nvidia-smi's memory.used peak or an OOM message's
    "this process has S memory in use"; host = the kernel's anon-rss of a killed process, or DeepSpeed's
    "CPU Virtual Memory used" (the whole machine's use: an upper bound for the run, said in notes).

    Raises:
        StoreError: the run's strategy cannot be known from the log and the plan's pins.
        LogError: the log is unreadable.
    """
    facts = parse_log(path)
    strategy = run_strategy(plan, infer_run(path))
    if strategy is None:
        raise StoreError(f"{path}: the run's strategy is unknown: pin zero_stage, offload_optimizer, offload_param "
                         f"and micro_batch_size in {plan.source}, or give a log with DeepSpeed's config print")
    model = resolve_model(plan.model, plan.base_dir)
    ooms = [f for f in facts if f.kind in ("gpu_oom", "host_oom")]
    notes = [f"{len(facts)} memory fact(s) read from {path.name}"]
    host = _peak(facts, "anon_rss_gib")
    if host is None and (host := _peak(facts, "host_used_gib")) is not None:
        notes.append("host peak is DeepSpeed's 'CPU Virtual Memory used' (the whole machine's use)")
    return MeasurementRecord(
        case=path.name, status="oom" if ooms else "ok", plan=plan_dict(plan, model), strategy_key=strategy.key,
        strategy=strategy.model_dump(), model_key=model_fingerprint(model),
        max_memory_allocated=_peak(facts, "max_allocated_gib", "allocated_gib"),
        max_memory_reserved=_peak(facts, "max_reserved_gib", "reserved_gib"),
        nvml_used_bytes=_peak(facts, "gpu_peak_gib", "in_use_gib"), host_rss_bytes=host,
        error=ooms[0].line if ooms else None, estimate=estimate_dict(plan, model, strategy),
        gpu_memory_bytes=int(plan.hardware.gpu_memory_gib * GIB), versions=versions(),
        source=f"log:{path}", notes=notes)
