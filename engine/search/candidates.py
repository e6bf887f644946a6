"""Candidate strategy shapes within what the plan pins, and the upper end of the micro-batch search.

The search space follows the HF DeepSpeed ladder (fastest first): ZeRO-0 > 1 > 2 > 2 + optimizer
offload > 3 > 3 + offloads > NVMe. Offloading parameters needs ZeRO-3; offloading the optimizer is
offered from ZeRO-2 up (pinned plans may ask for ZeRO-1 + offload, which DeepSpeed also accepts).
"""
from __future__ import annotations

from itertools import product
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from .fsdp_shapes import fsdp_shapes, uses_deepspeed
from ..plan.strategy import Strategy

if TYPE_CHECKING:
    from ..plan.schema import Plan

_OFFLOADS = ("none", "cpu", "nvme")


def _pick(value: Any, allowed: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(allowed) if value == "auto" else (value,)


def strategy_shapes(plan: Plan) -> Iterator[Strategy]:
    """Every strategy shape the plan allows, with micro_batch_size 1 (sized later).

    Args:
        plan: the checked Plan; pinned training values restrict the search, 'auto' opens it.
    """
    yield from _deepspeed_shapes(plan) if uses_deepspeed(plan) else ()
    yield from fsdp_shapes(plan)  # only when training.sharding asks for FSDP (search/fsdp_shapes.py)


def _deepspeed_shapes(plan: Plan) -> Iterator[Strategy]:
    t = plan.training
    stages = (0,) if t.sharding == "none" else (0, 1, 2, 3)
    methods = _pick(t.method, ("full", "lora", "qlora"))
    if plan.policy.require_full_finetune and t.method == "auto":
        methods = ("full",)
    for method, stage, opt, param, ckpt in product(
            methods, stages if t.sharding == "none" else _pick(t.zero_stage, stages), _pick(t.offload_optimizer, _OFFLOADS),
            _pick(t.offload_param, _OFFLOADS), _pick(t.gradient_checkpointing, (False, True))):
        if t.offload_optimizer == "auto" and opt != "none" and stage < 2:
            continue
        if t.offload_param == "auto" and param != "none" and stage < 3:
            continue
        if (t.offload_param == "auto" or t.offload_optimizer == "auto") and param != "none" and opt == "none":
            continue  # parameters before the optimizer is never the better trade (optimizer first)
        if "nvme" in (opt, param) and plan.hardware.nvme_gib <= 0 and "nvme" not in (t.offload_optimizer, t.offload_param):
            continue
        for pin in ((True, False) if "cpu" in (opt, param) else (True,)):
            for gather in ((True, False) if stage == 3 and method == "full" else (True,)):
                yield Strategy(method=method, zero_stage=stage, offload_optimizer=opt, offload_param=param,
                               gradient_checkpointing=ckpt, pin_memory=pin, gather_16bit_on_save=gather)


def micro_batch_limit(plan: Plan) -> int:
    """Upper end of the micro-batch search: the policy cap, and no more than the global batch allows."""
    cap = plan.policy.max_micro_batch_size
    if plan.training.global_batch_size:
        cap = min(cap, max(1, plan.training.global_batch_size // plan.hardware.world_size))
    return cap
