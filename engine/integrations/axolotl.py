"""axolotl YAML -> memfit plan, and back (comments and key order kept).

Keys and defaults of axolotl 0.19.0 (src/axolotl/utils/schemas/: model.py, peft.py, training.py, fsdp.py,
config.py; utils/config/__init__.py for normalize_config and resolve_dtype):
- base_model (required); adapter lora | qlora (blank = full fine-tuning); load_in_4bit / load_in_8bit;
  lora_r, lora_alpha, lora_target_linear (all linear layers) or lora_target_modules;
- sequence_len 512, micro_batch_size 1 (per GPU), gradient_accumulation_steps 1, sample_packing;
- gradient_checkpointing default OFF (False); bf16 "auto" = bf16 where the GPU runs it, else fp16;
- optimizer default adamw_torch_fused; deepspeed: a path opened from the working directory
  (normalize_config: os.path.exists), fsdp / fsdp_config for FSDP ("deepspeed and fsdp cannot be used
  together"); rl dpo | kto | ... and reward_model.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import PlanError
from ..deepspeed.config import accumulation_steps
from ..plan.strategy import Strategy
from .common import (DELETE, ForeignRead, edit_yaml, fsdp_pins, read_deepspeed, read_mapping, supports_bf16,
                     world_size, zero_of)
from .optimizers import optimizer_of
from .keylists import key_list, unknown_names

if TYPE_CHECKING:
    from ..plan.schema import Plan


TOOL = "axolotl YAML"
_EIGHT_BIT_AO = {"ao_adamw_8bit"}  # axolotl's own name; the HF names go through integrations/optimizers.py
_ATTENTION = {"flash_attention_2": "flash_attention_2", "flash_attention_3": "flash_attention_2",
              "sdpa": "sdpa", "eager": "eager"}
NOT_MODELED = ("layer_offloading", "tiled_mlp", "context_parallel_size",
               "tensor_parallel_size", "unfrozen_parameters",
               "fp8", "lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel", "reinit_weights",
               "flash_attn_fuse_mlp", "model_quantization_config", "max_memory", "gpu_memory_limit")


def is_axolotl(data: dict[str, Any]) -> bool:
    """axolotl's config names the model `base_model`."""
    return "base_model" in data


def _method(ax: dict[str, Any], out: ForeignRead) -> str:
    adapter = ax.get("adapter")
    if not adapter:
        if ax.get("unfrozen_parameters"):
            out.warnings.append("unfrozen_parameters: trains a subset of parameters; estimated as full "
                                "fine-tuning (an upper bound)")
        return "full"
    if adapter not in ("lora", "qlora"):
        out.warnings.append(f"adapter: {adapter} is not modelled; estimated as LoRA (effect unknown)")
    if adapter == "qlora" or ax.get("load_in_4bit"):
        return "qlora"
    if ax.get("load_in_8bit"):
        out.notes.append("load_in_8bit: LoRA over an LLM.int8 base (int8 weights plus an fp32 scale per row): "
                         "method qlora with training.lora.quantization_config load_in_8bit")
        return "qlora"
    if ax.get("gptq"):
        out.warnings.append("gptq: the base is a GPTQ checkpoint; memfit counts its packed layout when the model's "
                            "config.json (with quantization_config) is read: give base_model as a local path")
    return "lora"


def _precision(ax: dict[str, Any], hardware: dict[str, Any], out: ForeignRead) -> str:
    if ax.get("bfloat16") or ax.get("float16"):
        out.notes.append("bfloat16/float16: pure half precision (no AMP)")
        return "pure_bf16" if ax.get("bfloat16") else "fp16"
    bf16 = ax.get("bf16", "auto")
    if bf16 == "auto" and not ax.get("fp16"):
        chosen = "bf16" if supports_bf16(hardware) else "fp16"
        out.notes.append(f"bf16: auto -> {chosen} on this GPU (axolotl resolve_dtype)")
        return chosen
    if bf16 is True:
        return "bf16"
    return "fp16" if ax.get("fp16") else "fp32"


