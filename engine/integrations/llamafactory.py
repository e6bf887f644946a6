"""LLaMA-Factory training YAML -> memfit plan (read). Writing back is in llamafactory_write.py.

Argument names and defaults of llamafactory 0.9.5 (src/llamafactory/hparams/: finetuning_args.py,
model_args.py, data_args.py, parser.py; HF TrainingArguments for the batch, precision and `deepspeed`):
- finetuning_type lora (default) | oft | freeze | full; quantization_bit 4/8 (bitsandbytes by default);
- lora_rank 8, lora_alpha None = 2 x rank, lora_target "all" = every linear layer;
- cutoff_len 2048; per_device_train_batch_size 8 and gradient_accumulation_steps 1 (HF defaults);
- gradient checkpointing ON unless disable_gradient_checkpointing (model_utils/checkpointing.py);
- without bf16/fp16/pure_bf16 the compute dtype is inferred (parser.py, extras/misc.py::infer_optim_dtype):
  bf16 where the GPU runs it, else fp16; the Trainer then runs without AMP and trainable parameters are
  upcast to fp32 (model/adapter.py), so full/freeze training holds fp32 weights;
- `deepspeed:` is HF TrainingArguments' field: a relative path is opened from the working directory
  (accelerate HfDeepSpeedConfig: os.path.exists), not from the YAML's folder;
- stage dpo (unless pref_loss orpo/simpo) and kto use a reference model: LoRA uses the policy with
  adapters disabled, full/freeze load a second copy of the model (train/trainer_utils.py::create_ref_model).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.errors import PlanError
from .common import ForeignRead, fsdp_pins, read_deepspeed, read_mapping, supports_bf16, world_size, zero_of
from .optimizers import optimizer_of
from .keylists import LLAMAFACTORY_TRANSFORMERS_PIN, key_list, unknown_names

TOOL = "LLaMA-Factory training YAML"
_ATTENTION = {"fa2": "flash_attention_2", "sdpa": "sdpa", "disabled": "eager", "eager": "eager",
              "auto": "sdpa", "fa3": "flash_attention_2"}
_METHODS = ("lora", "oft", "freeze", "full")
# Optimizer replacements LLaMA-Factory builds itself (train/trainer_utils.py::create_custom_optimizer).
_CUSTOM_OPTIMIZERS = {
    "use_galore": "GaLore keeps optimizer states of rank galore_rank projections",
    "use_apollo": "APOLLO keeps low-rank (apollo_rank) optimizer states",
    "use_badam": "BAdam trains one block of layers at a time (optimizer states for that block only)",
    "use_adam_mini": "Adam-mini keeps one second moment per parameter block",
    "use_muon": "Muon keeps one momentum buffer for matrix parameters",
}
# Memory-relevant arguments (the [MEM] list of hparams/*.py) this reader does not turn into plan fields.
NOT_MODELED = (
    "shift_attn", "mixture_of_depths", "rope_scaling", "upcast_layernorm",
    "upcast_lmhead_output", "train_from_scratch", "use_v1_kernels",
    "image_max_pixels", "video_max_pixels", "video_maxlen", "use_kt", "streaming", "pissa_init",
    "use_llama_pro", "freeze_vision_tower", "freeze_multi_modal_projector", "freeze_language_model", "fp8",
    "fp8_backend", "fp8_enable_fsdp_float8_all_gather", "ray_num_workers", "use_reentrant_gc", "ppo_buffer_size",
    "use_mca", "use_megatron_bridge", "use_hyper_parallel", "per_device_eval_batch_size", "predict_with_generate",
    "max_new_tokens", "kernel_config", "use_eaft_loss", "use_asft_loss", "use_dft_loss")


def is_llamafactory(data: dict[str, Any]) -> bool:
    """LLaMA-Factory's classic YAML: `model_name_or_path` with one of its own training arguments."""
    return "model_name_or_path" in data and bool({"finetuning_type", "stage", "cutoff_len", "template"} & set(data))


def is_llamafactory_v1(data: dict[str, Any]) -> bool:
    """LLaMA-Factory's v1 format (examples/v1/, launched with USE_V1=1): model plus model_class/peft_config."""
    return "model" in data and bool({"model_class", "peft_config", "dist_config", "train_dataset"} & set(data))


