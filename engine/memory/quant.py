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
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Mapping

from ..core.errors import ModelSpecError
from ..core.units import BYTES_PER_DTYPE

if TYPE_CHECKING:
    from ..model.spec import ModelSpec

# peft/utils/other.py prepare_model_for_kbit_training: no fp32 upcast of the other parameters for these.
_NO_UPCAST = frozenset({"gptq", "aqlm", "eetq", "hqq", "torchao"})
METHODS = ("gptq", "awq", "aqlm", "bitsandbytes", "fp8", "compressed-tensors")
# QLoRA's default base (bitsandbytes NF4, double quantisation): what method qlora means without a config.
DEFAULT_QLORA_CONFIG: Mapping[str, Any] = {"quant_method": "bitsandbytes", "load_in_4bit": True,
                                           "bnb_4bit_use_double_quant": True}


@dataclass(frozen=True)
class QuantFormat:
    """One quantised storage layout, read from a `quantization_config`."""

    method: str          # gptq | awq | aqlm | bitsandbytes | fp8 | compressed-tensors
    bits: int            # bits per stored weight code
    group_size: int      # weights per scale along in-features; -1: the whole row; 0: per format
    double_quant: bool = False   # bitsandbytes 4-bit nested absmax
    symmetric: bool = True       # compressed-tensors: no zero point
    in_group: int = 8            # AQLM in_group_size
    out_group: int = 1           # AQLM out_group_size
    codebooks: int = 1           # AQLM num_codebooks

    @property
    def label(self) -> str:
        """Short name for messages and facts, e.g. 'gptq-4bit-g128'."""
        group = f"-g{self.group_size}" if self.method in ("gptq", "awq", "compressed-tensors") else ""
        return f"{self.method}-{self.bits}bit{group}"

    @property
    def upcasts_rest(self) -> bool:
        """peft's k-bit preparation casts the non-quantised 16-bit parameters to fp32."""
        return self.method not in _NO_UPCAST

    def linear_bytes(self, k: int, n: int) -> float:
        """Stored bytes of one quantised Linear weight with k in-features and n out-features (no bias)."""
        if self.method in ("gptq", "awq"):
            g = k if self.group_size in (-1, 0) else self.group_size
            groups = math.ceil(k / g)
            packed = k * n * self.bits / 8 + groups * n * self.bits / 8  # qweight + qzeros (int32 words)
            return packed + groups * n * 2 + (4 * k if self.method == "gptq" else 0)  # fp16 scales, g_idx
        if self.method == "aqlm":
            codes = (n // self.out_group) * (k // self.in_group) * self.codebooks * self.bits / 8
            books = self.codebooks * (1 << self.bits) * self.out_group * self.in_group * 2
            return codes + books + (n // self.out_group) * 2
        if self.method == "bitsandbytes" and self.bits == 4:
            blocks = math.ceil(k * n / 64)
            absmax = blocks * 1 + math.ceil(blocks / 256) * 4 if self.double_quant else blocks * 4
            return k * n / 2 + absmax
        if self.method == "bitsandbytes":
            return k * n + 4 * n  # int8 CB + fp32 SCB per row
        if self.method == "fp8":
            return k * n + math.ceil(n / 128) * math.ceil(k / 128) * 4
        # compressed-tensors: group_size > 0 per group, 0 per output channel, -1 one per tensor.
        scales = n * math.ceil(k / self.group_size) if self.group_size > 0 else (n if self.group_size == 0 else 1)
        zeros = 0.0 if self.symmetric else scales * self.bits / 8
        return k * n * self.bits / 8 + scales * 2 + zeros


def _int(cfg: Mapping[str, Any], key: str, default: int, where: str) -> int:
    value = cfg.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not -1 <= value <= 2**20 or value == 0:
        raise ModelSpecError(f"{where}.{key}: must be a positive integer or -1 (got {value!r})")
    return value


def _compressed_tensors(cfg: Mapping[str, Any], where: str) -> QuantFormat:
    groups = cfg.get("config_groups") or {}
    weights = next((g.get("weights") for g in groups.values() if isinstance(g, dict) and g.get("weights")), None)
    if not isinstance(weights, dict):
        raise ModelSpecError(f"{where}.config_groups: no group with a 'weights' quantisation scheme")
    bits = _int(weights, "num_bits", 8, f"{where}.config_groups.weights")
    strategy = weights.get("strategy", "group" if weights.get("group_size") else "channel")
    size = {"group": _int(weights, "group_size", 128, f"{where}.config_groups.weights"),
            "channel": 0, "tensor": -1}.get(str(strategy))
    if size is None:
        raise ModelSpecError(f"{where}.config_groups.weights.strategy: must be group, channel or tensor "
                             f"(got {strategy!r})")
    return QuantFormat("compressed-tensors", bits, size, symmetric=bool(weights.get("symmetric", True)))


def parse_quantization(cfg: Any, where: str = "quantization_config") -> QuantFormat:
    """The storage layout a `quantization_config` mapping describes (transformers' own key names).

    Args:
        cfg: the mapping (config.json's quantization_config or the plan's lora.quantization_config).
        where: the key path for messages, e.g. "model.quantization_config".
    Returns:
        QuantFormat.
    Raises:
        ModelSpecError: not a mapping, an unsupported quant_method, or out-of-range bits / group sizes.
    """
    if not isinstance(cfg, Mapping):
        raise ModelSpecError(f"{where}: must be a mapping with quant_method (got {type(cfg).__name__})")
    method = str(cfg.get("quant_method", "bitsandbytes" if ("load_in_4bit" in cfg or "load_in_8bit" in cfg) else ""))
    if method == "gptq" or method == "awq":
        bits = _int(cfg, "bits", 4, where)
        return QuantFormat(method, bits, _int(cfg, "group_size", 128, where))
    if method == "aqlm":
        return QuantFormat("aqlm", _int(cfg, "nbits_per_codebook", 16, where), 0,
                           in_group=_int(cfg, "in_group_size", 8, where),
                           out_group=_int(cfg, "out_group_size", 1, where),
                           codebooks=_int(cfg, "num_codebooks", 1, where))
    if method == "bitsandbytes":
        if cfg.get("load_in_8bit"):
            return QuantFormat("bitsandbytes", 8, 0)
        if cfg.get("load_in_4bit"):
            return QuantFormat("bitsandbytes", 4, 64, double_quant=bool(cfg.get("bnb_4bit_use_double_quant", False)))
        raise ModelSpecError(f"{where}: bitsandbytes needs load_in_4bit or load_in_8bit set to true")
    if method in ("fp8", "fbgemm_fp8"):
        return QuantFormat("fp8", 8, 128)
    if method == "compressed-tensors":
        return _compressed_tensors(cfg, where)
    raise ModelSpecError(f"{where}.quant_method: memfit models {', '.join(METHODS)} (got {method!r})")


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


def quantized_base_bytes(facts: ModelSpec, fmt: QuantFormat) -> float:
    """Bytes of the whole frozen base: quantised decoder Linears plus the rest in 16 or 32 bits."""
    quantised = [x for x in facts.linear_layers if x.kind in ("linear", "expert")]
    stored = sum(fmt.linear_bytes(x.in_features, x.out_features) * x.count for x in quantised)
    rest = facts.total_params - sum(x.weight_params for x in quantised)
    return stored + rest * BYTES_PER_DTYPE["fp32" if fmt.upcasts_rest else "bf16"]
