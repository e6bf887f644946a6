"""Bytes per parameter of the model states (weights, gradients, optimizer), per precision and optimizer.

Mixed precision (bf16/fp16) keeps 16-bit weights and gradients plus fp32 master weights, fp32 Adam
moments and, at the optimizer step, an fp32 copy of the gradient partition: 2 + 2 + 4 + 8 + 4 = 20 B per
trainable parameter. DeepSpeed's own ZeRO-2 formula counts the same 20 (2 params_16bit + 18: "2
grads_16bit + 4 grads_32bit + 4 params_32bit + 8 optimizer_states_32bit", stage_1_and_2.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..core.errors import ModelSpecError
from ..core.units import BYTES_PER_DTYPE
from .activations import dora_params
from .quant import base_format, quantized_base_bytes

if TYPE_CHECKING:
    from ..model.spec import ModelSpec
    from ..plan.schema import Plan
    from ..plan.strategy import Strategy

# bitsandbytes NF4 with double quantisation: 4 bits per weight, an 8-bit absmax per 64-weight block
# and an fp32 constant per 256 blocks: 4 + 8/64 + 32/(64*256) = 4.127 bits (QLoRA paper, sec. 2);
# memory/quant.py counts it per layer (QuantFormat.linear_bytes).
QLORA_BYTES_PER_PARAM = (4 + 8 / 64 + 32 / (64 * 256)) / 8
# bitsandbytes 8-bit Adam (blockwise, the default): two uint8 moments plus an fp32 absmax per
# 256-element block each (bitsandbytes 0.50 optim/optimizer.py Optimizer2State.init_state:
# `blocksize = 256`, `absmax1/absmax2 = torch.zeros((blocks,), dtype=torch.float32)`). Tensors under
# min_8bit_size = 4096 elements keep fp32 states; LoRA matrices (r x hidden) are above it.
ADAM8BIT_BYTES_PER_PARAM = 2 * (1 + 4 / 256)
# Lion keeps one moment (bitsandbytes Optimizer1State / lion-pytorch `exp_avg`); 8-bit: uint8 + absmax.
LION8BIT_BYTES_PER_PARAM = 1 + 4 / 256
# The optimizers a plan names (training.optimizer). paged_*: bitsandbytes paged optimizers, whose
# states of tensors over 1e5 elements live in CUDA unified memory (optimizer.py get_state_buffer ->
# functional.get_paged, cudaMallocManaged): on the GPU while it has room, paged to host RAM under
# pressure instead of failing. Same bytes as the unpaged optimizer.
OPTIMIZERS = ("adamw", "adamw_fused", "adamw_8bit", "paged_adamw", "paged_adamw_8bit", "lion", "lion_8bit",
              "adafactor", "sgd")
PAGED_OPTIMIZERS = frozenset({"paged_adamw", "paged_adamw_8bit"})
# peft modules_to_save names memfit counts: a trainable copy of the embedding or the LM head.
EMBEDDING_NAMES = frozenset({"embed_tokens", "wte", "word_embeddings", "tok_embeddings", "embed_in"})
LM_HEAD_NAMES = frozenset({"lm_head", "embed_out", "output"})


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
        optimizer: one of OPTIMIZERS.
        hidden_size: sizes Adafactor's factored statistics (rows + cols per matrix).
    """
    mixed = precision in ("bf16", "fp16")
    w = BYTES_PER_DTYPE["fp32"] if precision == "fp32" else BYTES_PER_DTYPE["bf16"]
    state_dtype = BYTES_PER_DTYPE["bf16"] if precision == "pure_bf16" else BYTES_PER_DTYPE["fp32"]
    if optimizer in ("adamw", "adamw_fused", "paged_adamw"):
        moments = 2 * state_dtype
    elif optimizer in ("adamw_8bit", "paged_adamw_8bit"):
        moments = ADAM8BIT_BYTES_PER_PARAM
    elif optimizer == "lion":
        moments = state_dtype
    elif optimizer == "lion_8bit":
        moments = LION8BIT_BYTES_PER_PARAM
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
        # allocates a full copy of the second moments during the step; the fused kernel
        # (`_fused_adamw`, adamw_torch_fused) and bitsandbytes' kernels update in place.
        foreach_temp=state_dtype if optimizer == "adamw" else 0.0,
    )


def casts_module(strategy: Strategy) -> bool:
    """Whether the engine itself casts the module to the step's precision (no fp32 weights remain):
    DeepSpeed from ZeRO-1 on. memfit's ZeRO-0 is the plain trainer path (no DeepSpeed engine)."""
    return strategy.sharding == "deepspeed" and strategy.zero_stage >= 1


