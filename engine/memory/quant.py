"""Bytes of a frozen quantised base: the storage layout of each format's quantised Linear.

A model config that carries `quantization_config` (a GPTQ, AWQ, AQLM, bitsandbytes, fp8 or
compressed-tensors checkpoint), or a plan's `training.lora.quantization_config`, makes the base frozen
and quantised: LoRA adapters train over it and full fine-tuning is refused (rules/method.yaml).
Only the Linear weights inside the decoder layers are quantised (each format skips lm_head by
default); embeddings, norms, biases and the LM head keep their 16-bit dtype, and peft's
`prepare_model_for_kbit_training` (peft/utils/other.py) casts them to fp32 except for GPTQ, AQLM, EETQ,
HQQ and torchao models. Layouts, per Linear of K in-features and N out-features:

- GPTQ (auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py QuantLinear.__init__): qweight int32
  [K*bits/32, N], qzeros int32 [ceil(K/g), N*bits/32], scales fp16 [ceil(K/g), N], g_idx int32 [K];
  group_size -1 means one group of K.
- AWQ (autoawq awq/modules/linear/gemm.py WQLinear_GEMM.__init__): qweight int32 [K, N*bits/32],
  qzeros int32 [K/g, N*bits/32], scales fp16 [K/g, N]; no g_idx.
- AQLM (aqlm/inference.py QuantizedLinear.__init__): codes int{nbits} [N/out_g, K/in_g, codebooks],
  codebooks fp16 [codebooks, 2**nbits, out_g, in_g], scales fp16 [N/out_g].
- bitsandbytes 4-bit (bitsandbytes/functional.py quantize_4bit, QuantState): 4 bits per weight, an fp32
  absmax per 64-weight block; with double quantisation the absmax is 8-bit, plus an fp32 absmax per
  256 blocks (QLoRA paper, sec. 2).
- bitsandbytes 8-bit (bitsandbytes/nn/modules.py Int8Params, functional.int8_vectorwise_quant): int8
  weight [N, K] (CB) plus an fp32 scale per output row (SCB) [N].
- fp8 (transformers integrations/finegrained_fp8.py, FineGrainedFP8Config weight_block_size (128, 128)):
  float8_e4m3fn weight [N, K] plus an fp32 weight_scale_inv per block [ceil(N/128), ceil(K/128)].
- compressed-tensors (config_groups.*.weights: num_bits, group_size / strategy): num_bits per weight,
  a 16-bit scale per group (strategy group: K/g per row; channel: one per row; tensor: one) and, when
  not symmetric, a zero point of num_bits per group.
"""
from __future__ import annotations

import json
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Mapping

from ..core.units import BYTES_PER_DTYPE
from ..plan.quantization import DEFAULT_QLORA_CONFIG, METHODS, QuantFormat, parse_quantization

__all__ = ["DEFAULT_QLORA_CONFIG", "METHODS", "QuantFormat", "parse_quantization", "base_format",
           "checkpoint_quantization", "quantized_base_bytes"]

if TYPE_CHECKING:
    from ..model.spec import ModelSpec

@lru_cache(maxsize=64)
def _parsed(text: str, where: str) -> QuantFormat:
    return parse_quantization(json.loads(text), where)


def checkpoint_quantization(facts: ModelSpec) -> QuantFormat | None:
    """The quantisation the model's own config.json carries (a pre-quantised checkpoint), or None."""
    cfg = facts.config.get("quantization_config") if facts.config else None
    if cfg is None:
        return None
    if not isinstance(cfg, Mapping):
        return parse_quantization(cfg, f"{facts.name}: quantization_config")
    return _parsed(json.dumps(cfg, sort_keys=True, default=str), f"{facts.name}: quantization_config")


def base_format(facts: ModelSpec, method: str, plan_config: Mapping[str, Any] | None) -> QuantFormat | None:
    """The frozen base's layout for a method: the checkpoint's own, else (qlora) the plan's or NF4.

    Args:
        facts: the model (its config may carry quantization_config).
        method: full | lora | qlora.
        plan_config: training.lora.quantization_config of the plan, or None.
    Returns:
        QuantFormat, or None for a 16-bit base (full fine-tuning, or LoRA of an unquantised checkpoint).
    """
    if method == "full":
        return None
    own = checkpoint_quantization(facts)
    if own is not None:
        return own  # transformers loads a quantised checkpoint in its own format whatever else is asked
    if method != "qlora":
        return None
    cfg = plan_config if plan_config is not None else DEFAULT_QLORA_CONFIG
    return _parsed(json.dumps(dict(cfg), sort_keys=True, default=str), "training.lora.quantization_config")


def quantized_base_bytes(facts: ModelSpec, fmt: QuantFormat, upcast: bool | None = None) -> float:
    """Bytes of the whole frozen base: quantised decoder Linears plus the rest in 16 or 32 bits
    (32 when `upcast`, default the format's own `upcasts_rest`: peft's k-bit preparation)."""
    quantised = [x for x in facts.linear_layers if x.kind in ("linear", "expert")]
    stored = sum(fmt.linear_bytes(x.in_features, x.out_features) * x.count for x in quantised)
    rest = facts.total_params - sum(x.weight_params for x in quantised)
    upcast = fmt.upcasts_rest if upcast is None else upcast
    return stored + rest * BYTES_PER_DTYPE["fp32" if upcast else "bf16"]
