"""A memfit plan from what an HF Trainer run was given: its TrainingArguments, the model (and its
config, peft adapter, quantisation), the DeepSpeed or FSDP config, and the hardware.

Read through attributes only (no transformers import here), with the names of transformers 5
`TrainingArguments` (per_device_train_batch_size, bf16, fp16, optim, gradient_checkpointing, deepspeed,
hf_deepspeed_config, fsdp, world_size) and of TRL's configs (max_length / max_seq_length).
FSDP has no plan key of its own: FULL_SHARD / HYBRID_SHARD (FSDP2 reshard_after_forward=True) shard
like ZeRO-3 and SHARD_GRAD_OP (reshard_after_forward=False) like ZeRO-2 (accelerate's FSDP1 -> FSDP2
mapping reads them the same way), `offload` / `cpu_offload` moves parameters and optimizer states to
the CPU; the notes say so.
"""
from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any, Optional, Union

from ..machine.detect import detect_hardware
from ..memory.states import EMBEDDING_NAMES, LM_HEAD_NAMES
from .optimizers import optimizer_of

if TYPE_CHECKING:  # for the annotations only (transformers and peft are not analysed: they read as Any)
    from peft import PeftModel
    from transformers import PreTrainedModel, TrainingArguments

    Model = Union[PreTrainedModel, PeftModel]

# Items of the training set looked at for the sequence length when nothing states it.
SEQ_LEN_PEEK = 256
# Placeholder GPU capacity for a run with no GPU: the estimate does not depend on it, and the
# preflight then checks host memory only (says so in its notes).
NO_GPU_PLACEHOLDER_GIB = 80.0


def _base(model: Model) -> PreTrainedModel:
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def _method_and_lora(model: Model) -> tuple[str, dict[str, Any]]:
    peft = getattr(model, "peft_config", None)
    if not peft:
        return "full", {}
    cfg = peft.get("default") or next(iter(peft.values()))
    targets = getattr(cfg, "target_modules", None) or "all-linear"
    lora: dict[str, Any] = {"rank": int(getattr(cfg, "r", 16)), "alpha": float(getattr(cfg, "lora_alpha", 32) or 32),
            "target_modules": targets if isinstance(targets, str) else sorted(targets)}
    # peft's modules_to_save copies (trainable in full); memfit counts embeddings and LM heads, and
    # leaves out heads peft adds by itself for other tasks (score, classifier).
    saved = [m for m in (getattr(cfg, "modules_to_save", None) or [])
             if str(m).rsplit(".", 1)[-1] in EMBEDDING_NAMES | LM_HEAD_NAMES]
    if saved:
        lora["modules_to_save"] = sorted(saved)
    # A k-bit base needs no flag here: the inline config's quantization_config carries its layout.
    quantised = getattr(_base(model), "is_loaded_in_4bit", False)
    return ("qlora" if quantised else "lora"), lora


def _precision(args: TrainingArguments, model: Model) -> str:
    if getattr(args, "bf16", False):
        return "bf16"
    if getattr(args, "fp16", False):
        return "fp16"
    dtype = str(getattr(_base(model), "dtype", "torch.float32"))
    # 16-bit weights without AMP train everything in 16 bits: pure_bf16 has the same byte sizes for fp16
    return "pure_bf16" if ("bfloat16" in dtype or "float16" in dtype) else "fp32"


def _checkpointing(base: PreTrainedModel) -> bool:
    # transformers 5 renamed is_gradient_checkpointing (deprecated) to is_activation_checkpointing
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(base), name):
            return bool(getattr(base, name))
    return False


def _optimizer(args: TrainingArguments) -> str:
    name = str(getattr(getattr(args, "optim", ""), "value", getattr(args, "optim", ""))).lower()
    return optimizer_of(name)[0]  # the live Trainer's OptimizerNames value (integrations/optimizers.py)


