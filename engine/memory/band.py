"""The error band of a GPU estimate: the calibration residuals of its family (band.json).

band.json is computed by bench/band.py from the in-sample calibration cases: per family (method x
sharding x offload) the 10th and 90th percentile of measured / estimated GPU peak, a thin family
pooled into its method, a thin method into all cases. docs/explanation/memory-model.md explains it.
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any, NamedTuple

from ..plan.strategy import Strategy


class Band(NamedTuple):
    """Ratios to multiply an estimate by: low and high quantile, the cases behind them, their pool."""

    low: float
    high: float
    n: int
    pool: str


@lru_cache(maxsize=1)
def band_table() -> dict[str, Any]:
    """band.json, read once from the installed package."""
    text = resources.files("memfit.engine.memory").joinpath("band.json").read_text(encoding="utf-8")
    table: dict[str, Any] = json.loads(text)
    return table


def strategy_family(s: Strategy) -> str:
    """The calibration family of a strategy, spelled as bench/accuracy.py family() spells a plan's.

    Args:
        s: the strategy.

    Returns:
        e.g. "qlora/z0", "lora/z3/offload", "full/fsdp".
    """
    stage = "fsdp" if s.sharding == "fsdp" else {0: "z0", 1: "z12", 2: "z12", 3: "z3"}[s.zero_stage]
    offload = "offload" if {s.offload_optimizer, s.offload_param} & {"cpu", "nvme"} else ""
    return "/".join(x for x in (s.method, stage, offload) if x)


def band_for(s: Strategy) -> Band:
    """The residual band of a strategy's family; a family without cases falls back to its method,
    a method without cases to all cases.

    Args:
        s: the strategy.

    Returns:
        Band(low_ratio, high_ratio, n, pool).
    """
    table = band_table()
    entry = table["families"].get(strategy_family(s)) or table["methods"].get(s.method) or table["all"]
    return Band(entry["low"], entry["high"], entry["n"], entry["pool"])
