"""Count any architecture transformers can build, on torch's meta device (no weights, no download).

The closed forms in arch.py cover the families memfit knows by heart; every other model_type that
transformers registers is counted here by building the model on the meta device
(`with torch.device("meta"): AutoModel*.from_config(config)`) and reading its module tree. The result is a
plain JSON-able mapping (see `COUNT_KEYS`) that cache.py stores on disk, so torch is imported only the
first time a config is seen.

What is read from the built model (transformers 5.x module trees):
- the decoder layers: the `nn.ModuleList` whose length is the text config's `num_hidden_layers`, outside
  any vision/audio tower;
- the text model: that list's parent (`model.model`, or `model.model.language_model` for wrappers),
  plus the output embedding when it is not tied. Everything else (vision tower, projector/merger) is
  `frozen_extra_params`: held in memory, frozen by default, never targeted by LoRA;
- Linear layers inside the decoder layers, by their path inside one layer ("self_attn.q_proj");
  `nn.Linear` and transformers' `Conv1D` (GPT-2, weight stored in x out); fused MoE experts are 3-D
  parameters (experts, out, in) and routers non-Linear modules holding a 2-D `weight`.
What peft's "all-linear" reaches is read off peft itself: `nn.Linear`/`Conv1D` modules always; fused
experts (at rank 2r for `gate_up_proj`, one adapter per expert) and custom router modules only for some
model types, decided by peft's v4->v5 weight-conversion code (peft/utils/transformers_weight_conversion.py),
which differs between releases: peft 0.21 wraps qwen3_moe's and deepseek's experts and router but not
qwen2_moe's, and in those MoE models it skips the dense layers' own gate_proj/up_proj/down_proj (their
v4 names are remapped to the fused experts). So the count wraps the meta model once with LoRA r=1
"all-linear" and reads what got an adapter (`_calibrate_all_linear`).
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from ..core.errors import ModelSpecError

_TOWER_WORDS = ("vision", "visual", "image", "audio", "vit", "patch")


def _build(config: Mapping[str, Any]) -> tuple[Any, Any]:
    """(model on the meta device, its config object). Imports torch and transformers."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # else a hub lookup retries for ~25 s
        os.environ.setdefault(var, "1")
    import torch
    import transformers
    from transformers.models.auto import modeling_auto

    fields = {k: v for k, v in config.items() if not k.startswith("_")}
    mtype = fields.pop("model_type", None)
    if not mtype:
        raise ModelSpecError("missing")
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if mtype not in CONFIG_MAPPING:
        raise ModelSpecError(f"{mtype!r} is not a model type transformers {transformers.__version__} knows; "
                             f"check the spelling, or upgrade transformers")
    try:
        cfg = transformers.AutoConfig.for_model(mtype, **fields)
    except Exception as exc:  # noqa: BLE001 - transformers' own validation (strict dataclass fields, ...)
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ModelSpecError(f"transformers rejects this {mtype!r} config ({first})") from None
    # A wrapper with a vision tower is built whole (its ForConditionalGeneration class), so the tower is
    # counted; a text-only config is built as *ForCausalLM.
    wrapper = getattr(cfg, "vision_config", None) is not None
    mapping = modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
    auto = transformers.AutoModelForImageTextToText if wrapper and mtype in mapping else transformers.AutoModelForCausalLM
    try:
        with torch.device("meta"):
            model = auto.from_config(cfg)
    except Exception as exc:  # noqa: BLE001 - any failure of a foreign build is bad input, never a traceback
        raise ModelSpecError(f"transformers cannot build {mtype!r} from this config "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    return model, cfg


def _decoder_layers(model: Any, num_layers: int) -> tuple[str, Any]:
    """(dotted name, ModuleList) of the text decoder layers."""
    import torch

    found = [(name, m) for name, m in model.named_modules()
             if isinstance(m, torch.nn.ModuleList) and len(m) == num_layers
             and not any(w in name.lower() for w in _TOWER_WORDS)]
    if not found:
        raise ModelSpecError(f"no list of {num_layers} decoder layers in {type(model).__name__}")
    return found[0]


def _unique_numel(params: Any) -> int:
    seen: dict[int, int] = {}
    for p in params:
        seen[id(p)] = p.numel()  # tied weights are one tensor: count it once
    return sum(seen.values())


def _layer_linears(layer: Any, mtype: str) -> list[tuple[str, int, int, int, bool, str]]:
    """(name, in, out, instances, bias, kind) of each weight-holding Linear-like module of one layer."""
    import torch

    out = []
    for name, m in layer.named_modules():
        direct = dict(m.named_parameters(recurse=False))
        if isinstance(m, torch.nn.Linear):
            out.append((name, m.in_features, m.out_features, 1, m.bias is not None, "linear"))
        elif type(m).__name__ == "Conv1D" and "weight" in direct:  # transformers.pytorch_utils.Conv1D
            w = direct["weight"]
            out.append((name, int(w.shape[0]), int(w.shape[1]), 1, "bias" in direct, "linear"))
        elif isinstance(m, torch.nn.Embedding):
            continue
        else:
            for pname, p in direct.items():
                if p.dim() == 3:  # fused experts: (experts, out, in) in transformers 5
                    out.append((f"{name}.{pname}", int(p.shape[2]), int(p.shape[1]), int(p.shape[0]), False, "expert"))
                elif p.dim() == 2 and pname == "weight":  # a router: (experts, hidden)
                    out.append((name, int(p.shape[1]), int(p.shape[0]), 1, False, "router"))
    return out


def _linear_rows(layers: Any, mtype: str) -> list[dict[str, Any]]:
    """Linear layers summed over all decoder layers, one row per (name, shape, bias, kind)."""
    rows: dict[tuple[Any, ...], list[int]] = {}
    for index, layer in enumerate(layers):
        for name, fin, fout, n, bias, kind in _layer_linears(layer, mtype):
            rows.setdefault((name, fin, fout, bias, kind), [0, index])[0] += n
    return [{"name": name, "in_features": fin, "out_features": fout, "count": n, "bias": bias, "kind": kind,
             "aliases": [], "lora_rank_factor": 1, "all_linear": kind == "linear", "_layer": first}
            for (name, fin, fout, bias, kind), (n, first) in rows.items()]


def _expert_adapters(rows: list[dict[str, Any]], gate_up_factor: int) -> int:
    """LoRA r=1 elements of the fused experts, one adapter per expert (gate_up_proj at rank factor x r)."""
    return sum((gate_up_factor if r["name"].endswith("gate_up_proj") else 1) * (r["in_features"] + r["out_features"])
               * r["count"] for r in rows if r["kind"] == "expert")


def _calibrate_all_linear(model: Any, layers_name: str, rows: list[dict[str, Any]]) -> None:
    """Set each row's all_linear / lora_rank_factor from what peft's r=1 "all-linear" wraps (in place).

    Modules (Linear, routers) are asked directly whether peft gave them a `lora_A`; the fused experts are
    what is left of peft's adapter size. Wraps `model` (do it last). Without peft, only Linear layers count.
    """
    try:
        import peft
    except ModuleNotFoundError:
        return
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=1, target_modules="all-linear"))
    inside = f".{layers_name}."  # adapters of the decoder layers only (not a vision tower's)
    left = sum(p.numel() for n, p in wrapped.named_parameters() if p.requires_grad and inside in n)
    for r in rows:
        if r["kind"] != "expert":
            r["all_linear"] = hasattr(model.get_submodule(f"{layers_name}.{r['_layer']}.{r['name']}"), "lora_A")
            left -= (r["in_features"] + r["out_features"]) * r["count"] if r["all_linear"] else 0
    factor = next((f for f in (2, 1) if left and _expert_adapters(rows, f) == left), 0)
    for r in rows:
        if r["kind"] == "expert":
            r["all_linear"] = bool(factor)
            r["lora_rank_factor"] = factor if factor and r["name"].endswith("gate_up_proj") else 1


