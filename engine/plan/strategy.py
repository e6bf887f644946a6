"""One training strategy: the choices a candidate pins, all concrete (no 'auto')."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

Method = Literal["full", "lora", "qlora"]
Offload = Literal["none", "cpu", "nvme"]
# PyTorch FSDP's sharding strategies (torch.distributed.fsdp.ShardingStrategy); FSDP2 spells them
# reshard_after_forward=True/False and a 2-D mesh for HYBRID_SHARD.
FsdpSharding = Literal["FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD"]
_FSDP_SHORT = {"FULL_SHARD": "full", "SHARD_GRAD_OP": "grad_op", "HYBRID_SHARD": "hybrid", "NO_SHARD": "no_shard"}
# The ZeRO stage that shards the same states (for rules and facts that speak in stages).
FSDP_EQUIVALENT_STAGE = {"FULL_SHARD": 3, "HYBRID_SHARD": 3, "SHARD_GRAD_OP": 2, "NO_SHARD": 0}


_STAGE_TO_FSDP = {3: "FULL_SHARD", 2: "SHARD_GRAD_OP", 1: "NO_SHARD", 0: "NO_SHARD"}


class ZeroKnobs(BaseModel):
    """The DeepSpeed ZeRO knobs that size its buffers, in elements (deepspeed/runtime/zero/config.py).

    None everywhere means "what memfit writes" (core.ds_defaults.zero_knobs of the hidden size);
    `advise check CONFIG --plan` fills them from the config it reads.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    reduce_bucket_size: Optional[int] = None
    prefetch_bucket_size: Optional[int] = None
    param_persistence_threshold: Optional[int] = None
    max_live_parameters: Optional[int] = None
    max_reuse_distance: Optional[int] = None
    sub_group_size: Optional[int] = None
    overlap_comm: Optional[bool] = None
    contiguous_gradients: Optional[bool] = None
    # data_types.grad_accum_dtype "fp32" (engine.py get_data_types): with bf16 and ZeRO-1 DeepSpeed
    # then uses its BF16_Optimizer, which keeps fp32 gradients of the whole model (memory/zero.py).
    grad_accum_fp32: Optional[bool] = None


# DeepSpeed's zero_optimization keys that size its buffers (deepspeed/runtime/zero/config.py aliases)
# -> ZeroKnobs fields: read from a config by `advise check`, from `training.deepspeed` in a plan.
DS_KNOB_KEYS = {"reduce_bucket_size": "reduce_bucket_size", "stage3_prefetch_bucket_size": "prefetch_bucket_size",
                "stage3_param_persistence_threshold": "param_persistence_threshold",
                "stage3_max_live_parameters": "max_live_parameters", "stage3_max_reuse_distance": "max_reuse_distance",
                "sub_group_size": "sub_group_size", "overlap_comm": "overlap_comm",
                "contiguous_gradients": "contiguous_gradients"}


def knobs_from_plan(given: dict[str, int | bool]) -> ZeroKnobs | None:
    """ZeroKnobs of the values a plan's `training.deepspeed` sets (DeepSpeedKnobs.given, DeepSpeed's key
    names), None when it sets none; a key left out stays None, the value memfit writes."""
    knobs = {DS_KNOB_KEYS[k]: v for k, v in given.items() if k in DS_KNOB_KEYS}
    return ZeroKnobs(**knobs) if knobs else None


class Strategy(BaseModel):
    """A concrete strategy. Plan-wide settings (precision, optimizer, seq_len...) stay on the Plan."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Method
    zero_stage: Literal[0, 1, 2, 3]
    offload_optimizer: Offload = "none"
    offload_param: Offload = "none"
    gradient_checkpointing: bool = False
    micro_batch_size: int = Field(1, ge=1)
    # Pinned (page-locked) host buffers make offload transfers faster but cost host RAM that cannot
    # be swapped; only meaningful with CPU offload.
    pin_memory: bool = True
    # ZeRO-3 only: gather the 16-bit weights onto rank 0's host at save (a usable checkpoint, at the
    # cost of one full 16-bit copy of the model in host RAM); off means zero_to_fp32.py afterwards.
    gather_16bit_on_save: bool = True
    # The sharding engine. FSDP strategies keep zero_stage at the equivalent ZeRO stage
    # (FSDP_EQUIVALENT_STAGE) and offload parameters, gradients and optimizer together (CPUOffload);
    # gather_16bit_on_save then means FULL_STATE_DICT at save (off: SHARDED_STATE_DICT).
    sharding: Literal["deepspeed", "fsdp"] = "deepspeed"
    fsdp_version: Literal[1, 2] = 1
    fsdp_sharding: FsdpSharding = "FULL_SHARD"
    # DeepSpeed buffer sizes of a config read by `advise check` (None: the ones memfit writes).
    zero_knobs: Optional[ZeroKnobs] = None

    @property
    def key(self) -> str:
        """Short stable label, e.g. 'full/z3/opt=cpu/param=cpu/gc/mb1'."""
        if self.sharding == "fsdp":
            return self._fsdp_key()
        parts = [self.method, f"z{self.zero_stage}"]
        if self.offload_optimizer != "none":
            parts.append(f"opt={self.offload_optimizer}")
        if self.offload_param != "none":
            parts.append(f"param={self.offload_param}")
        if "cpu" in (self.offload_optimizer, self.offload_param) and not self.pin_memory:
            parts.append("unpinned")
        if self.zero_stage == 3 and not self.gather_16bit_on_save:
            parts.append("nogather")
        parts.append("gc" if self.gradient_checkpointing else "nogc")
        parts.append(f"mb{self.micro_batch_size}")
        return "/".join(parts)

    @property
    def effective_fsdp_sharding(self) -> str:
        """fsdp_sharding, or the FSDP strategy of zero_stage when a neighbour copy changed only the stage
        (`model_copy(update={"zero_stage": ...})` skips validation): stage 1 has no FSDP form, NO_SHARD."""
        if FSDP_EQUIVALENT_STAGE[self.fsdp_sharding] == self.zero_stage:
            return self.fsdp_sharding
        return _STAGE_TO_FSDP[self.zero_stage]

    def _fsdp_key(self) -> str:
        """e.g. 'full/fsdp1-full/offload/gc/mb1': version, sharding strategy, CPU offload, save format."""
        parts = [self.method, f"fsdp{self.fsdp_version}-{_FSDP_SHORT[self.effective_fsdp_sharding]}"]
        if self.offload_param != "none":
            parts.append("offload" if self.pin_memory else "offload-unpinned")
        if self.method == "full" and not self.gather_16bit_on_save:
            parts.append("sharded-save")
        parts.append("gc" if self.gradient_checkpointing else "nogc")
        parts.append(f"mb{self.micro_batch_size}")
        return "/".join(parts)