def _method(lf: dict[str, Any], src: str, out: ForeignRead) -> str:
    kind = lf.get("finetuning_type", "lora")
    if kind not in _METHODS:
        raise PlanError(f"{src}: finetuning_type: must be lora, oft, freeze or full (got {kind!r})")
    bits = lf.get("quantization_bit")
    if bits not in (None, 4, 8):
        out.warnings.append(f"quantization_bit: {bits}-bit is not modelled; estimated with a 16-bit base")
    if kind == "freeze":
        layers = lf.get("freeze_trainable_layers", 2)
        out.warnings.append(f"finetuning_type: freeze trains {layers} layer(s) (freeze_trainable_layers) of the "
                            "model; memfit has no freeze model and estimates full fine-tuning: an upper bound on "
                            "gradients and optimizer states")
        return "full"
    if kind == "full":
        return "full"
    if kind == "oft":
        out.warnings.append(f"finetuning_type: oft (block size {lf.get('oft_block_size', 32)}) is estimated as "
                            f"LoRA of rank {lf.get('lora_rank', 8)} on the same targets: OFT's trainable "
                            "parameters and activation overhead differ (effect unknown)")
    if bits in (4, 8) and lf.get("quantization_method", "bnb") != "bnb":
        out.warnings.append(f"quantization_method: {lf['quantization_method']} is estimated with bitsandbytes' "
                            f"{bits}-bit layout")
    return "qlora" if bits in (4, 8) else "lora"


def _quantization(lf: dict[str, Any]) -> dict[str, Any] | None:
    """quantization_bit as transformers' BitsAndBytesConfig keys (LLaMA-Factory model/model_utils/quantization.py:
    4-bit uses quantization_type (default nf4) and double_quantization (default true))."""
    bits = lf.get("quantization_bit")
    if bits == 8:
        return {"quant_method": "bitsandbytes", "load_in_8bit": True}
    if bits == 4:
        return {"quant_method": "bitsandbytes", "load_in_4bit": True,
                "bnb_4bit_quant_type": str(lf.get("quantization_type", "nf4")),
                "bnb_4bit_use_double_quant": bool(lf.get("double_quantization", True))}
    return None


def _precision(lf: dict[str, Any], method: str, hardware: dict[str, Any], out: ForeignRead) -> str:
    if lf.get("pure_bf16"):
        return "pure_bf16"
    if lf.get("bf16"):
        return "bf16"
    if lf.get("fp16"):
        return "fp16"
    dtype = "bf16" if supports_bf16(hardware) else "fp16"
    if method == "full":
        out.notes.append(f"precision: no bf16/fp16 key; LLaMA-Factory loads the model in {dtype} and upcasts "
                         "trainable parameters to fp32 without AMP: estimated as fp32 training")
        return "fp32"
    out.notes.append(f"precision: no bf16/fp16 key; LLaMA-Factory infers {dtype} for the frozen base (assuming "
                     "the checkpoint's torch_dtype is bf16 or unset) and keeps adapters in fp32")
    return dtype


def _optimizer(lf: dict[str, Any], out: ForeignRead) -> str:
    for key, what in _CUSTOM_OPTIMIZERS.items():
        if lf.get(key):
            out.warnings.append(f"{key}: {what}; memfit has no model of it and estimates AdamW "
                                "(12 bytes of states per trainable parameter): an over-estimate")
    chosen, warning = optimizer_of(str(lf.get("optim", "adamw_torch")), "optim")
    if warning:
        out.warnings.append(warning)
    return chosen


def _lora(lf: dict[str, Any]) -> dict[str, Any]:
    rank = int(lf.get("lora_rank", 8))
    target = lf.get("oft_target" if lf.get("finetuning_type") == "oft" else "lora_target", "all")
    targets = "all-linear" if target == "all" else [t.strip() for t in str(target).split(",") if t.strip()]
    alpha = lf.get("lora_alpha") or 2 * rank
    lora = {"rank": rank, "alpha": alpha, "dropout": float(lf.get("lora_dropout", 0.0)), "target_modules": targets}
    if lf.get("use_dora"):  # model/adapter.py passes finetuning_args.use_dora to peft's LoraConfig
        lora["use_dora"] = True
    # additional_target: "Name(s) of modules apart from LoRA layers to be set as trainable and saved"
    # (finetuning_args.py), passed to peft as modules_to_save (model/adapter.py).
    extra = lf.get("additional_target")
    if extra:
        lora["modules_to_save"] = [t.strip() for t in str(extra).split(",") if t.strip()]
    elif lf.get("resize_vocab"):
        # adapter.py: resize_vocab without additional_target trains the input and output embeddings.
        lora["modules_to_save"] = ["embed_tokens", "lm_head"]
    quant = _quantization(lf)
    if quant is not None:
        lora["quantization_config"] = quant
    return lora


