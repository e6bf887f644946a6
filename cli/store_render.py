"""Plain-text rendering of the store of measured runs (`advise history`, `advise record`)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Sequence

# Types by their source name `engine.`: mypy cannot follow the editable install's `memfit.engine`
# (it reads as Any there). Annotations only, never imported at run time.
if TYPE_CHECKING:
    from engine.store.record import MeasurementRecord
    from engine.store.sql import StoredRecord


def _gib(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def history_rows(stored: Sequence[StoredRecord]) -> list[dict[str, Any]]:
    """One JSON-ready row per stored record: the id, when, and the record itself."""
    return [{"id": s.id, "added": s.created_at, "record": s.record.model_dump(mode="json")} for s in stored]


def history_text(stored: Sequence[StoredRecord], url: str) -> str:
    """A table of stored records, newest first, with measured and estimated GPU peaks in GiB."""
    from .render import table

    if not stored:
        return f"no recorded runs in {url} (add some: advise record FILE... --plan PLAN, or the Trainer callback)"
    rows = []
    for s in stored:
        r = s.record
        est = (r.estimate or {}).get("gpu_peak_gib")
        model = r.plan.get("model")
        name = model if isinstance(model, str) else (model or {}).get("_name_or_path") or (model or {}).get("model_type", "?")
        rows.append([str(s.id), r.date[:19], r.status, str(name)[:40], r.strategy_key, _gib(r.gpu_peak_gib), _gib(est),
                     _gib(r.host_peak_gib), r.device_name or "-", r.source[:40]])
    head = ["id", "date", "status", "model", "strategy", "GPU peak", "estimate", "host RSS", "device", "source"]
    return f"{len(stored)} recorded run(s) in {url} (GiB; GPU peak: NVML, else torch reserved/allocated)\n" + table(head, rows)


def recorded_text(results: Sequence[tuple[str, MeasurementRecord, tuple[int, bool]]], url: str) -> str:
    lines = []
    for path, rec, (rid, new) in results:
        state = "added" if new else "already stored"
        lines.append(f"{state:14s} #{rid}  {rec.status:6s} {rec.strategy_key}  GPU peak {_gib(rec.gpu_peak_gib)} GiB  ({path})")
    return "\n".join(lines + [f"store: {url}"])
