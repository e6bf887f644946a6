"""Reading a `quantization_config` (transformers' keys) into a storage layout: the plan key
`training.lora.quantization_config` is checked with it when the plan loads, and a checkpoint's own
config with it when the memory model counts the base (engine/memory/quant.py has the layouts' sources).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from ..core.errors import ModelSpecError

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


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _int(cfg: Mapping[str, Any], key: str, default: int, where: str) -> int:
    value = cfg.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not -1 <= value <= 2**20 or value == 0:
        raise ModelSpecError(f"{_at(where, key)}: must be a positive integer or -1 (got {value!r})")
    return value


def _compressed_tensors(cfg: Mapping[str, Any], where: str) -> QuantFormat:
    groups = cfg.get("config_groups") or {}
    weights = next((g.get("weights") for g in groups.values() if isinstance(g, dict) and g.get("weights")), None)
    if not isinstance(weights, dict):
        raise ModelSpecError(f"{_at(where, 'config_groups')}: no group with a 'weights' quantisation scheme")
    bits = _int(weights, "num_bits", 8, _at(where, "config_groups.weights"))
    strategy = weights.get("strategy", "group" if weights.get("group_size") else "channel")
    size = {"group": _int(weights, "group_size", 128, _at(where, "config_groups.weights")),
            "channel": 0, "tensor": -1}.get(str(strategy))
    if size is None:
        raise ModelSpecError(f"{_at(where, 'config_groups.weights.strategy')}: must be group, channel or tensor "
                             f"(got {strategy!r})")
    return QuantFormat("compressed-tensors", bits, size, symmetric=bool(weights.get("symmetric", True)))


def parse_quantization(cfg: Any, where: str = "quantization_config") -> QuantFormat:
    """The storage layout a `quantization_config` mapping describes (transformers' own key names).

    Args:
        cfg: the mapping (config.json's quantization_config or the plan's lora.quantization_config).
        where: the key path for messages, e.g. "model.quantization_config"; "" when the caller names it.
    Returns:
        QuantFormat.
    Raises:
        ModelSpecError: not a mapping, an unsupported quant_method, or out-of-range bits / group sizes.
    """
    if not isinstance(cfg, Mapping):
        raise ModelSpecError(f"{where or 'quantization_config'}: must be a mapping with quant_method "
                             f"(got {type(cfg).__name__})")
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
        raise ModelSpecError(f"{where + ': ' if where else ''}bitsandbytes needs load_in_4bit or load_in_8bit "
                             "set to true")
    if method in ("fp8", "fbgemm_fp8"):
        return QuantFormat("fp8", 8, 128)
    if method == "compressed-tensors":
        return _compressed_tensors(cfg, where)
    raise ModelSpecError(f"{_at(where, 'quant_method')}: memfit models {', '.join(METHODS)} (got {method!r})")
