"""Probe-measured scales for decoder layers the closed form does not describe (arch_scale.json).

engine/memory/activations.py counts a decoder layer with Llama's structure (RMSNorm with fp32 copies,
separate q/k/v, gated MLP), checked to 1 % against the probe for the families it was written for.
Other architectures (LayerNorm, plain MLPs, fused qkv, parallel residuals) store a different
amount; bench/arch_scale.py has the probe trace one reference layer of each and ships traced /
formula per model type and method. A model type not in the file keeps the closed form unscaled.
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def _scales() -> dict[str, dict[str, float]]:
    text = resources.files("memfit.engine.memory").joinpath("arch_scale.json").read_text(encoding="utf-8")
    scales: dict[str, dict[str, float]] = json.loads(text)["scales"]
    return scales


def arch_scale(model_type: str, method: str) -> float:
    """Traced over closed-form bytes of one decoder layer of this model type.

    Args:
        model_type: the config's model_type.
        method: full | lora | qlora (QLoRA takes LoRA's scale: the probe cannot trace bitsandbytes).
    Returns:
        The ratio, 1.0 for a model type the file does not hold.
    """
    row = _scales().get(model_type)
    if row is None:
        return 1.0
    return row["full" if method == "full" else "lora"]
