"""Frozen weights kept in fp32 under 16-bit autocast, and the 16-bit copies autograd saves of them.

Two ways a frozen weight stays fp32 while the step computes in bf16/fp16:
- the base is loaded in fp32 (`training.load_dtype: fp32`: from_pretrained's dtype left at float32,
  or litgpt's `--precision bf16-mixed`) and the trainer autocasts (HF Trainer / accelerate with
  `bf16: true`, Lightning's mixed precision);
- QLoRA with peft's k-bit upcast (Stack.kbit_upcast): prepare_model_for_kbit_training casts every
  non-quantised parameter to fp32, the lm_head included.

Under autocast a linear layer casts its fp32 weight to 16 bits for the matmul, and autograd saves that
copy to compute the input's gradient (`mm`'s backward needs the other operand) whenever the input
requires grad, which it does under LoRA: the adapters upstream train. The weight itself is frozen, so
autocast's cast cache (kept for leaf tensors that require grad) is not what holds the copy; the saved
tensor is. tests/test_autocast.py traces it on CPU autocast with torch's saved_tensors_hooks.

So each frozen fp32 linear holds a 16-bit copy of its weight from its forward to its backward: every
decoder layer's at the start of backward without checkpointing; with checkpointing only the layer
being recomputed (the recompute runs under the autocast state of the forward). The lm_head runs
outside the checkpointed layers, so its copy lives from the forward to the first backward op.

DeepSpeed (ZeRO >= 1) casts the module to its precision (engine.py _configure_distributed_model) and
FSDP's MixedPrecision gathers in param_dtype, so neither holds fp32 frozen linears under autocast.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from .activations import ActivationBytes
from .fsdp import unit_params
from .quant import base_format
from .states import casts_module, fp32_base

if TYPE_CHECKING:
    from ..model.spec import ModelSpec
    from ..plan.schema import Plan
    from ..plan.stack import Stack
    from ..plan.strategy import Strategy

COPY_BYTES = 2.0  # the 16-bit copy of each fp32 weight element


def autocast_copies(facts: ModelSpec, plan: Plan, strategy: Strategy, stack: Stack) -> tuple[float, float]:
    """(bytes per decoder layer, bytes of the lm_head) of the 16-bit weight copies autograd saves.

    Args:
        facts: the model (unit_params: one decoder layer's parameters; the head's).
        plan, strategy: the run; only LoRA/QLoRA under 16-bit autocast outside DeepSpeed and FSDP copy.
        stack: the resolved stack (kbit_upcast keeps QLoRA's lm_head in fp32).
    Returns:
        Zero for both where nothing is fp32 under autocast.
    """
    autocast = plan.training.precision in ("bf16", "fp16")
    if strategy.method == "full" or not autocast or strategy.sharding == "fsdp" or casts_module(strategy):
        return 0.0, 0.0
    head_params = facts.embedding_params if facts.tie_word_embeddings else facts.lm_head_params
    fp32 = fp32_base(plan, strategy)
    fmt = base_format(facts, strategy.method, plan.training.lora.quantization_config)
    if fmt is None:  # a 16-bit LoRA base: every linear is fp32 or none is
        layer, _ = unit_params(facts)
        return (layer * COPY_BYTES, head_params * COPY_BYTES) if fp32 else (0.0, 0.0)
    # A quantised base (QLoRA, or LoRA over a GPTQ/AWQ checkpoint): the decoder layers' linears are
    # packed and dequantised inside their own kernels; the lm_head is never quantised, and is fp32
    # after the k-bit upcast (for the formats peft upcasts, as frozen_weight_bytes counts it) or an fp32 load.
    upcast = (stack.kbit_upcast and fmt.upcasts_rest) or fp32
    return 0.0, head_params * COPY_BYTES if upcast else 0.0


def with_copies(act: ActivationBytes, copies: tuple[float, float], layers: int, checkpointing: bool) -> ActivationBytes:
    """The activations with the saved weight copies added (autocast_copies).

    Without checkpointing every layer's copies are stored until its backward; with it, only the
    recomputed layer's, in its working set. The lm_head's copy is stored either way.
    """
    per_layer, head = copies
    if not (per_layer or head):
        return act
    stored = act.stored_bytes + head + (0.0 if checkpointing else per_layer * layers)
    working = act.working_bytes + (per_layer if checkpointing else 0.0)
    return replace(act, stored_bytes=stored, working_bytes=working)
