"""Files -> measurement records: record JSON (one object, a list, or JSON lines as `advise history
--export` writes), bench/gpu_calibration.py results (bench/measured/*.json), and training logs (the
parsers behind `advise facts`), the last with the plan of the run they came from."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from ..core.errors import PlanError, StoreError
from ..model.spec import resolve_model
from ..plan.schema import Plan
from ..plan.load import plan_from_dict
from ..plan.strategy import Strategy
from .record import MeasurementRecord, model_fingerprint, record_from_json

_PINS = ("method", "zero_stage", "offload_optimizer", "offload_param", "gradient_checkpointing", "micro_batch_size")


def pinned_strategy(plan: Plan, where: str) -> Strategy:
    """The strategy a plan pins completely.

    Raises:
        StoreError: naming each choice still 'auto'.
    """
    t = plan.training
    loose = [f"{where}: training.{k}: is 'auto'; a measured run's plan must pin it" for k in _PINS if getattr(t, k) == "auto"]
    if loose:
        raise StoreError(loose)
    return Strategy(**{k: getattr(t, k) for k in _PINS})


def _finish(data: dict[str, Any], where: str) -> MeasurementRecord:
    """Fill model_key (and strategy fields) from the plan, then check the record."""
    rec = record_from_json(data, where)
    try:
        key = Strategy(**rec.strategy).key
    except ValueError as exc:
        raise StoreError(f"{where}: strategy: not a strategy memfit knows ({str(exc).splitlines()[0]})") from None
    if key != rec.strategy_key:
        raise StoreError(f"{where}: strategy_key: '{rec.strategy_key}' does not match strategy (whose key is '{key}')")
    if rec.model_key:
        return rec
    try:
        plan = plan_from_dict(rec.plan, f"{where}: plan")
        model = resolve_model(plan.model, plan.base_dir)
    except PlanError as exc:
        raise StoreError(exc.problems) from None
    return rec.model_copy(update={"model_key": model_fingerprint(model)})


def _bench_rows(data: dict[str, Any], path: Path) -> list[MeasurementRecord]:
    env = {k: str(data[k]) for k in ("torch", "transformers", "python") if data.get(k)}
    out = []
    for n, row in enumerate(data.get("rows", []), 1):
        if not row.get("plan") or row.get("status") == "skipped":
            continue  # a case that never ran measured nothing
        where = f"{path}: rows[{n}]"
        plan = plan_from_dict(row["plan"], where)
        s = pinned_strategy(plan, where)
        est = row.get("estimate") if isinstance(row.get("estimate"), dict) and "gpu_peak_gib" in row["estimate"] else None
        fields = {k: row.get(k) for k in ("status", "max_memory_allocated", "max_memory_reserved", "nvml_used_bytes",
                                          "host_rss_bytes", "step_seconds", "error")}
        out.append(_finish({**fields, "case": row.get("case", ""), "plan": row["plan"], "strategy_key": s.key,
                            "strategy": s.model_dump(), "estimate": est, "date": data.get("date") or "",
                            "device_name": data.get("device_name"), "gpu_memory_bytes": data.get("gpu_memory_bytes"),
                            "versions": env, "source": f"bench:{path.name}"}, where))
    return out


def _json_records(text: str, path: Path) -> Optional[list[MeasurementRecord]]:
    """Records of a JSON file or JSON lines; None when the text is not JSON at all (a log)."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict) and "rows" in data:
        return _bench_rows(data, path)
    if isinstance(data, dict):
        return [_finish(data, str(path))]
    if isinstance(data, list):
        return [_finish(d, f"{path}: [{i}]") for i, d in enumerate(data)]
    lines = [(n, ln) for n, ln in enumerate(text.splitlines(), 1) if ln.strip()]
    if not lines or not lines[0][1].lstrip().startswith("{"):
        return None
    out, problems = [], []
    for n, line in lines:  # every bad line is reported at once
        try:
            out.append(_finish(json.loads(line), f"{path}:{n}"))
        except ValueError as exc:
            problems.append(f"{path}:{n}: not a JSON record ({exc})")
        except StoreError as exc:
            problems.extend(exc.problems)
    if problems:
        raise StoreError(problems)
    return out


def records_from_file(path: str | Path, plan: Optional[Plan] = None) -> list[MeasurementRecord]:
    """The measurement records a file holds.

    Args:
        path: record JSON / JSON lines, a bench results file, or a training log (plain or .gz).
        plan: the plan of the run a log came from (required for logs).
    Returns:
        The records (a log gives exactly one).
    Raises:
        StoreError: unreadable file, invalid record, a log without a plan or with an unknown strategy.
        LogError: a log that cannot be read.
    """
    p = Path(path)
    if p.suffix != ".gz":
        try:
            text = p.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise StoreError(f"{p}: cannot read ({exc.strerror or exc})") from None
        found = _json_records(text, p) if text.lstrip()[:1] in ("{", "[") else None
        if found is not None:
            return found
    if plan is None:
        raise StoreError(f"{p}: a log needs the plan of the run it came from: advise record {p} --plan PLAN")
    from .from_log import record_from_log

    return [record_from_log(p, plan)]
