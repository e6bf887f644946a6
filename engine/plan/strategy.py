"""One training strategy: the choices a candidate pins, all concrete (no 'auto')."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

Method = Literal["full", "lora", "qlora"]
Offload = Literal["none", "cpu", "nvme"]


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
    # DeepSpeed buffer sizes of a config read by `advise check` (None: the ones memfit writes).
    zero_knobs: Optional[ZeroKnobs] = None

    @property
    def key(self) -> str:
        """Short stable label, e.g. 'full/z3/opt=cpu/param=cpu/gc/mb1'."""
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