def _largest_module(model: Any) -> int:
    return int(max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()))


def _active(rows: list[dict[str, Any]], experts: int, per_token: int) -> int:
    """Expert weights a token does not use: (experts - k) / experts of each fused expert tensor."""
    if not experts or not per_token:
        return 0
    unused = 0
    for r in rows:
        if r["kind"] == "expert":
            unused += r["in_features"] * r["out_features"] * r["count"] * (experts - per_token) // experts
    return unused


def count_on_meta(config: Mapping[str, Any]) -> dict[str, Any]:
    """Build `config`'s model on the meta device and read its counting facts.

    Args:
        config: config.json fields including model_type (keys starting with "_" are ignored).
    Returns:
        A JSON-able mapping with the keys of COUNT_KEYS (counts are parameter elements).
    Raises:
        ModelSpecError: no model_type, a model_type transformers does not know, or a config it cannot build.
    """
    from . import fields as fieldmod

    model, cfg = _build(config)
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    facts = fieldmod.text_facts(lambda key: getattr(text, key, None), cfg.model_type)
    layers_name, layers = _decoder_layers(model, facts["num_layers"])
    text_model = model.get_submodule(layers_name.rsplit(".", 1)[0]) if "." in layers_name else model
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and head.weight is emb.weight
    lm_head = 0 if head is None or tied else _unique_numel(head.parameters())
    total_all = _unique_numel(model.parameters())
    text_params = _unique_numel(list(text_model.parameters()) + ([] if head is None else list(head.parameters())))
    rows = _linear_rows(layers, cfg.model_type)
    dense = sum(1 for layer in layers if not any(p.dim() == 3 for p in layer.parameters()))
    facts.update(
        total_params=text_params, frozen_extra_params=total_all - text_params,
        active_params=text_params - _active(rows, facts["num_experts"], facts["experts_per_token"]),
        largest_layer_params=_largest_module(model), embedding_params=emb.weight.numel(), lm_head_params=lm_head,
        tie_word_embeddings=tied, linear_layers=rows,
        num_dense_layers=dense if facts["num_experts"] else facts["num_layers"],
    )
    _calibrate_all_linear(model, layers_name, rows)
    for r in rows:
        del r["_layer"]
    return facts



