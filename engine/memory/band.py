"""The calibrated centre and the error band of a GPU estimate: out-of-sample residuals (band.json).

band.json is computed by bench/band.py from the published runs of the held-out sets (runs memfit
was not fitted on): per sharding group the source-weighted median of measured / modelled peak (the
centre, which scales the modelled terms), then, around the scaled estimate, per family (method x sharding x offload) the split-conformal quantiles of measured /
estimated GPU peak at each level (0.8, 0.9), a family too thin for the level pooled into its sharding
group (single GPU, ZeRO, FSDP, each with or without offload), a thin group into its kind (ZeRO-3 / FSDP
offload, or resident), a thin kind into all cases. docs/explanation/memory-model.md explains it.
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any, NamedTuple

from ..plan.strategy import Strategy


class Band(NamedTuple):
    """Ratios to multiply an estimate by: low and high quantile, the cases behind them, their pool, the level."""

    low: float
    high: float
    n: int
    pool: str
    level: float


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
    offload = "offload" if _offloads(s) else ""
    return "/".join(x for x in (s.method, stage, offload) if x)


def _offloads(s: Strategy) -> bool:
    return bool({s.offload_optimizer, s.offload_param} & {"cpu", "nvme"})


def _fetches_params(s: Strategy) -> bool:
    """Offload under ZeRO-3 or FSDP: weights leave the GPU and are fetched back, the least known part
    of the GPU side. ZeRO-1/2 offload only the optimizer; their weights and gradients stay resident."""
    return _offloads(s) and (s.sharding == "fsdp" or s.zero_stage == 3)


def strategy_group(s: Strategy) -> str:
    """The sharding group a thin family pools into: "single", "zero" or "fsdp", "/offload" appended
    for ZeRO-3 / FSDP offload (bench/band.py group_of spells a family's the same way)."""
    group = "fsdp" if s.sharding == "fsdp" else "single" if s.zero_stage == 0 else "zero"
    return group + ("/offload" if _fetches_params(s) else "")


def band_strategy(s: Strategy, world_size: int) -> Strategy:
    """The strategy whose calibration family describes this run: ZeRO-1/2 on a single GPU shard
    nothing, so they are single-GPU runs (stage 0) for the band; their buffers are in the estimate."""
    if world_size == 1 and s.sharding == "deepspeed" and s.zero_stage in (1, 2):
        return s.model_copy(update={"zero_stage": 0})
    return s


def band_for(s: Strategy, level: float = 0.9, world_size: int = 0, framework: str | None = None) -> Band:
    """The residual band of a strategy's family at a coverage level. The family's runs on the plan's
    training stack come first (band.json "stacks", where that pool is thick enough: one stack's
    template of runs must not set another's band); then the family over every stack; a family
    without calibration cases falls back to its sharding group, a group to its kind (offload or
    resident), a kind to all.

    Args:
        s: the strategy.
        level: the conformal level of the upper end (policy.band_quantile), a level band.json holds.
        world_size: GPUs of the run; 1 makes ZeRO-1/2 a single-GPU run (band_strategy); 0: not known.
        framework: the plan's training.framework; None skips the stack pools.

    Returns:
        Band(low_ratio, high_ratio, n, pool, level).

    Raises:
        KeyError: when band.json holds no band at that level (the plan schema allows only shipped levels).
    """
    table = band_table()["levels"][str(level)]
    s = band_strategy(s, world_size)
    stacked = table.get("stacks", {}).get(f"{strategy_family(s)}@{framework}") if framework else None
    entry = (stacked or table["families"].get(strategy_family(s)) or table["groups"].get(strategy_group(s))
             or table["kinds"].get("offload" if _fetches_params(s) else "resident") or table["all"])
    return Band(entry["low"], entry["high"], entry["n"], entry["pool"], level)


def centre_for(s: Strategy, world_size: int = 0) -> float:
    """The calibrated centre of a strategy's group: the source-weighted median of measured / modelled GPU
    peak over the held-out runs (band.json "centre"); a group with too few runs takes the pooled median.

    The modelled terms were each checked against a trace or a formula, yet published peaks sit above
    their sum (median -8.6 % over held-out sets 1-9 at freeze-s10, in every group): the runs hold what
    no term names (allocator state of a long run, library workspaces, the harness). The centre scales
    the modelled peak by that median, and the band is then read around the scaled peak.

    Args:
        s: the strategy.
        world_size: GPUs of the run (band_strategy); 0: not known.

    Returns:
        The ratio, 1.0 where band.json holds no centre.
    """
    centre = band_table().get("centre")
    if not centre:
        return 1.0
    group = strategy_group(band_strategy(s, world_size))
    return float(centre["groups"].get(group, centre["all"]))
