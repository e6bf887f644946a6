"""LLaMA-Factory training YAML <-> memfit plan.

Argument names and defaults read in hiyouga/LLaMA-Factory src/llamafactory/hparams/:
finetuning_args.py (finetuning_type lora|oft|freeze|full, default lora; lora_rank default 8; lora_alpha
default None = 2 x rank; lora_dropout; lora_target default "all" = all linear layers; pure_bf16),
model_args.py (model_name_or_path; quantization_bit; flash_attn auto|disabled|sdpa|fa2 (AttentionFunction);
disable_gradient_checkpointing, default False: LLaMA-Factory turns checkpointing on unless disabled),
data_args.py (cutoff_len), and HF TrainingArguments (per_device_train_batch_size, default 8;
gradient_accumulation_steps; bf16; fp16; optim; deepspeed).
LLaMA-Factory runs the HF Trainer, so the DeepSpeed JSON it points at should be the "hf" flavor.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..core.inputs import load_yaml, read_text
from ..deepspeed.check import load_config
from ..deepspeed.config import accumulation_steps
from ..core.errors import PlanError
from ..plan.schema import Plan, plan_from_dict
from ..plan.strategy import Strategy

# Keys this module reads; every other key in the user's YAML is kept on write-back and listed as ignored.
READ_KEYS = frozenset({
    "model_name_or_path", "finetuning_type", "quantization_bit", "lora_rank", "lora_alpha", "lora_dropout",
    "lora_target", "cutoff_len", "per_device_train_batch_size", "gradient_accumulation_steps", "bf16", "fp16",
    "pure_bf16", "optim", "gradient_checkpointing", "disable_gradient_checkpointing", "flash_attn", "deepspeed"})
_ATTENTION = {"fa2": "flash_attention_2", "sdpa": "sdpa", "auto": "sdpa", "disabled": "eager", "eager": "eager"}
_ATTENTION_BACK = {"flash_attention_2": "fa2", "sdpa": "sdpa", "eager": "disabled"}
_EIGHT_BIT = {"adamw_bnb_8bit", "adamw_8bit", "paged_adamw_8bit", "adamw_torch_8bit"}


def _load(path_or_dict: str | Path | dict[str, Any]) -> tuple[dict[str, Any], str, Path]:
    if isinstance(path_or_dict, dict):
        return dict(path_or_dict), "<llamafactory>", Path(".")
    p = Path(path_or_dict)
    data = load_yaml(read_text(p, "the LLaMA-Factory YAML", PlanError), str(p), PlanError)
    if not isinstance(data, dict):
        raise PlanError(f"{p}: a LLaMA-Factory config must be a mapping")
    return data, str(p), p.parent


def _method(lf: dict[str, Any], source: str) -> str:
    kind = lf.get("finetuning_type", "lora")  # LLaMA-Factory's default is lora
    if kind not in ("full", "lora", "freeze", "oft"):
        raise PlanError(f"{source}: finetuning_type: must be full, lora, freeze or oft (got {kind!r})")
    if kind in ("full", "freeze"):
        return "full"  # freeze trains a subset: full fine-tuning is the conservative upper bound
    return "qlora" if lf.get("quantization_bit") == 4 else "lora"


def _precision(lf: dict[str, Any]) -> str:
    if lf.get("pure_bf16"):
        return "pure_bf16"
    if lf.get("bf16"):
        return "bf16"
    return "fp16" if lf.get("fp16") else "fp32"


def _optimizer(optim: str | None) -> str:
    if optim is None or (optim.startswith("adamw") and optim not in _EIGHT_BIT):
        return "adamw"
    if optim in _EIGHT_BIT:
        return "adamw_8bit"
    if optim.startswith("adafactor"):
        return "adafactor"
    return "sgd" if optim == "sgd" else "adamw"


def _lora(lf: dict[str, Any]) -> dict[str, Any]:
    rank = int(lf.get("lora_rank", 8))
    target = lf.get("lora_target", "all")
    targets = "all-linear" if target == "all" else [t.strip() for t in str(target).split(",") if t.strip()]
    return {"rank": rank, "alpha": lf.get("lora_alpha") or 2 * rank, "dropout": float(lf.get("lora_dropout", 0.0)),
            "target_modules": targets}


def _zero_from_ds(lf: dict[str, Any], base: Path) -> dict[str, Any]:
    path = lf.get("deepspeed")
    if not path:
        return {"zero_stage": 0, "offload_optimizer": "none", "offload_param": "none"}
    cfg = load_config(base / path)
    zero = cfg.get("zero_optimization") or {}
    stage = zero.get("stage", 0)

    def device(name: str) -> str:
        block = zero.get(name)
        return block.get("device", "none") if isinstance(block, dict) else "none"

    return {"zero_stage": stage, "offload_optimizer": device("offload_optimizer"),
            "offload_param": device("offload_param") if stage == 3 else "none"}


def plan_from_llamafactory(path_or_dict: str | Path | dict[str, Any], hardware: dict[str, Any],
                           pin_strategy: bool = True) -> dict[str, Any]:
    """Turn a LLaMA-Factory training YAML into a memfit plan mapping (check it with `plan_from_dict`).

    Args:
        path_or_dict: the YAML file or its parsed mapping.
        hardware: the plan's hardware section (LLaMA-Factory does not describe the machine).
        pin_strategy: pin the user's ZeRO stage, offloads, micro-batch and checkpointing (False leaves
            them "auto" so memfit may search alternatives).
    Returns:
        {"model", "hardware", "training"}; keys memfit does not read are listed by `ignored_keys`.
    Raises:
        PlanError: unreadable file, missing model_name_or_path, bad finetuning_type.
        ConfigCheckError: the referenced DeepSpeed JSON is unreadable.
    """
    lf, source, base = _load(path_or_dict)
    if not lf.get("model_name_or_path"):
        raise PlanError(f"{source}: model_name_or_path: required (the model to fine-tune)")
    micro = int(lf.get("per_device_train_batch_size", 8))  # HF TrainingArguments default
    world = int(hardware.get("gpus_per_node", 1)) * int(hardware.get("nodes", 1))
    training: dict[str, Any] = {
        "method": _method(lf, source), "seq_len": int(lf.get("cutoff_len", 2048)),
        "global_batch_size": micro * int(lf.get("gradient_accumulation_steps", 1)) * world,
        "precision": _precision(lf), "optimizer": _optimizer(lf.get("optim")),
        "attention": _ATTENTION.get(str(lf.get("flash_attn", "auto")), "sdpa"), "lora": _lora(lf)}
    if pin_strategy:
        gc = not lf.get("disable_gradient_checkpointing", False)
        training.update(micro_batch_size=micro, gradient_checkpointing=gc, **_zero_from_ds(lf, base))
    return {"model": lf["model_name_or_path"], "hardware": dict(hardware), "training": training}


def ignored_keys(path_or_dict: str | Path | dict[str, Any]) -> list[str]:
    """LLaMA-Factory keys memfit does not read (kept unchanged by `llamafactory_yaml`)."""
    lf, _, _ = _load(path_or_dict)
    return sorted(k for k in lf if k not in READ_KEYS)


def _precision_flags(precision: str) -> dict[str, bool]:
    return {"bf16": precision == "bf16", "fp16": precision == "fp16", "pure_bf16": precision == "pure_bf16"}


def llamafactory_yaml(plan: Plan, strategy: Strategy, ds_config_path: str,
                      original: str | Path | dict[str, Any] | None = None) -> str:
    """Write a LLaMA-Factory YAML for the chosen strategy, keeping the user's other keys.

    Args:
        plan: supplies precision, seq_len, LoRA settings, attention, global batch.
        strategy: the chosen strategy.
        ds_config_path: the emitted DeepSpeed JSON ("hf" flavor) that `deepspeed:` points at.
        original: the user's LLaMA-Factory YAML (path or mapping); its comments are not preserved.
    Returns:
        YAML text with a header comment.
    """
    lf = _load(original)[0] if original is not None else {"model_name_or_path": plan.model
                                                          if isinstance(plan.model, str) else "MODEL"}
    t = plan.training
    lf.pop("quantization_bit", None)
    lf["finetuning_type"] = "full" if strategy.method == "full" else "lora"
    if strategy.method == "qlora":
        lf["quantization_bit"] = 4
    if strategy.method != "full":
        targets = t.lora.target_modules
        lf.update(lora_rank=t.lora.rank, lora_alpha=t.lora.alpha,
                  lora_target="all" if targets == "all-linear" else ",".join(targets))
    lf.update(cutoff_len=t.seq_len, per_device_train_batch_size=strategy.micro_batch_size,
              gradient_accumulation_steps=accumulation_steps(strategy, plan),
              disable_gradient_checkpointing=not strategy.gradient_checkpointing,
              flash_attn=_ATTENTION_BACK[t.attention], deepspeed=ds_config_path, **_precision_flags(t.precision))
    lf.pop("gradient_checkpointing", None)  # LLaMA-Factory's switch is disable_gradient_checkpointing
    header = (f"# LLaMA-Factory config written by memfit for strategy {strategy.key}.\n"
              f"# Run: llamafactory-cli train THIS_FILE (FORCE_TORCHRUN=1 for several GPUs).\n")
    return header + yaml.safe_dump(lf, sort_keys=False)


def plan_from_llamafactory_file(lf_path: str | Path, hardware_path: str | Path) -> Plan:
    """A memfit plan from a LLaMA-Factory training YAML plus a file holding a `hardware:` mapping
    (a memfit plan or just the hardware section). Strategy choices stay open for the search."""
    from ..integrations.llamafactory import plan_from_llamafactory

    text = read_text(hardware_path, "the hardware", PlanError)
    hw_doc = load_yaml(text, str(hardware_path), PlanError) or {}
    hardware = hw_doc.get("hardware", hw_doc) if isinstance(hw_doc, dict) else None
    if not isinstance(hardware, dict):
        raise PlanError(f"{hardware_path}: hardware: expected a mapping (gpu_memory, gpus_per_node, host_memory)")
    data = plan_from_llamafactory(lf_path, hardware, pin_strategy=False)
    return plan_from_dict(data, str(lf_path), Path(lf_path).parent)


def llamafactory_files(lf_path: str | Path, plan: Plan, advice) -> dict[str, str]:
    """ds_config.json (HF flavor, as LLaMA-Factory's trainer fills "auto") and the corrected lf.yaml."""
    import json

    from ..integrations.llamafactory import llamafactory_yaml
    from ..advice.files import hf_config

    best = advice.best
    if best is None:
        return {}
    return {"ds_config.json": json.dumps(hf_config(best, plan), indent=2) + "\n",
            "lf.yaml": llamafactory_yaml(plan, best.to_strategy(), "ds_config.json", original=lf_path)}