def _stack(args: TrainingArguments, base: PreTrainedModel, method: str, notes: list[str]) -> dict[str, Any]:
    """Stack keys the run itself shows: Liger's loss, an fp32 base under autocast, QLoRA's upcast (the
    AdamW implementation is the optimizer's name: adamw_torch_fused reads as adamw_fused,
    integrations/optimizers.py)."""
    out: dict[str, Any] = {}
    if getattr(args, "use_liger_kernel", False):  # Trainer applies Liger's kernels, fused linear cross-entropy
        out["loss"] = {"implementation": "fused_linear"}
        out["kernels"] = "liger"
        notes.append("use_liger_kernel: Liger's layer kernels and fused linear cross-entropy "
                     "(training.kernels liger, training.loss fused_linear)")
    if getattr(args, "torch_compile", False):  # the Trainer compiles the model, whose forward computes the loss
        out["compile"] = True
        notes.append("torch_compile: layers and loss keep what inductor saves (training.compile)")
    dtype = str(getattr(base, "dtype", ""))
    autocast = getattr(args, "bf16", False) or getattr(args, "fp16", False)
    if method != "qlora" and dtype == "torch.float32" and autocast:
        # from_pretrained without a 16-bit dtype under bf16/fp16: the Trainer autocasts over fp32 weights
        # (memory/autocast.py); DeepSpeed from ZeRO-1 casts the model itself and ignores the key.
        out["load_dtype"] = "fp32"
        notes.append("weights in torch.float32 under 16-bit autocast: training.load_dtype fp32")
    if method == "qlora":
        # peft's prepare_model_for_kbit_training leaves the embeddings in fp32; without it they stay 16-bit.
        emb = base.get_input_embeddings() if hasattr(base, "get_input_embeddings") else None
        weight = getattr(emb, "weight", None)
        if weight is not None:
            out["kbit_upcast"] = str(weight.dtype) == "torch.float32"
            notes.append(f"QLoRA: embeddings in {weight.dtype}: training.kbit_upcast {out['kbit_upcast']}")
    return out


def _deepspeed(args: TrainingArguments, notes: list[str]) -> dict[str, Any]:
    filled = getattr(getattr(args, "hf_deepspeed_config", None), "config", None)
    cfg = filled or getattr(args, "deepspeed", None)
    if isinstance(cfg, str):
        with open(cfg, encoding="utf-8") as fh:
            cfg = json.load(fh)
    if not isinstance(cfg, dict):
        return _fsdp(args, notes)
    zero = cfg.get("zero_optimization") or {}
    stage = zero.get("stage", 0)
    out: dict[str, Any] = {"zero_stage": int(stage) if str(stage).isdigit() else 0}
    for key in ("offload_optimizer", "offload_param"):
        device = (zero.get(key) or {}).get("device", "none")
        out[key] = device if device in ("cpu", "nvme") else "none"
    notes.append(f"DeepSpeed config: ZeRO-{out['zero_stage']}, offload optimizer {out['offload_optimizer']}, "
                 f"parameters {out['offload_param']}")
    return out


def _fsdp_options(args: TrainingArguments) -> set[str]:
    """FSDP as sharding words: older transformers list options (`fsdp="full_shard offload"`), transformers
    5 takes `fsdp=True` with `fsdp_config` {reshard_after_forward (default True), cpu_offload}."""
    raw = getattr(args, "fsdp", None) or []
    if raw is True:
        cfg = {k.removeprefix("fsdp_"): v for k, v in (getattr(args, "fsdp_config", None) or {}).items()}
        opts = {"full_shard" if cfg.get("reshard_after_forward", True) else "shard_grad_op"}
        return opts | ({"offload"} if cfg.get("cpu_offload") or cfg.get("offload_params") else set())
    if isinstance(raw, str):
        raw = raw.split()
    return {str(getattr(o, "value", o)).lower() for o in raw} if isinstance(raw, (list, tuple, set)) else set()


def _fsdp(args: TrainingArguments, notes: list[str]) -> dict[str, Any]:
    opts = _fsdp_options(args)
    if not opts & {"full_shard", "hybrid_shard", "shard_grad_op", "hybrid_shard_zero2"}:
        return {"zero_stage": 0, "offload_optimizer": "none", "offload_param": "none"}
    stage = 3 if opts & {"full_shard", "hybrid_shard"} else 2
    # CPUOffload moves parameters, gradients and the optimizer step together, and only sharded
    # parameters can live on the host (memfit's FSDP shapes: FULL_SHARD only).
    offload = "cpu" if "offload" in opts and stage == 3 else "none"
    cfg = getattr(args, "fsdp_config", None) or {}
    version = 2 if str(cfg.get("version", cfg.get("fsdp_version", 1))) == "2" else 1
    notes.append(f"FSDP{version} {sorted(opts)}: estimated with memfit's FSDP model (training.sharding fsdp{version})")
    return {"sharding": f"fsdp{version}", "zero_stage": stage, "offload_optimizer": offload, "offload_param": offload}


