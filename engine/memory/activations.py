"""Activation, logits and loss memory per GPU, from config fields (no torch).

Every term was read off a probe trace (engine/probe/probe.py: one real HF training step on fake tensors,
transformers 5, bf16, Llama/Qwen2 decoder layers) and is checked against it in
tests/test_activations.py; docs/explanation/activations.md lists each term, where it comes from, and
the measured formula-vs-probe table. Units: bytes; s = seq_len, b = micro-batch, h = hidden,
a = heads, kv = KV heads, I = intermediate, V = vocab, r = LoRA rank.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from ..model.spec import ModelSpec

# Input width of each linear layer of a Llama-style decoder layer, as a function of (h, a*head_dim, I).
_LINEAR_IN = {"q_proj": "h", "k_proj": "h", "v_proj": "h", "o_proj": "attn", "gate_proj": "h",
              "up_proj": "h", "down_proj": "I"}


@dataclass(frozen=True)
class ActivationBytes:
    """Activation memory of one forward/backward, per GPU, in bytes."""

    stored_bytes: float        # kept for backward: all layers + the final norm (end of forward)
    working_bytes: float       # one layer's backward working set (its recompute under checkpointing)
    logits_loss_bytes: float   # logits/loss tensors live at the start of backward

    @property
    def peak_bytes(self) -> float:
        """The loss peak (start of backward) and a layer's backward peak happen at different times."""
        return self.stored_bytes + max(self.working_bytes, self.logits_loss_bytes)