def meta_device_count(config: Mapping[str, Any], lora_rank: int | None = None,
                      lora_targets: str | Sequence[str] = "all-linear") -> dict[str, int]:
    """The independent oracle: total parameters of the *ForCausalLM built on the meta device (~1-3 s).

    Kept apart from count_on_meta (it reads nothing but `model.parameters()`), so tests can check the
    closed forms and the module-tree reading against it.

    Args:
        config: config.json fields including model_type (keys starting with "_" are ignored).
        lora_rank: when given, also wrap the model with peft LoRA and count trainable parameters.
        lora_targets: peft target_modules ("all-linear" or a list of module names).
    Returns:
        {"total_params", "largest_layer_params"} and, with lora_rank, "lora_trainable_params".
    Raises:
        ModelSpecError: config without model_type, or one transformers cannot build.
    """
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")
    import torch
    import transformers

    fields = {k: v for k, v in config.items() if not k.startswith("_")}
    mtype = fields.pop("model_type", None)
    if not mtype:
        raise ModelSpecError("meta_device_count: config has no model_type")
    try:
        cfg = transformers.AutoConfig.for_model(mtype, **fields)
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(cfg)
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelSpecError(f"meta_device_count: transformers cannot build {mtype!r}: {exc}") from exc
    out = {
        "total_params": sum(p.numel() for p in model.parameters()),  # tied weights are counted once
        "largest_layer_params": max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()),
    }
    if lora_rank is not None:
        import peft

        targets = lora_targets if isinstance(lora_targets, str) else list(lora_targets)
        wrapped = peft.get_peft_model(model, peft.LoraConfig(r=lora_rank, target_modules=targets))
        out["lora_trainable_params"] = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    return out