def _optimizer(ax: dict[str, Any], out: ForeignRead) -> str:
    if ax.get("optimizer") in _EIGHT_BIT_AO:
        out.warnings.append(f"optimizer: {ax['optimizer']} (torchao 8-bit states) estimated with bitsandbytes' layout")
        return "adamw_8bit"
    chosen, warning = optimizer_of(str(ax.get("optimizer") or "adamw_torch_fused"), "optimizer")
    if warning:
        out.warnings.append(warning)
    return chosen


def _lora(ax: dict[str, Any]) -> dict[str, Any]:
    rank = int(ax.get("lora_r") or 8)
    modules = ax.get("lora_target_modules")
    targets: Any = "all-linear"
    if not ax.get("lora_target_linear") and modules:
        targets = [modules] if isinstance(modules, str) else [str(m) for m in modules]
    lora: dict[str, Any] = {"rank": rank, "alpha": ax.get("lora_alpha") or 2 * rank,
                            "dropout": float(ax.get("lora_dropout") or 0.0), "target_modules": targets}
    if ax.get("peft_use_dora"):  # axolotl loaders/adapter.py: LoraConfig(use_dora=cfg.peft_use_dora)
        lora["use_dora"] = True
    saved = ax.get("lora_modules_to_save")  # axolotl schemas/peft.py: passed to LoraConfig(modules_to_save=)
    if saved:
        lora["modules_to_save"] = [saved] if isinstance(saved, str) else [str(m) for m in saved]
    if ax.get("load_in_8bit") and not (ax.get("adapter") == "qlora" or ax.get("load_in_4bit")):
        lora["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_8bit": True}
    return lora


def _fsdp(ax: dict[str, Any], out: ForeignRead) -> dict[str, Any] | None:
    cfg = ax.get("fsdp_config") or {}
    if not (ax.get("fsdp") or cfg):
        return None
    cfg = {str(k).removeprefix("fsdp_"): v for k, v in cfg.items()} if isinstance(cfg, dict) else {}
    shard = "FULL_SHARD" if cfg.get("reshard_after_forward", True) is not False else "SHARD_GRAD_OP"
    shard = str(cfg.get("sharding_strategy", shard))
    # utils/schemas/fsdp.py: fsdp_version (top level, or version inside fsdp_config), default 1
    version = int(ax.get("fsdp_version") or cfg.get("version") or 1)
    pins, note = fsdp_pins(shard, bool(cfg.get("offload_params")), version)
    out.notes.append(f"fsdp_config: {note}")
    return pins


def _stage(ax: dict[str, Any], method: str, out: ForeignRead) -> None:
    rl = ax.get("rl")
    if rl in ("dpo", "ipo", "kto", "gdpo") and method == "full":
        out.warnings.append(f"rl: {rl} loads a reference model (a frozen copy of the base model) that memfit "
                            "does not add to the estimate")
    if rl in ("dpo", "ipo", "kto", "orpo", "simpo", "gdpo"):
        out.warnings.append(f"rl: {rl} runs chosen and rejected sequences together: activations of twice "
                            "micro_batch_size sequences, not modelled")
    elif rl:
        out.warnings.append(f"rl: {rl}: generation and extra models are not modelled (effect unknown)")
    if ax.get("reward_model") or ax.get("process_reward_model"):
        out.notes.append("reward_model: a classification head instead of the LM head (smaller logits)")


def _plugins(ax: dict[str, Any]) -> str:
    return " ".join(str(p) for p in (ax.get("plugins") or []))


def _loss(ax: dict[str, Any], out: ForeignRead) -> dict[str, Any]:
    """training.loss from axolotl's loss plugins and keys (integrations/*/args.py, utils/schemas/config.py)."""
    plugins = _plugins(ax)
    # CutCrossEntropyPlugin's args default cut_cross_entropy to True once the plugin is listed.
    if "CutCrossEntropyPlugin" in plugins and ax.get("cut_cross_entropy", True):
        out.notes.append("cut_cross_entropy: fused linear cross-entropy (no whole logits): training.loss fused_linear")
        return {"implementation": "fused_linear"}
    if "LigerPlugin" in plugins and ax.get("liger_fused_linear_cross_entropy"):
        out.notes.append("liger_fused_linear_cross_entropy: Liger's fused linear cross-entropy: training.loss fused_linear")
        return {"implementation": "fused_linear"}
    if ax.get("chunked_cross_entropy"):
        # monkeypatch/loss/chunked.py patch_chunked_ce_loss_fn(num_output_chunks=8) replaces ForCausalLMLoss.
        chunks = int(ax.get("chunked_cross_entropy_num_chunks") or 8)
        out.notes.append(f"chunked_cross_entropy: {chunks} chunks upcast one at a time: training.loss chunked")
        return {"implementation": "chunked", "chunks": chunks}
    return {}


