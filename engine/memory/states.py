"""Bytes per parameter of the model states (weights, gradients, optimizer), per precision and optimizer.

Mixed precision (bf16/fp16) keeps 16-bit weights and gradients plus fp32 master weights, fp32 Adam
moments and, at the optimizer step, an fp32 copy of the gradient partition: 2 + 2 + 4 + 8 + 4 = 20 B per
trainable parameter. DeepSpeed's own ZeRO-2 formula counts the same 20 (2 params_16bit + 18: "2
grads_16bit + 4 grads_32bit + 4 params_32bit + 8 optimizer_states_32bit", stage_1_and_2.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Sequence

from ..core.units import BYTES_PER_DTYPE

if TYPE_CHECKING:
    from ..model.spec import ModelSpec

# bitsandbytes NF4 with double quantisation: 4 bits per weight, an 8-bit absmax per 64-weight block
# and an fp32 constant per 256 blocks: 4 + 8/64 + 32/(64*256) = 4.127 bits (QLoRA paper, sec. 2).
QLORA_BYTES_PER_PARAM = (4 + 8 / 64 + 32 / (64 * 256)) / 8
# bitsandbytes 8-bit Adam: two uint8 moments plus an fp32 absmax per 2048-element block each.
ADAM8BIT_BYTES_PER_PARAM = 2 * (1 + 4 / 2048)


@dataclass(frozen=True)
class StateBytes:
    """Bytes per trainable parameter, by term."""

    weights: float      # the weights the forward pass reads
    gradients: float    # gradients in the weights' dtype
    master: float       # fp32 master weights (mixed precision only)
    moments: float      # optimizer moments (Adam m and v, SGD momentum, Adafactor factors)
    grad_fp32: float    # fp32 gradient partition built for the optimizer step (mixed precision)
    foreach_temp: float  # torch AdamW (foreach) step temporaries: a copy of the second moments


    @property
    def optimizer(self) -> float:
        """What ZeRO-1+ partitions and optimizer offload moves: master + moments + fp32 grads."""
        return self.master + self.moments + self.grad_fp32


@lru_cache(maxsize=256)  # pure, and called for every estimate of a sweep
def state_bytes(precision: str, optimizer: str, hidden_size: int) -> StateBytes:
    """Bytes per trainable parameter for a precision and optimizer.

    Args:
        precision: bf16 | fp16 (mixed, fp32 master) | fp32 | pure_bf16 (no master, bf16 states).
        optimizer: adamw | adamw_8bit | adafactor | sgd.
        hidden_size: sizes Adafactor's factored statistics (rows + cols per matrix).
    """
    mixed = precision in ("bf16", "fp16")
    w = BYTES_PER_DTYPE["fp32"] if precision == "fp32" else BYTES_PER_DTYPE["bf16"]
    state_dtype = BYTES_PER_DTYPE["bf16"] if precision == "pure_bf16" else BYTES_PER_DTYPE["fp32"]
    if optimizer == "adamw":
        moments = 2 * state_dtype
    elif optimizer == "adamw_8bit":
        moments = ADAM8BIT_BYTES_PER_PARAM
    elif optimizer == "adafactor":
        # Factored second moment: (rows + cols) values per rows x cols matrix, ~2/h per parameter
        # for square-ish matrices; no first moment (HF Adafactor default beta1=None).
        moments = 2 * state_dtype / hidden_size
    elif optimizer == "sgd":
        moments = state_dtype  # momentum buffer
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}")
    return StateBytes(
        weights=w,
        gradients=w,
        master=4.0 if mixed else 0.0,
        moments=moments,
        grad_fp32=4.0 if mixed else 0.0,
        # torch/optim/adam.py `_multi_tensor_adam`: `exp_avg_sq_sqrt = torch._foreach_sqrt(exp_avg_sqs)`
        # allocates a full copy of the second moments during the step.
        foreach_temp=state_dtype if optimizer == "adamw" else 0.0,
    )


def frozen_weight_bytes(facts: ModelSpec, method: str, precision: str, kbit_upcast: bool = True) -> float:
    """Bytes of the frozen weights: the base model under LoRA/QLoRA, plus any frozen extra tower.

    `frozen_extra_params` (a multimodal wrapper's vision tower and projector, engine/model/meta.py) stays
    frozen in the weights' dtype under every method, full fine-tuning included.
    kbit_upcast: QLoRA's non-quantised parameters in fp32 (peft's prepare_model_for_kbit_training), else
    16-bit (axolotl, LLaMA-Factory, torchtune, unsloth: engine/plan/frameworks.yaml).
    """
    w = BYTES_PER_DTYPE["fp32"] if precision == "fp32" else BYTES_PER_DTYPE["bf16"]
    extra = getattr(facts, "frozen_extra_params", 0) * w
    if method == "full":
        return extra
    if method == "lora":
        return facts.total_params * w + extra
    quantized = facts.quantizable_params()
    # peft's prepare_model_for_kbit_training casts every parameter that is not 4-bit (embeddings,
    # norms, lm_head) to fp32 "for stability" (peft docs).
    rest = BYTES_PER_DTYPE["fp32"] if kbit_upcast else w
    return quantized * QLORA_BYTES_PER_PARAM + (facts.total_params - quantized) * rest + extra


def trainable_params(facts: ModelSpec, method: str, lora_rank: int, lora_targets: str | Sequence[str]) -> int:
    """Parameters that receive gradients: the whole model, or the LoRA adapters."""
    if method == "full":
        return facts.total_params
    targets = lora_targets if isinstance(lora_targets, str) else tuple(lora_targets)
    return _lora_params(facts, lora_rank, targets)


@lru_cache(maxsize=256)  # ModelSpec is frozen and hashable; a sweep asks the same question hundreds of times
def _lora_params(facts: ModelSpec, rank: int, targets: str | tuple[str, ...]) -> int:
    return facts.lora_trainable_params(rank, targets if isinstance(targets, str) else list(targets))
