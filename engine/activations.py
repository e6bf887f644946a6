"""Activation, logits and loss memory per GPU, from config fields (no torch).

Formulas measured on fake tensors (HF Llama/Qwen2, transformers 5, bf16; ../shared/DOMAIN.md §3) and
re-checked by the probe (`advise probe`, engine/probe.py), which is the test oracle for this module.
"""
from __future__ import annotations

from dataclasses import dataclass

# peft LoRA without checkpointing keeps fp32 copies of adapter inputs: a 7B plan measured 17.0 GiB of
# activations against 11.7 GiB for full fine-tuning (DOMAIN.md §3), a ratio of 1.45.
LORA_NO_CKPT_FACTOR = 17.0 / 11.7


@dataclass(frozen=True)
class ActivationBytes:
    """Activation memory of one forward/backward, per GPU, in bytes."""

    stored_bytes: float        # kept for backward across all layers
    working_bytes: float       # one layer's transient working set (recompute under checkpointing)
    logits_loss_bytes: float   # logits + fp32 log-softmax at the loss

    @property
    def peak_bytes(self) -> float:
        return self.stored_bytes + self.working_bytes + self.logits_loss_bytes


def layer_bytes(facts, seq_len: int, micro_batch: int, attention: str, dtype_bytes: float = 2.0) -> float:
    """Bytes one decoder layer stores for backward without checkpointing.

    s*b*[(20 + 4*kv/a)*h + 8*I] at 2-byte activations (SDPA/flash), plus 6*a*s^2*b for eager attention
    (fp32 softmax + bf16 copy). Scaled by dtype_bytes/2 for fp32 activations.
    """
    s, b = seq_len, micro_batch
    h, a, kv = facts.hidden_size, facts.num_attention_heads, facts.num_kv_heads
    inter = facts.intermediate_size
    if getattr(facts, "num_experts", 0):
        # MoE: each token's activations go through experts_per_token experts' MLPs.
        inter = inter * max(1, facts.experts_per_token)
    per_token = (20 + 4 * kv / a) * h + 8 * inter
    total = s * b * per_token * dtype_bytes / 2.0
    if attention == "eager":
        total += 6 * a * s * s * b * dtype_bytes / 2.0
    return total


def activation_bytes(facts, seq_len: int, micro_batch: int, attention: str, method: str,
                     gradient_checkpointing: bool, precision: str) -> ActivationBytes:
    """Activation memory per GPU for one micro-batch (activations are never sharded by ZeRO).

    Args:
        facts: ModelFacts (hidden_size, num_layers, heads, kv heads, intermediate_size, vocab_size).
        seq_len, micro_batch: tokens per sequence and sequences per GPU.
        attention: sdpa | flash_attention_2 | eager.
        method: full | lora | qlora.
        gradient_checkpointing: full checkpointing of every decoder layer.
        precision: bf16 | fp16 | pure_bf16 | fp32 (fp32 doubles every activation).
    """
    dtype_bytes = 4.0 if precision == "fp32" else 2.0
    one_layer = layer_bytes(facts, seq_len, micro_batch, attention, dtype_bytes)
    if method in ("lora", "qlora") and not gradient_checkpointing:
        one_layer *= LORA_NO_CKPT_FACTOR
    n = facts.num_layers
    if gradient_checkpointing:
        # Only each layer's input (s*b*h) survives, plus one layer recomputed during backward.
        stored = n * seq_len * micro_batch * facts.hidden_size * dtype_bytes
        working = one_layer
    else:
        stored, working = n * one_layer, 0.0
    return ActivationBytes(stored, working, logits_loss_bytes(facts, seq_len, micro_batch, precision))


def logits_loss_bytes(facts, seq_len: int, micro_batch: int, precision: str) -> float:
    """Logits (2*s*b*V at bf16) plus the fp32 log-softmax of the loss (4*s*b*V)."""
    logits_dtype = 4.0 if precision == "fp32" else 2.0
    return seq_len * micro_batch * facts.vocab_size * (logits_dtype + 4.0)