def _seq_len(args: TrainingArguments, model: Model, dataset: Any, seq_len: Optional[int], notes: list[str]) -> int:
    if seq_len:
        return int(seq_len)
    for key in ("max_length", "max_seq_length"):  # TRL's SFTConfig
        if isinstance(getattr(args, key, None), int):
            return int(getattr(args, key))
    longest = 0
    try:
        for i in range(min(len(dataset), SEQ_LEN_PEEK)):
            ids = dataset[i].get("input_ids") if isinstance(dataset[i], dict) else None
            longest = max(longest, len(ids) if ids is not None else 0)
    except (TypeError, AttributeError, KeyError):
        longest = 0
    if longest:
        notes.append(f"seq_len {longest}: the longest of the first {SEQ_LEN_PEEK} training examples "
                     "(pass seq_len= to MemfitCallback when batches are padded longer)")
        return longest
    fallback = int(getattr(_base(model).config, "max_position_embeddings", 2048))
    notes.append(f"seq_len unknown: assumed the model's max_position_embeddings {fallback} (pass seq_len=)")
    return fallback


def _hardware(args: TrainingArguments, hardware: Optional[dict[str, Any]],
              notes: list[str]) -> tuple[dict[str, Any], bool]:
    """The plan's hardware mapping, and whether the GPU capacity is real."""
    if hardware:
        return dict(hardware), True
    found = detect_hardware()
    hw = found.to_hardware_dict()
    world = int(getattr(args, "world_size", 1) or 1)
    per_node = hw.get("gpus_per_node", 1)
    hw["nodes"] = max(1, math.ceil(world / per_node))
    hw.setdefault("host_memory", 64.0)
    if "gpu_memory" not in hw:
        notes.append(f"no GPU detected ({'; '.join(found.notes)}): GPU fit not checked, host memory only")
        hw["gpu_memory"] = NO_GPU_PLACEHOLDER_GIB
        return hw, False
    return hw, True


def plan_from_trainer(args: TrainingArguments, model: Model, dataset: Any = None, *,
                      hardware: Optional[dict[str, Any]] = None, seq_len: Optional[int] = None,
                      policy: Optional[dict[str, Any]] = None) -> tuple[dict[str, Any], bool, list[str]]:
    """The plan of a Trainer run, every strategy choice pinned.

    Args:
        args: the run's TrainingArguments.
        model: the model the Trainer trains (a peft model is read as LoRA/QLoRA).
        dataset: the training set (its longest example gives seq_len when nothing else does).
        hardware: a plan `hardware:` mapping; default: this machine (engine/machine/detect.py).
        seq_len: the training sequence length, when known.
        policy: a plan `policy:` mapping (headrooms).
    Returns:
        (plan mapping, whether the GPU capacity is real, notes on what was read or assumed).
    """
    notes: list[str] = []
    method, lora = _method_and_lora(model)
    base = _base(model)
    config = {k: v for k, v in base.config.to_dict().items() if not k.startswith("_") or k == "_name_or_path"}
    attention = str(getattr(base.config, "_attn_implementation", None) or "sdpa")
    training = {"method": method, "seq_len": _seq_len(args, model, dataset, seq_len, notes),
                "micro_batch_size": int(args.per_device_train_batch_size), "precision": _precision(args, model),
                "optimizer": _optimizer(args),
                "gradient_checkpointing": bool(getattr(args, "gradient_checkpointing", False) or _checkpointing(base)),
                "attention": attention if attention in ("sdpa", "flash_attention_2", "eager") else "sdpa",
                **_deepspeed(args, notes), **_stack(args, base, method, notes)}
    if lora:
        training["lora"] = lora
    hw, gpu_known = _hardware(args, hardware, notes)
    plan = {"model": config, "hardware": hw, "training": training}
    if policy:
        plan["policy"] = dict(policy)
    return plan, gpu_known, notes
