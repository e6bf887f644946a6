"""FSDP strategy shapes for the search, behind `training.sharding` (fsdp | fsdp1 | fsdp2 | any).

FSDP has no optimizer-only sharding (ZeRO-1) and no NVMe tier; its CPU offload moves parameters,
gradients and optimizer state together (torch.distributed.fsdp.CPUOffload(offload_params=True)), so a
shape offloads both or neither. HYBRID_SHARD (shard inside a node, replicate across nodes) is offered
only with more than one node, where it differs from FULL_SHARD. Offload is offered with the sharding
strategies that reshard after forward (FULL_SHARD, HYBRID_SHARD): with SHARD_GRAD_OP or NO_SHARD the
whole model is on the GPU anyway.
"""
from __future__ import annotations

from itertools import product
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from ..plan.strategy import FSDP_EQUIVALENT_STAGE, Strategy

if TYPE_CHECKING:
    from ..plan.schema import Plan

_VERSIONS = {"fsdp": (1, 2), "fsdp1": (1,), "fsdp2": (2,), "any": (1, 2)}


def uses_deepspeed(plan: Plan) -> bool:
    """Whether the plan's search includes DeepSpeed shapes (auto, deepspeed, any, none)."""
    return plan.training.sharding in ("auto", "deepspeed", "any", "none")


def _pick(value: Any, allowed: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(allowed) if value == "auto" else (value,)


def _shardings(plan: Plan, version: int) -> tuple[str, ...]:
    # FSDP2 through accelerate says only reshard_after_forward true/false (FULL_SHARD / SHARD_GRAD_OP);
    # its hybrid form needs a 2-D ParallelismConfig and NO_SHARD is not fully_shard at all.
    stage = plan.training.zero_stage
    names = ["FULL_SHARD", "SHARD_GRAD_OP"] + (["NO_SHARD"] if version == 1 else [])
    names += ["HYBRID_SHARD"] if plan.hardware.nodes > 1 and version == 1 else []
    return tuple(n for n in names if stage == "auto" or FSDP_EQUIVALENT_STAGE[n] == stage)


def _offloads(plan: Plan, sharding: str) -> tuple[str, ...]:
    t = plan.training
    pins = {t.offload_optimizer, t.offload_param} - {"auto"}
    if "nvme" in pins or len(pins) > 1:
        return ()  # no NVMe tier; no optimizer-only or parameter-only offload
    allowed = ("none", "cpu") if sharding in ("FULL_SHARD", "HYBRID_SHARD") else ("none",)
    return tuple(o for o in allowed if not pins or o in pins)


def fsdp_shapes(plan: Plan) -> Iterator[Strategy]:
    """Every FSDP strategy shape the plan allows, micro-batch 1 (sized later); none unless the plan's
    training.sharding asks for FSDP."""
    t = plan.training
    versions = _VERSIONS.get(t.sharding, ())
    methods = _pick(t.method, ("full", "lora", "qlora"))
    if plan.policy.require_full_finetune and t.method == "auto":
        methods = ("full",)
    for version, method, ckpt in product(versions, methods, _pick(t.gradient_checkpointing, (False, True))):
        for sharding in _shardings(plan, version):
            yield from _with_offload_and_save(plan, method, sharding, version, ckpt)


def _with_offload_and_save(plan: Plan, method: str, sharding: str, version: int, ckpt: bool) -> Iterator[Strategy]:
    for off in _offloads(plan, sharding):
        for full_save in ((True, False) if method == "full" and sharding != "NO_SHARD" else (True,)):
            yield Strategy(method=method, zero_stage=FSDP_EQUIVALENT_STAGE[sharding], offload_optimizer=off,
                           offload_param=off, gradient_checkpointing=ckpt, gather_16bit_on_save=full_save,
                           sharding="fsdp", fsdp_version=version, fsdp_sharding=sharding)


def pinned_sharding(plan: Plan) -> dict[str, Any]:
    """The Strategy fields a fully pinned plan's sharding sets (for `advise estimate`).

    Returns:
        {} for DeepSpeed; the FSDP fields for fsdp1/fsdp2. 'fsdp' and 'any' leave a choice open.
    Raises:
        ValueError: sharding left open, or a ZeRO stage FSDP does not have (1).
    """
    t = plan.training
    if t.sharding in ("auto", "deepspeed", "none"):
        return {}
    if t.sharding not in ("fsdp1", "fsdp2"):
        raise ValueError(f"training.sharding: is '{t.sharding}'; advise estimate needs deepspeed, fsdp1 or fsdp2")
    version = int(t.sharding[-1])
    # FSDP2 has no NO_SHARD (fully_shard always shards; replication is DDP): as _shardings offers it.
    names = [n for n, z in FSDP_EQUIVALENT_STAGE.items() if z == t.zero_stage and n != "HYBRID_SHARD"
             and (version == 1 or n != "NO_SHARD")]
    if not names:
        have = "3 = FULL_SHARD, 2 = SHARD_GRAD_OP, 0 = NO_SHARD" if version == 1 else \
            "3 = reshard_after_forward true (FULL_SHARD), 2 = false (SHARD_GRAD_OP); no NO_SHARD"
        raise ValueError(f"training.zero_stage: FSDP{version} has no stage {t.zero_stage} ({have})")
    return {"sharding": "fsdp", "fsdp_version": version, "fsdp_sharding": names[0]}


def engine_facts(plan: Plan, strategy: Strategy) -> dict[str, Any]:
    """The sharding-engine facts of a candidate (policy/vocabulary.py). Whether some candidate of
    each engine is feasible (deepspeed_feasible, fsdp_feasible) is a relational fact: the search
    derives it from the reject rules' first pass (search/sweep.py cross_facts)."""
    fsdp = strategy.sharding == "fsdp"
    return {"sharding": strategy.sharding, "fsdp_version": strategy.fsdp_version if fsdp else 0,
            "fsdp_sharding": strategy.effective_fsdp_sharding if fsdp else "",
            "engines_compared": plan.training.sharding == "any"}
