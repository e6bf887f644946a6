"""Measured evidence (logs of real runs) matched to a plan: what the rules see as measured facts."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from .sweep import Evidence


def evidence_for(plan, model, logs: Iterable[str | Path]) -> Evidence:
    """Parse the logs and match their evidence to the plan's pinned strategy (placeholder until the
    log parsers land: no logs, no evidence)."""
    logs = list(logs)
    if not logs:
        return Evidence()
    raise NotImplementedError("measured logs are not wired yet")