def _stack(ax: dict[str, Any], out: ForeignRead) -> tuple[dict[str, Any], dict[str, Any]]:
    """(training keys, data keys) of the stack: framework, loss, activation offloading, data shape."""
    training: dict[str, Any] = {"framework": "axolotl"}
    loss = _loss(ax, out)
    if loss:
        training["loss"] = loss
    if "LigerPlugin" in _plugins(ax) and ax.get("liger_rms_norm") and ax.get("liger_glu_activation"):
        # integrations/liger: liger_rms_norm and liger_glu_activation patch the decoder layers' modules.
        training["kernels"] = "liger"
        out.notes.append("liger_rms_norm, liger_glu_activation: Liger's layer kernels (training.kernels liger)")
    gc, ao = ax.get("gradient_checkpointing"), ax.get("activation_offloading")
    if ao or gc in ("offload", "offload_disk"):
        # activation_offloading: TRL's offloader (torchtune's OffloadActivations); gradient_checkpointing:
        # offload: monkeypatch/gradient_checkpointing/offload_cpu.py moves each checkpoint to the CPU.
        training["activation_offloading"] = True
        out.notes.append(f"{'activation_offloading' if ao else 'gradient_checkpointing'}: "
                         f"{ao if ao else gc}: saved layer inputs in host memory (training.activation_offloading)")
    if ax.get("torch_compile") is True:
        # core/trainers/base.py passes torch_compile to TrainingArguments: the model (and its loss) compiled.
        training["compile"] = True
        out.notes.append("torch_compile: layers and loss keep what inductor saves (training.compile)")
    if ao == "offload_disk" or gc == "offload_disk":
        out.warnings.append("offload_disk: the checkpoints go to disk, memfit counts them in host memory (an over-estimate)")
    if ax.get("sample_packing"):
        out.notes.append("sample_packing: sequences packed to sequence_len (data.packing: fixed shapes)")
        return training, {"packing": True}
    # DataCollatorForSeq2Seq pads to the batch's longest sequence unless pad_to_sequence_len.
    return training, {"packing": False, "padding": "max_length" if ax.get("pad_to_sequence_len") else "longest"}


def _extras(ax: dict[str, Any], out: ForeignRead) -> None:
    mem = sorted(k for k in NOT_MODELED if ax.get(k) not in (None, False, 0, ""))
    if mem:
        out.warnings.append(f"memory-relevant keys memfit does not model (effect unknown): {', '.join(mem)}")
    unknown = unknown_names("axolotl", ax)
    if unknown:
        out.warnings.append(f"not fields of {key_list('axolotl').rules} (axolotl drops them); effect unknown: "
                            f"{', '.join(unknown)}")


def _strategy(ax: dict[str, Any], src: str, ds: Path | None, cwd: Path, out: ForeignRead) -> dict[str, Any]:
    pins = {"zero_stage": 0, "offload_optimizer": "none", "offload_param": "none"}
    value = ax.get("deepspeed")
    if ds is None and isinstance(value, str) and value:
        ds = Path(value) if Path(value).is_absolute() else cwd / value
        if not ds.is_file():
            raise PlanError(f"{src}: deepspeed: {value}: no such file relative to the working directory {cwd} "
                            "(axolotl opens it from there); run from axolotl's root or give --deepspeed PATH")
    if ds is not None:
        pins = zero_of(read_deepspeed(ds, src, "deepspeed", out))
    elif isinstance(value, dict):
        pins = zero_of(value)
    else:
        pins = _fsdp(ax, out) or pins
    gc = ax.get("gradient_checkpointing", False)
    out.notes.append(f"gradient checkpointing: {'on' if gc else 'off'}"
                     f"{' (axolotl default)' if 'gradient_checkpointing' not in ax else ''}")
    return {**pins, "micro_batch_size": int(ax.get("micro_batch_size") or 1), "gradient_checkpointing": bool(gc)}


