"""`advise check CONFIG --plan PLAN`: judge a DeepSpeed config against a plan, filling what it leaves open.

A DeepSpeed JSON carries the ZeRO stage, offloads and (concrete flavor) the micro-batch, but not the
fine-tuning method or gradient checkpointing (the trainer's switches). Where the plan leaves those
'auto', they are taken from memfit's own best-ranked plan with the same ZeRO stage and offloads (so
the config memfit itself recommends is judged as what it is), and every such choice is stated.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..deepspeed.check import CheckResult, check, load_config, strategy_from_config
from ..plan.load import load_plan
from .advise import advise

if TYPE_CHECKING:
    from ..plan.strategy import Strategy
    from .results import CandidateResult


def _same_shape(candidate: CandidateResult, shape: Strategy, micro_fixed: bool) -> bool:
    return (candidate.zero_stage, candidate.offload_optimizer, candidate.offload_param) == \
        (shape.zero_stage, shape.offload_optimizer, shape.offload_param) and \
        (not micro_fixed or candidate.micro_batch_size == shape.micro_batch_size)


def check_against_plan(config_path: str | Path, plan_path: str | Path) -> CheckResult:
    """Review CONFIG and judge it on PLAN's hardware with PLAN's headroom.

    Returns:
        The CheckResult; `assumptions` names every choice taken from memfit's matching plan (or the
        fallback: full fine-tuning without checkpointing when no plan of that shape exists).
    Raises:
        ConfigCheckError, PlanError, ModelNotFoundError: as `check`.
    """
    plan = load_plan(plan_path)
    t = plan.training
    if "auto" not in (t.method, t.gradient_checkpointing, t.micro_batch_size):
        return check(config_path, plan)
    cfg = load_config(config_path)
    shape = strategy_from_config(cfg, plan)
    micro_fixed = isinstance(cfg.get("train_micro_batch_size_per_gpu"), int)
    match = next((c for c in advise(plan).candidates if _same_shape(c, shape, micro_fixed)), None)
    if match is None:
        return check(config_path, plan, why="no memfit plan has this ZeRO stage and offload; assumed")
    return check(config_path, plan, method=match.method if t.method == "auto" else None,
                 gradient_checkpointing=match.gradient_checkpointing if t.gradient_checkpointing == "auto" else None,
                 micro_batch_size=match.micro_batch_size if t.micro_batch_size == "auto" else None,
                 why=f"taken from memfit's best plan with this ZeRO stage and offload ({match.key}):")
