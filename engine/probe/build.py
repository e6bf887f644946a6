"""The model and optimizer a probe trace runs: the real transformers architecture on the meta device,
then swapped for (fake) cpu tensors. Shared by the probe's step trace (engine/probe/probe.py) and the
allocation-event trace (engine/probe/events.py). torch, transformers and peft are imported inside
functions only.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence, Union

from ..core.errors import ProbeError

if TYPE_CHECKING:  # torch is not analysed (follow_imports = skip): its types read as Any
    import torch

LoraTargets = Union[str, Sequence[str]]  # peft's target_modules: "all-linear" or module names


def build_model(config: Mapping[str, Any], layers: int, attention: str, dtype: torch.dtype, method: str,
                 lora_rank: int, lora_targets: LoraTargets, lora_dropout: float, dora: bool = False) -> torch.nn.Module:
    """The architecture on the meta device, with `layers` decoder layers (and peft adapters, DoRA's when
    `dora`)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = {k: v for k, v in dict(config).items() if k not in ("torch_dtype", "dtype", "architectures")}
    if "model_type" not in cfg:
        raise ProbeError("probe: the model config has no model_type (e.g. llama, qwen2)")
    # bloom (and other GPT-style configs) name the layer count n_layer; transformers maps
    # num_hidden_layers onto it, so set the key the config itself uses.
    cfg["n_layer" if "n_layer" in cfg else "num_hidden_layers"] = layers
    if isinstance(cfg.get("layer_types"), list):
        cfg["layer_types"] = cfg["layer_types"][:layers]
    try:
        hf_config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    except (ValueError, KeyError) as exc:
        raise ProbeError(f"probe: transformers cannot build this config: {exc}") from None
    hf_config.use_cache = False
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype, attn_implementation=attention)
    if method in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model
        # On meta: get_peft_model on fake parameters fails (sources.md §3).
        lora = LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=lora_dropout,
                          target_modules=lora_targets, task_type="CAUSAL_LM", use_dora=dora)
        model = get_peft_model(model, lora)
    return model


def materialise(model: torch.nn.Module, tie: bool) -> None:
    """Swap meta parameters and buffers for (fake) cpu tensors, keeping dtypes and tied weights."""
    import torch

    # torch.empty (not empty_like) so no meta tensor reaches FakeTensorMode as an input.
    model._apply(lambda t: torch.empty(t.shape, dtype=t.dtype, device="cpu"))
    if tie:  # _apply converts a shared Parameter once per owning module: tie it again.
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        out = base.get_output_embeddings()
        if out is not None:
            out.weight = base.get_input_embeddings().weight


def make_optimizer(optimizer: str, params: list[torch.nn.Parameter], notes: list[str]) -> torch.optim.Optimizer:
    import torch

    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=1e-4, momentum=0.9)
    if optimizer == "adafactor" and hasattr(torch.optim, "Adafactor"):
        return torch.optim.Adafactor(params, lr=1e-4)
    if optimizer != "adamw":
        notes.append(f"optimizer {optimizer} traced as torch AdamW (its own kernels are not available here)")
    # foreach=True is torch's default on CUDA; its temporaries belong in the optimizer-step peak.
    return torch.optim.AdamW(params, lr=1e-4, foreach=True)
