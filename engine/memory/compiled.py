"""Bytes per token a torch.compile'd decoder layer keeps for backward (compile_terms.json, no torch).

Under torch.compile, AOTAutograd's partitioner (inductor's min-cut) decides what a layer saves; it
recomputes casts, norm scaling and activations in backward instead of keeping them, so a compiled
Llama layer keeps 8h + 4q + 4kv + 6I + 4a + 8 bytes per token where the eager one keeps 16h + ... + 8I
(engine/probe/compiled.py traces it; bench/compile_terms.py fits each model type's coefficients).

LoRA under compile: peft casts each adapter's input to fp32 on its own; the partitioner keeps one
fp32 copy per distinct input, and the frozen layer's own saved tensors already pay for one h-wide
copy. On the traces (llama, qwen2, gpt_neox, opt, phi and phi3, target lists the fit never saw),
adapters add 4r each (lora_A's fp32 output) plus 4d per distinct input they read (the attention
input q/k/v share one, the attention output o its own, the MLP input gate/up/fc1 one, the MLP
product down_proj, width I, its own), less 4h once; phi's attention and MLP read one input. With
dropout each adapter keeps its 1-byte mask and its own fp32 dropped input (5d), less 4h once.
phi3's fused gate_up_proj, once adapted, also keeps its 16-bit 2I output.
A model type without terms keeps the eager count (activations.layer_bytes); eager attention has
terms of its own (its score matrices: heads x tokens).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from .arch_terms import shipped_terms


def _terms() -> dict[str, dict[str, Any]]:
    return shipped_terms("compile_terms.json")


def compiled_types() -> frozenset[str]:
    """The model types with compiled-layer terms."""
    return frozenset(_terms())


def layer_per_token(model_type: str, method: str, attention: str, widths: Mapping[str, float],
                    adapted: Sequence[tuple[str, float]] = (), lora_rank: int = 16,
                    lora_dropout: float = 0.0) -> float | None:
    """Bytes per token one compiled decoder layer keeps (16-bit activations), adapters included.

    Args:
        model_type, method, attention: as arch_terms.layer_per_token (flash_attention_2 takes SDPA's terms).
        widths: h, q, kv, kv_eager, I, a, "1", "as", "s" (activations.layer_bytes).
        adapted: (name, input width) of each Linear LoRA adapts (activations._lora_linears).
        lora_rank, lora_dropout: the adapters' rank and dropout.
    Returns:
        The bytes, or None where the eager count applies.
    """
    row = _terms().get(model_type) or {}
    # A type's eager terms are shipped only where the traces are linear in the widths (bench/compile_terms.py).
    terms = row.get("full" if method == "full" else "lora", {}).get("eager" if attention == "eager" else "sdpa")
    if terms is None:
        return None
    layer = float(sum(c * widths[k] for k, c in terms.items()))
    if method == "full":
        return layer
    return layer + adapter_per_token(adapted, widths, lora_rank, lora_dropout, model_type in _ONE_NORM)


# The last name component of the Linears that read the attention output, the MLP input and the MLP
# product, across the model types with terms (the MLP product is also told by its width, I).
_ATTENTION_OUT = frozenset({"o_proj", "out_proj", "dense", "c_proj"})
_MLP_IN = frozenset({"gate_proj", "up_proj", "fc1", "c_fc", "dense_h_to_4h", "w1", "w3", "gate_up_proj"})
_MLP_OUT = frozenset({"down_proj", "fc2", "dense_4h_to_h", "w2"})
# Model types whose attention and MLP read one norm's output (modeling_phi.py PhiDecoderLayer: one
# input_layernorm, attention and MLP side by side): their adapters' inputs are one group.
_ONE_NORM = frozenset({"phi"})


def adapter_per_token(adapted: Sequence[tuple[str, float]], widths: Mapping[str, float], lora_rank: int,
                      lora_dropout: float, one_norm: bool = False) -> float:
    """Bytes per token the compiled layer's adapters add to the frozen layer (the module docstring's rule).

    Args:
        adapted: (name, input width) of each adapted Linear of one decoder layer.
        widths: h and I of the layer.
        lora_rank, lora_dropout: the adapters' rank and dropout.
        one_norm: attention and MLP read the same normalised input (_ONE_NORM).
    """
    if not adapted:
        return 0.0
    h, inter = widths["h"], widths["I"]
    inputs: dict[str, float] = {}
    fused = 0.0
    for name, width in adapted:
        last = name.split(".")[-1]
        if width == inter or last in _MLP_OUT:
            group = "mlp_product"
        elif last in _MLP_IN:
            group = "attention_in" if one_norm else "mlp_in"
        else:
            group = "attention_out" if last in _ATTENTION_OUT else "attention_in"
        inputs.setdefault(group, width)
        if last == "gate_up_proj":
            # phi3's fused gate/up output (2I, 16-bit) is kept once its sum with the adapter's is new.
            fused += 4.0 * inter
    rank_outputs = 4.0 * lora_rank * len(adapted)
    if lora_dropout > 0:
        # each adapter keeps its mask and its own fp32 dropped input instead of the shared copies
        return rank_outputs + 5.0 * sum(width for _, width in adapted) - 4.0 * h + fused
    return rank_outputs + 4.0 * sum(inputs.values()) - 4.0 * h + fused
