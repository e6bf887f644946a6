"""Recorded runs -> the Evidence that logs give (engine/evidence/match.py), so a run measured once
calibrates every later plan of the same model through the same path as `--measured run.log`.

- A record matches a plan when its model has the same architecture fingerprint (record.model_fingerprint).
- Its ratio is measured GPU peak / memfit's estimate of the record's own plan and strategy, re-estimated
  with this memfit (so an improved memory model is not judged by an old estimate).
- Evidence holds one calibrated family (method, ZeRO stage, offloads): the family the plan pins if a
  record has it, else the family of the newest record. Within the family the largest ratio wins (the
  worst underestimate: the safe side). Which records applied and which did not is said in the notes.
- An OOM record rejects, like a logged OOM, only on a GPU of the same capacity as the plan's.
- Logs given with `--measured` win over the store: they are about this very plan.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Optional

from ..core.errors import PlanError, StoreError
from ..evidence.match import Evidence, OomEvidence, family_of
from ..memory.estimate import estimate_memory
from ..plan.schema import Plan
from ..plan.load import plan_from_dict
from ..plan.strategy import Strategy
from .record import model_fingerprint
from .sql import StoredRecord

if TYPE_CHECKING:
    from ..model.spec import ModelSpec

# Records read per lookup (newest first): enough for any team's history of one model.
LOOKUP_LIMIT = 500
# Same GPU for an OOM record: capacities within 2 % (an "80GB" card reads 79.2-80 GiB across drivers).
SAME_GPU = 0.02


def cite(item: StoredRecord) -> str:
    """How explanations name a stored record: "store record #ID (date, device, strategy)"."""
    r = item.record
    return f"store record #{item.id} ({r.date[:10]}, {r.device_name or 'unknown GPU'}, {r.strategy_key})"


def _measured(item: StoredRecord, model: ModelSpec) -> Optional[tuple[float, float, Strategy, Plan]]:
    """(measured GPU peak, ratio, strategy, the record's plan) of a usable record; None otherwise."""
    r = item.record
    try:
        plan = plan_from_dict(r.plan, f"store record #{item.id}")
        strategy = Strategy(**r.strategy)
    except (PlanError, ValueError):
        return None  # a record whose plan this memfit no longer reads calibrates nothing
    est = estimate_memory(plan, model, strategy).gpu_peak_gib
    peak = r.gpu_peak_gib
    # A missing peak gives ratio 0, and a ratio-0 record is never used: 0.0 stands in for it.
    return (peak or 0.0, peak / est if peak and est else 0.0, strategy, plan) if r.status == "ok" else (0.0, 0.0, strategy, plan)


def _pinned_family(plan: Plan) -> Optional[tuple[object, ...]]:
    t = plan.training
    pins = (t.method, t.zero_stage, t.offload_optimizer, t.offload_param)
    return None if "auto" in pins else pins


def history_evidence(plan: Plan, model: ModelSpec, stored: list[StoredRecord], where: str) -> Evidence:
    """The Evidence a plan gets from stored records of its model (newest first)."""
    usable, ooms, notes = [], [], [f"store: {len(stored)} recorded run(s) of this model in {where}"]
    for item in stored:
        found = _measured(item, model)
        if found is None:
            notes.append(f"{cite(item)} not used: its plan or strategy no longer loads")
        elif item.record.status == "ok" and found[1]:
            usable.append((item, *found))
        elif item.record.status == "oom" and abs(found[3].hardware.gpu_memory_gib / plan.hardware.gpu_memory_gib - 1) <= SAME_GPU:
            e = estimate_memory(found[3], model, found[2])
            kind = "host_oom" if "Killed" in (item.record.error or "") else "gpu_oom"
            ooms.append(OomEvidence(kind, cite(item), found[2], e.gpu_peak_gib, e.host_peak_gib))
    if not usable:
        return Evidence(ooms=tuple(ooms), present=bool(ooms), notes=tuple(notes))
    families = [family_of(u[3]) for u in usable]
    want = _pinned_family(plan)
    family = want if want in families else families[0]
    chosen = [u for u, f in zip(usable, families) if f == family]
    item, peak, ratio, strategy, _ = max(chosen, key=lambda u: u[2])
    notes.append(f"{cite(item)}: measured GPU peak {peak:.2f} GiB vs {peak / ratio:.2f} GiB estimated: ratio "
                 f"{ratio:.2f} applied to {strategy.method} ZeRO-{strategy.zero_stage} candidates "
                 f"(largest of {len(chosen)} record(s) of that family)")
    others = len(usable) - len(chosen)
    if others:
        notes.append(f"store: {others} record(s) of other strategy families not applied (one family is calibrated "
                     "at a time: pin method, zero_stage and offloads in the plan to choose it)")
    return Evidence(ooms=tuple(ooms), family=family, ratio=ratio, present=True, notes=tuple(notes),
                    ratio_source=cite(item))


def merge(logged: Evidence, history: Evidence) -> Evidence:
    """Logs first: a --measured log's ratio stands; the store adds its OOMs and notes."""
    if logged.ratio:
        notes = (*logged.notes, *history.notes, "store: calibration not applied: a --measured log calibrates this plan")
        return replace(logged, ooms=(*logged.ooms, *history.ooms), notes=notes)
    return replace(logged, ooms=(*logged.ooms, *history.ooms), family=history.family, ratio=history.ratio,
                   present=logged.present or history.present, notes=(*logged.notes, *history.notes),
                   ratio_source=history.ratio_source)


def with_history(evidence: Evidence, plan: Plan, model: ModelSpec, url: Optional[str] = None) -> Evidence:
    """Evidence from logs, completed by the store's records of the same model.

    Cheap when nothing was recorded: no store file means no database is opened or created.

    Args:
        evidence: from engine/evidence/match.py evidence_for (logs).
        plan: the plan being advised.
        model: its ModelSpec.
        url: the store (default: MEMFIT_STORE, else the user's data directory).
    Returns:
        The merged Evidence.
        A store that cannot be read (a team database that is down) does not stop the advice: the
        notes say it was not read.
    """
    from .open import open_store

    try:
        store = open_store(url, create=False)
        if store is None:
            return evidence
        with store:
            stored = store.records(model_key=model_fingerprint(model), limit=LOOKUP_LIMIT)
            where = store.url
    except StoreError as exc:
        return replace(evidence, notes=(*evidence.notes, f"store not read ({'; '.join(exc.problems)}): "
                                        "the advice is not calibrated by recorded runs"))
    return merge(evidence, history_evidence(plan, model, stored, where)) if stored else evidence
