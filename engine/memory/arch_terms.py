"""Probe-fitted bytes per token for decoder layers the closed form does not describe (arch_terms.json).

engine/memory/activations.py counts a decoder layer with Llama's structure (RMSNorm with fp32 copies,
separate q/k/v, gated MLP), checked to 1 % against the probe for the families it was written for.
Other architectures (LayerNorm, plain MLPs, fused qkv, parallel residuals) keep other tensors; what
they keep is still a sum of widths (h, the query and key/value widths, I, the heads, and the heads
times the sequence for eager scores), so bench/arch_terms.py solves each model type's coefficients
from probe traces at several shapes and ships them. A model type not in the file keeps the closed form.
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any, Mapping


@lru_cache(maxsize=2)
def shipped_terms(name: str) -> dict[str, dict[str, Any]]:
    """The `terms` of a fitted-terms file shipped beside this module (arch_terms.json, compile_terms.json)."""
    text = resources.files("memfit.engine.memory").joinpath(name).read_text(encoding="utf-8")
    terms: dict[str, dict[str, Any]] = json.loads(text)["terms"]
    return terms


def _terms() -> dict[str, dict[str, Any]]:
    return shipped_terms("arch_terms.json")


def fitted_types() -> frozenset[str]:
    """The model types with probe-fitted terms."""
    return frozenset(_terms())


def layer_per_token(model_type: str, method: str, attention: str, widths: Mapping[str, float]) -> float | None:
    """Bytes per token one decoder layer keeps for backward, without LoRA adapters, 16-bit activations.

    Args:
        model_type: the config's model_type.
        method: full | lora | qlora (QLoRA takes LoRA's terms: the probe cannot trace bitsandbytes; the
            frozen layer is the same).
        attention: sdpa | flash_attention_2 (SDPA's terms: both keep no score matrix) | eager.
        widths: h, q (a*head_dim), kv (kv_heads*head_dim), kv_eager (the k/v width eager attention
            keeps: q once repeat_kv copies them to every head, 1 < kv heads < heads), I, a, "1", "as"
            (heads x tokens) and "s" (tokens).
    Returns:
        The sum of coefficient x width, or None for a model type without fitted terms.
    """
    row = _terms().get(model_type)
    if row is None:
        return None
    by_attention = row["full" if method == "full" else "lora"]
    terms: dict[str, float] = by_attention["eager" if attention == "eager" else "sdpa"]
    return float(sum(c * widths[k] for k, c in terms.items()))


def dropout_per_token(model_type: str, method: str, attention: str, config: Mapping[str, object],
                      widths: Mapping[str, float]) -> float:
    """Bytes per token the model's own dropouts add to one decoder layer (0 for a type without terms).

    Dropout keeps a 1-byte mask per element it drops from (and, where the next op saves its output,
    that too); the probe measures what each kind adds (bench/arch_terms.py): dropout on the attention
    probabilities only under eager attention (SDPA's CUDA kernels drop inside the kernel and keep only
    its RNG state), dropout on the hidden states under both. A key the config leaves out takes its
    config class's default (GPT-2's and GPT-BigCode's are 0.1, OPT's `dropout` is 0.1).
    """
    row = _terms().get(model_type)
    if row is None:
        return 0.0
    keys = row["dropout_keys"]
    defaults: Mapping[str, float] = keys["defaults"]
    terms = row["full" if method == "full" else "lora"]
    total = 0.0
    for kind in ("attention", "hidden"):
        if kind == "attention" and attention != "eager":
            continue
        if any(_rate(config.get(k), defaults.get(k, 0.0)) > 0 for k in keys[kind]):
            total += sum(c * widths[k] for k, c in terms[f"{kind}_dropout"].items())
    return float(total)


def _rate(value: object, default: float) -> float:
    """A config's dropout rate; absent or null takes the class default (what transformers does)."""
    if value is None:
        return default
    return float(value) if isinstance(value, (int, float)) else default