def _stage(lf: dict[str, Any], method: str, out: ForeignRead) -> None:
    stage = lf.get("stage", "sft")
    uses_ref = (stage == "dpo" and lf.get("pref_loss", "sigmoid") not in ("orpo", "simpo")) or stage == "kto"
    if uses_ref and method == "full":
        out.warnings.append(f"stage: {stage} loads a reference model: a second, frozen copy of the base model "
                            "(16-bit weights) that memfit does not add to the estimate")
    elif uses_ref or lf.get("ref_model"):
        out.notes.append(f"stage: {stage}: the reference model is the policy with adapters disabled (no copy)")
    if stage in ("dpo", "kto"):
        out.warnings.append(f"stage: {stage} runs chosen and rejected sequences together: activations of twice "
                            "per_device_train_batch_size sequences, not modelled")
    if stage == "ppo":
        out.warnings.append("stage: ppo holds a reward model, a value head and rollouts: not modelled")
    if lf.get("do_predict") or lf.get("predict_with_generate"):
        out.warnings.append("do_predict/predict_with_generate: generation (KV cache) memory is not modelled")


def _extras(lf: dict[str, Any], out: ForeignRead) -> None:
    if lf.get("additional_target"):
        out.notes.append(f"additional_target: {lf['additional_target']} -> training.lora.modules_to_save "
                         "(trained in full: weights, gradients and optimizer states counted)")
    if lf.get("freeze_extra_modules"):
        out.warnings.append("freeze_extra_modules: trainable embeddings or other extra modules "
                            "(weights, gradients and optimizer states) are not modelled")
    if str(lf.get("flash_attn", "auto")) in ("auto", "fa3"):
        out.notes.append(f"flash_attn: {lf.get('flash_attn', 'auto')}: estimated with "
                         f"{_ATTENTION[str(lf.get('flash_attn', 'auto'))]} attention memory")
    mem = sorted(k for k in NOT_MODELED if lf.get(k) not in (None, False, 0, ""))
    if mem:
        out.warnings.append(f"memory-relevant keys memfit does not model (effect unknown): {', '.join(mem)}")
    unknown = unknown_names("llamafactory", lf)
    if unknown:
        keys = key_list("llamafactory")
        out.warnings.append(f"not among {keys.rules} ({keys.note}; LLaMA-Factory {keys.version} pins "
                            f"{LLAMAFACTORY_TRANSFORMERS_PIN}, whose TrainingArguments may still have them); "
                            f"effect unknown: {', '.join(unknown)}")


def _stack(lf: dict[str, Any], out: ForeignRead) -> tuple[dict[str, Any], dict[str, Any]]:
    """(training keys, data keys): framework, Liger's loss, unsloth's offloaded checkpointing, packing."""
    training: dict[str, Any] = {"framework": "unsloth" if lf.get("use_unsloth") else "llamafactory"}
    if lf.get("use_unsloth"):
        # model/model_utils/unsloth.py loads through FastLanguageModel with use_gradient_checkpointing="unsloth".
        out.notes.append("use_unsloth: unsloth's loader and defaults (training.framework unsloth)")
    if lf.get("enable_liger_kernel"):
        # apply_liger_kernel calls apply_liger_kernel_to_<model_type> with its rms_norm, swiglu and rope on.
        training["kernels"] = "liger"
    if lf.get("enable_liger_kernel") and lf.get("stage", "sft") in ("pt", "sft"):
        # model/model_utils/liger_kernel.py apply_liger_kernel: fused linear cross-entropy, except for stages
        # that need the logits (require_logits: not pt/sft), which get Liger's plain cross-entropy.
        training["loss"] = {"implementation": "fused_linear"}
        out.notes.append("enable_liger_kernel: Liger's fused linear cross-entropy (training.loss fused_linear)")
    elif lf.get("enable_liger_kernel"):
        out.notes.append(f"enable_liger_kernel: stage {lf.get('stage')} needs the logits: Liger's cross-entropy on "
                         "whole logits, estimated as the standard loss (an upper bound)")
    if lf.get("torch_compile") is True:
        # Its YAML is TrainingArguments' keys: the Trainer compiles the model, whose forward computes the loss.
        training["compile"] = True
        out.notes.append("torch_compile: layers and loss keep what inductor saves (training.compile)")
    if lf.get("use_unsloth_gc"):
        # model_utils/checkpointing.py UnslothGradientCheckpointing: hidden_states.to("cpu") per layer.
        training["activation_offloading"] = True
        out.notes.append("use_unsloth_gc: checkpointed layer inputs in host memory (training.activation_offloading)")
    if lf.get("packing") or lf.get("neat_packing") or (lf.get("packing") is None and lf.get("stage") == "pt"):
        out.notes.append("packing: sequences are packed to cutoff_len (data.packing)")
        return training, {"packing": True}
    # data/collator.py pads each batch to its longest sequence (DataCollatorForSeq2Seq, padding=True).
    return training, {"packing": False, "padding": "longest"}