def read_axolotl(path: str | Path, hardware: dict[str, Any], deepspeed: str | Path | None = None,
                 cwd: str | Path | None = None) -> ForeignRead:
    """Read an axolotl YAML as a memfit plan (see `read_llamafactory` for the arguments).

    Raises:
        PlanError: unreadable file, no base_model, a `deepspeed:` file that does not exist.
        ConfigCheckError: the DeepSpeed JSON is not valid JSON.
    """
    src = str(path)
    ax = read_mapping(path)
    if not isinstance(ax.get("base_model"), str) or not ax["base_model"]:
        raise PlanError(f"{src}: base_model: required (the model id or path)")
    out = ForeignRead(TOOL, f"{key_list('axolotl').rules} and defaults", Path(path), {}, data=ax)
    method = _method(ax, out)
    pins = _strategy(ax, src, Path(deepspeed) if deepspeed else None, Path(cwd or Path.cwd()), out)
    micro = pins["micro_batch_size"]
    training = {"method": method, "seq_len": int(ax.get("sequence_len") or 512),
                "global_batch_size": micro * int(ax.get("gradient_accumulation_steps") or 1) * world_size(hardware),
                "precision": _precision(ax, hardware, out), "optimizer": _optimizer(ax, out),
                "attention": _ATTENTION.get(str(ax.get("attn_implementation")), "sdpa"), "lora": _lora(ax)}
    _stage(ax, method, out)
    _extras(ax, out)
    stack, data = _stack(ax, out)
    out.plan = {"model": ax["base_model"], "hardware": dict(hardware), "training": {**training, **stack}, "data": data}
    out.pinned = {"method": method, **pins}
    return out


def refusal(ax: dict[str, Any], strategy: Strategy, world: int) -> str | None:
    """Why axolotl would refuse `strategy` here, or None. Memfit writes DeepSpeed, never FSDP."""
    return None


def axolotl_yaml(read: ForeignRead, plan: Plan, strategy: Strategy, ds_path: str | None) -> str:
    """The user's axolotl YAML with memfit's strategy (see `llamafactory_yaml` for the arguments)."""
    ax = read.data
    changes: dict[str, Any] = {}
    if strategy.method != read.pinned["method"]:
        changes.update(load_in_8bit=DELETE, adapter=DELETE if strategy.method == "full" else strategy.method,
                       load_in_4bit=True if strategy.method == "qlora" else DELETE)
        if strategy.method != "full" and "lora_r" not in ax:
            changes.update(lora_r=int(plan.training.lora.rank), lora_target_linear=True)
    changes.update(micro_batch_size=int(strategy.micro_batch_size),
                   gradient_accumulation_steps=int(accumulation_steps(strategy, plan)))
    if strategy.gradient_checkpointing or "gradient_checkpointing" in ax:
        changes["gradient_checkpointing"] = bool(strategy.gradient_checkpointing)  # axolotl default: off
    if ds_path:
        changes["deepspeed"] = ds_path  # "deepspeed and fsdp cannot be used together"
        changes.update({k: DELETE for k in ("fsdp", "fsdp_config", "fsdp_version") if k in ax})
    elif ax.get("deepspeed") is not None:
        changes["deepspeed"] = DELETE
    changes = {k: v for k, v in changes.items() if not (v is DELETE and k not in ax)}
    bad = unknown_names("axolotl", [k for k, v in changes.items() if v is not DELETE])
    if bad:
        raise ValueError(f"memfit wrote keys that {key_list('axolotl').rules} does not have: {bad}")
    return (f"# axolotl config written by memfit for strategy {strategy.key} from {read.source.name}\n"
            f"# (keys checked against {key_list('axolotl').rules}).\n") + edit_yaml(read.source, changes)


def launch_line(yaml_path: str, plan: Plan, uses_deepspeed: bool) -> str:
    """`axolotl train YAML` (axolotl's CLI; it starts accelerate for several GPUs)."""
    return f"axolotl train {yaml_path}"