def _lora_widths(facts: ModelSpec, lora_targets: str | Sequence[str]) -> list[float]:
    """Input widths of the adapted linear layers of one decoder layer."""
    h, inter = facts.hidden_size, _mlp_width(facts)
    attn = facts.num_attention_heads * (getattr(facts, "head_dim", None) or h // facts.num_attention_heads)
    width = {"h": h, "attn": attn, "I": inter}
    names = list(_LINEAR_IN) if lora_targets in (None, "all-linear") else list(lora_targets)
    return [width[_LINEAR_IN[n]] for n in names if n in _LINEAR_IN]


def _mlp_width(facts: ModelSpec) -> float:
    # MoE: each token's activations go through experts_per_token experts' MLPs, plus shared experts, and
    # dense layers keep intermediate_size (ModelSpec.mlp_width_per_token; not probe-checked).
    width = getattr(facts, "mlp_width_per_token", None)
    if width is not None:
        return float(width)
    if getattr(facts, "num_experts", 0):
        return facts.intermediate_size * max(1, getattr(facts, "experts_per_token", 1) or 1)
    return facts.intermediate_size


def layer_bytes(facts: ModelSpec, seq_len: int, micro_batch: int, attention: str, dtype_bytes: float = 2.0, *,
                method: str = "full", lora_rank: int = 16, lora_targets: str | Sequence[str] = "all-linear",
                lora_dropout: float = 0.0) -> float:
    """Bytes one decoder layer stores for backward without checkpointing.

    Full fine-tuning, SDPA: s*b*[(20 + 4*kv/a)*h + 8*I + 4*a + 8]: two RMSNorms keep an fp32 input
    copy (4h), the bf16 normalised tensor (2h) and their output (2h) each; q and attention output
    (2h each), k and v (2h*kv/a each); SDPA's fp32 logsumexp (4a); two fp32 rsqrt (8); the MLP keeps
    gate, silu(gate), up and their product (2I each). Eager attention repeats k/v to all heads (+2h
    each instead of 2h*kv/a), drops the logsumexp, and keeps the fp32 softmax and its bf16 copy
    (6*a*s per token).
    LoRA/QLoRA (peft, frozen base): norms keep only the fp32 copy (4h each), the MLP 6I, attention
    (4 + 4*kv/a)*h, and each adapted linear of input width d adds its fp32 input copy (4d) and the
    fp32 rank-r output of lora_A (4r); dropout > 0 adds a 1-byte mask per adapter input element.
    Scaled by dtype_bytes/2 for fp32 activations (not probe-checked).

    Args:
        facts: ModelSpec-like (hidden_size, num_attention_heads, num_kv_heads, intermediate_size...).
        seq_len, micro_batch: tokens per sequence and sequences per GPU.
        attention: sdpa | flash_attention_2 | eager.
        dtype_bytes: bytes per activation element (2 for bf16/fp16).
        method, lora_rank, lora_targets, lora_dropout: full | lora | qlora and the adapter settings.
    Returns:
        Bytes per decoder layer.
    """
    s, b = seq_len, micro_batch
    h, a, kv, inter = facts.hidden_size, facts.num_attention_heads, facts.num_kv_heads, _mlp_width(facts)
    eager = attention == "eager"
    kv_ratio = 1.0 if eager else kv / a          # eager's repeat_kv keeps full-head copies
    lse = 0.0 if eager else 4 * a                # SDPA/flash keep an fp32 logsumexp per head
    attn = (4 + 4 * kv_ratio) * h + lse
    mla = getattr(facts, "mla_activation_width", 0)  # deepseek MLA: q/k/v/out and latent widths differ from h
    if mla:
        attn = 2 * mla + lse
    if method in ("lora", "qlora"):
        widths = _lora_widths(facts, lora_targets)
        adapters = sum(4 * d + 4 * lora_rank + (d if lora_dropout > 0 else 0) for d in widths)
        per_token = 8 * h + attn + 6 * inter + 8 + adapters
    else:
        per_token = 16 * h + attn + 8 * inter + 8
    total = s * b * per_token * dtype_bytes / 2.0
    if eager:
        total += 6 * a * s * s * b * dtype_bytes / 2.0
    return total


def _backward_transient(facts: ModelSpec, s: int, b: int, attention: str, method: str) -> float:
    """Fitted to the probe: tensors a layer's backward allocates on top of what it stored.

    The largest of: gradients through the MLP (3h + 4I per token), the fp32 gradients through the
    down_proj adapter for LoRA (8I), the fp32 softmax gradient of eager attention (4*a*s).
    """
    h, a, inter = facts.hidden_size, facts.num_attention_heads, _mlp_width(facts)
    terms = [3 * h + 4 * inter]
    if method in ("lora", "qlora"):
        terms.append(8 * inter)
    if attention == "eager":
        terms.append(4 * a * s)
    return s * b * max(terms)


def stored_layer_bytes(facts: ModelSpec, seq_len: int, micro_batch: int, attention: str, method: str,
                       gradient_checkpointing: bool, precision: str, *, lora_rank: int = 16,
                       lora_targets: str | Sequence[str] = "all-linear", lora_dropout: float = 0.0) -> float:
    """Bytes one decoder layer keeps for backward at the end of forward (a probe's per-layer term).

    Args: as activation_bytes.
    Returns:
        With checkpointing, the layer's saved input (s*b*h, fp32 for QLoRA: see activation_bytes);
        without, everything layer_bytes counts.
    """
    dtype_bytes = 4.0 if precision == "fp32" else 2.0
    if gradient_checkpointing:
        input_bytes = 4.0 if method == "qlora" else dtype_bytes
        return seq_len * micro_batch * facts.hidden_size * input_bytes
    return layer_bytes(facts, seq_len, micro_batch, attention, dtype_bytes, method=method, lora_rank=lora_rank,
                       lora_targets=lora_targets, lora_dropout=lora_dropout)


def activation_bytes(facts: ModelSpec, seq_len: int, micro_batch: int, attention: str, method: str,
                     gradient_checkpointing: bool, precision: str, *, lora_rank: int = 16,
                     lora_targets: str | Sequence[str] = "all-linear", lora_dropout: float = 0.0) -> ActivationBytes:
    """Activation memory per GPU for one micro-batch (activations are never sharded by ZeRO).

    Args:
        facts: ModelSpec (hidden_size, num_layers, heads, kv heads, intermediate_size, vocab_size).
        seq_len, micro_batch: tokens per sequence and sequences per GPU.
        attention: sdpa | flash_attention_2 | eager.
        method: full | lora | qlora (qlora modelled as lora: bitsandbytes could not be traced).
        gradient_checkpointing: full (non-reentrant) checkpointing of every decoder layer.
        precision: bf16 | fp16 | pure_bf16 | fp32 (fp32 doubles every activation).
        lora_rank, lora_targets, lora_dropout: adapter settings for lora/qlora.
    Returns:
        ActivationBytes; its peak_bytes is the number to add to weights, grads and optimizer states.
    """
    s, b, h = seq_len, micro_batch, facts.hidden_size
    dtype_bytes = 4.0 if precision == "fp32" else 2.0
    one_layer = layer_bytes(facts, s, b, attention, dtype_bytes, method=method, lora_rank=lora_rank,
                            lora_targets=lora_targets, lora_dropout=lora_dropout)
    transient = _backward_transient(facts, s, b, attention, method)
    # Final RMSNorm: fp32 copy (4h), plus the bf16 normalised tensor and output (4h) when it trains.
    final_norm = s * b * (4 if method in ("lora", "qlora") else 8) * h * dtype_bytes / 2.0
    n = facts.num_layers
    if gradient_checkpointing:
        # Each layer keeps only its input; backward recomputes one layer at a time (the final
        # norm's tensors are gone by then, so it counts once, in stored). QLoRA: peft's
        # prepare_model_for_kbit_training casts the norms to fp32, and an fp32 norm weight times a
        # bf16 tensor is fp32, so the residual stream (each layer's saved input) is fp32.
        stored = n * stored_layer_bytes(facts, s, b, attention, method, True, precision) + final_norm
        working = one_layer + transient - final_norm
    else:
        stored, working = n * one_layer + final_norm, transient
    return ActivationBytes(stored, working, logits_loss_bytes(facts, s, b, precision))


def logits_loss_bytes(facts: ModelSpec, seq_len: int, micro_batch: int, precision: str) -> float:
    """Logits and loss at the start of backward: 12*s*b*V bytes, whatever the precision.

    transformers upcasts the logits to fp32 for cross-entropy; log-softmax keeps its fp32 output
    (4sbV) for backward, and backward opens with two more fp32 s*b*V tensors, the gradients of
    nll_loss and of log_softmax (8sbV). The bf16 logits (2sbV) are freed before backward; the
    forward's own loss peak (2 + 4 + 4 = 10sbV) is lower.
    """
    return 12.0 * seq_len * micro_batch * facts.vocab_size