def resolve_deepspeed(value: str, src: str, cwd: Path) -> Path:
    """The file LLaMA-Factory opens for `deepspeed: VALUE`: relative to the working directory.

    Raises:
        PlanError: the file does not exist there (naming the YAML-relative file if that one exists).
    """
    path = Path(value).expanduser()
    found = path if path.is_absolute() else cwd / path
    if found.is_file():
        return found
    beside = Path(src).parent / path
    hint = (f"; {beside} exists, but LLaMA-Factory (transformers' HfDeepSpeedConfig) opens the path from the "
            "working directory, not from the YAML's folder") if beside.is_file() else ""
    raise PlanError(f"{src}: deepspeed: {value}: no such file relative to the working directory {cwd}{hint}; "
                    "run from the folder it is relative to (LLaMA-Factory's root for its examples) or give "
                    "--deepspeed PATH")


def _strategy(lf: dict[str, Any], src: str, ds: Path | None, cwd: Path, out: ForeignRead) -> dict[str, Any]:
    pins: dict[str, Any] = {"zero_stage": 0, "offload_optimizer": "none", "offload_param": "none"}
    if ds is None and lf.get("deepspeed"):
        ds = resolve_deepspeed(str(lf["deepspeed"]), src, cwd)
    if ds is not None:
        pins = zero_of(read_deepspeed(ds, src, "deepspeed", out))
    elif lf.get("fsdp"):
        shard = "SHARD_GRAD_OP" if "shard_grad_op" in str(lf["fsdp"]) else "FULL_SHARD"
        # The HF Trainer's `fsdp` argument goes through accelerate: FSDP1 unless fsdp_config says version 2.
        raw = lf.get("fsdp_config")
        fc: dict[str, Any] = raw if isinstance(raw, dict) else {}
        version = int(fc.get("fsdp_version") or fc.get("version") or 1)
        pins, note = fsdp_pins(shard, "offload" in str(lf["fsdp"]), version)
        out.notes.append(f"fsdp: {lf['fsdp']}: {note}")
    gc = not lf.get("disable_gradient_checkpointing", False)
    out.notes.append(f"gradient checkpointing: {'on' if gc else 'off'}"
                     f"{' (LLaMA-Factory default)' if 'disable_gradient_checkpointing' not in lf else ''}")
    return {**pins, "micro_batch_size": int(lf.get("per_device_train_batch_size", 8)), "gradient_checkpointing": gc}


def read_llamafactory(path: str | Path, hardware: dict[str, Any], deepspeed: str | Path | None = None,
                      cwd: str | Path | None = None) -> ForeignRead:
    """Read a LLaMA-Factory training YAML as a memfit plan.

    Args:
        path: the YAML file.
        hardware: the plan's hardware mapping (LLaMA-Factory does not describe the machine).
        deepspeed: a DeepSpeed JSON that replaces the YAML's `deepspeed:`.
        cwd: the directory LLaMA-Factory would run in (relative `deepspeed:` paths); default: the current one.
    Returns:
        The ForeignRead; its plan leaves the strategy to memfit, `pinned` holds the YAML's own.
    Raises:
        PlanError: unreadable file, missing model_name_or_path, bad finetuning_type, missing deepspeed file.
        ConfigCheckError: the DeepSpeed JSON is not valid JSON.
    """
    src = str(path)
    lf = read_mapping(path)
    if is_llamafactory_v1(lf):
        raise PlanError(f"{src}: this is LLaMA-Factory's v1 config format (USE_V1=1: model, model_class, "
                        "peft_config, dist_config); memfit reads the classic format (model_name_or_path, ...)")
    if not lf.get("model_name_or_path"):
        raise PlanError(f"{src}: model_name_or_path: required (the model to fine-tune)")
    out = ForeignRead(TOOL, f"{key_list('llamafactory').rules} and defaults", Path(path), {}, data=lf)
    method = _method(lf, src, out)
    pins = _strategy(lf, src, Path(deepspeed) if deepspeed else None, Path(cwd or Path.cwd()), out)
    micro = pins["micro_batch_size"]
    training = {"method": method,
                "seq_len": int(lf.get("cutoff_len", 2048)),
                "global_batch_size": micro * int(lf.get("gradient_accumulation_steps", 1)) * world_size(hardware),
                "precision": _precision(lf, method, hardware, out), "optimizer": _optimizer(lf, out),
                "attention": _ATTENTION.get(str(lf.get("flash_attn", "auto")), "sdpa"), "lora": _lora(lf)}
    _stage(lf, method, out)
    _extras(lf, out)
    stack, data = _stack(lf, out)
    out.plan = {"model": lf["model_name_or_path"], "hardware": dict(hardware), "training": {**training, **stack},
                "data": data}
    out.pinned = {"method": method, **pins}
    return out