def fp32_base(plan: Plan, strategy: Strategy) -> bool:
    """Whether the loaded, non-quantised weights (the frozen base under LoRA/QLoRA) are held in fp32.

    Args:
        plan: the checked Plan (training.precision, training.load_dtype).
        strategy: the candidate (DeepSpeed's cast from ZeRO-1 on overrides the load dtype).
    Returns:
        True under precision fp32, or with load_dtype fp32 unless DeepSpeed casts the module.
    """
    t = plan.training
    if t.precision == "fp32":
        return True
    return t.load_dtype == "fp32" and not casts_module(strategy)


def frozen_weight_bytes(facts: ModelSpec, method: str, precision: str,
                        quantization: Mapping[str, Any] | None = None, kbit_upcast: bool = True,
                        base_fp32: bool | None = None) -> float:
    """Bytes of the frozen weights: the base model under LoRA/QLoRA, plus any frozen extra tower.

    `frozen_extra_params` (a multimodal wrapper's vision tower and projector, engine/model/meta.py) stays
    frozen in the weights' dtype under every method, full fine-tuning included.

    Args:
        facts: the model; a `quantization_config` in its config makes the base that checkpoint's format.
        method: full | lora | qlora.
        precision: the plan's precision (fp32 keeps a 16-bit-free base in fp32).
        quantization: training.lora.quantization_config (the base format of qlora; default NF4).
        kbit_upcast: whether the stack calls peft's prepare_model_for_kbit_training (the framework's
            default, engine/plan/frameworks.yaml); it upcasts the non-quantised parameters to fp32 only
            for the formats peft upcasts (QuantFormat.upcasts_rest).
        base_fp32: the non-quantised frozen weights are held in fp32 (fp32_base: precision fp32, or
            training.load_dtype fp32 unless DeepSpeed casts the module); None: precision fp32.
    Returns:
        Bytes of every frozen parameter (memory/quant.py has the layouts).
    Raises:
        ModelSpecError: an unsupported or malformed quantization_config.
    """
    fp32 = precision == "fp32" if base_fp32 is None else base_fp32
    w = BYTES_PER_DTYPE["fp32"] if fp32 else BYTES_PER_DTYPE["bf16"]
    extra = getattr(facts, "frozen_extra_params", 0) * w
    if method == "full":
        return extra
    fmt = base_format(facts, method, quantization)
    if fmt is None:
        return facts.total_params * w + extra
    # Loaded in fp32, the parameters a format leaves unquantised stay fp32 without any upcast.
    return quantized_base_bytes(facts, fmt, upcast=(kbit_upcast and fmt.upcasts_rest) or fp32) + extra


def modules_to_save_params(facts: ModelSpec, modules: Sequence[str]) -> int:
    """Parameters of peft's `modules_to_save` copies: each named module trains in full as a copy
    (peft/utils/other.py ModulesToSaveWrapper deep-copies the original, which stays frozen).

    Raises:
        ModelSpecError: a name that is neither an embedding nor an LM head.
    """
    total = 0
    for name in dict.fromkeys(modules):
        if name.rsplit(".", 1)[-1] in EMBEDDING_NAMES:
            total += facts.embedding_params
        elif name.rsplit(".", 1)[-1] in LM_HEAD_NAMES:
            # A tied head has no weight of its own; its trainable copy is a full vocab x hidden matrix.
            total += facts.lm_head_params or facts.vocab_size * facts.hidden_size
        else:
            raise ModelSpecError(f"training.lora.modules_to_save: memfit counts embeddings "
                                 f"({', '.join(sorted(EMBEDDING_NAMES))}) and LM heads "
                                 f"({', '.join(sorted(LM_HEAD_NAMES))}) (got {name!r})")
    return total


def trainable_params(facts: ModelSpec, method: str, lora_rank: int, lora_targets: str | Sequence[str],
                     modules_to_save: Sequence[str] = (), dora: bool = False) -> int:
    """Parameters that receive gradients: the whole model, or the LoRA adapters (with DoRA's magnitude
    vectors) plus the trainable copies of `modules_to_save` (with the adapters' mixed-precision states:
    16-bit copy, 16-bit gradient, fp32 master and moments)."""
    if method == "full":
        return facts.total_params
    targets = lora_targets if isinstance(lora_targets, str) else tuple(lora_targets)
    magnitudes = dora_params(facts, lora_targets) if dora else 0
    return _lora_params(facts, lora_rank, targets) + magnitudes + modules_to_save_params(facts, modules_to_save)


@lru_cache(maxsize=256)  # ModelSpec is frozen and hashable; a sweep asks the same question hundreds of times
def _lora_params(facts: ModelSpec, rank: int, targets: str | tuple[str, ...]) -> int:
    return facts.lora_trainable_params(rank, targets if isinstance(targets, str) else list(targets))
