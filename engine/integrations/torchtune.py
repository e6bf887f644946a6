"""torchtune recipe config -> memfit plan, and back as `tune run ... key=value` overrides.

Read in torchtune 0.6.1 (recipes/configs/**.yaml; recipes/*_single_device.py, *_distributed.py):
- `model: {_component_: torchtune.models.<family>.<builder>, lora_rank, lora_alpha, lora_attn_modules,
  apply_lora_to_mlp, apply_lora_to_output, quantize_base}`; `lora_*` builders are LoRA, `qlora_*`
  builders are `lora_*` with quantize_base=True (NF4 base) (torchtune/models/*/_model_builders.py);
- `tokenizer.max_seq_len` is the sequence length (null: no truncation); `batch_size` is per device;
- `dtype: bf16` is pure bf16 (no AMP: "all activations, gradients and optimizer states are in bfloat16");
- `enable_activation_checkpointing` defaults to False; distributed recipes shard with FSDP2 and read
  `fsdp_cpu_offload` (default False); torchtune does not use DeepSpeed.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import ModelNotFoundError, PlanError
from ..deepspeed.config import accumulation_steps
from ..plan.strategy import Strategy
from .optimizers import optimizer_of
from .common import ForeignRead, fsdp_pins, read_mapping
from .keylists import key_list, unknown_names

if TYPE_CHECKING:
    from ..plan.schema import Plan


TOOL = "torchtune config"
# Model builders (without lora_/qlora_) -> Hugging Face id of the checkpoint their configs download
# (`tune download <id>` lines in recipes/configs; "inferred" ones from the builder's docstring).
BUILDERS = {
    "gemma_2b": "google/gemma-2b", "gemma_7b": "google/gemma-7b", "gemma2_2b": "google/gemma-2-2b",
    "gemma2_9b": "google/gemma-2-9b", "gemma2_27b": "google/gemma-2-27b",
    "llama2_7b": "meta-llama/Llama-2-7b-hf", "llama2_13b": "meta-llama/Llama-2-13b-hf",
    "llama2_70b": "meta-llama/Llama-2-70b-hf", "code_llama2_7b": "codellama/CodeLlama-7b-hf",
    "llama3_8b": "meta-llama/Meta-Llama-3-8B-Instruct", "llama3_70b": "meta-llama/Meta-Llama-3-70B-Instruct",
    "llama3_1_8b": "meta-llama/Meta-Llama-3.1-8B-Instruct", "llama3_1_70b": "meta-llama/Meta-Llama-3.1-70B-Instruct",
    "llama3_1_405b": "meta-llama/Meta-Llama-3.1-405B-Instruct", "llama3_2_1b": "meta-llama/Llama-3.2-1B-Instruct",
    "llama3_2_3b": "meta-llama/Llama-3.2-3B-Instruct", "llama3_3_70b": "meta-llama/Llama-3.3-70B-Instruct",
    "llama3_2_vision_11b": "meta-llama/Llama-3.2-11B-Vision-Instruct",
    "llama3_2_vision_90b": "meta-llama/Llama-3.2-90B-Vision-Instruct",
    "llama4_scout_17b_16e": "meta-llama/Llama-4-Scout-17B-16E-Instruct",
    "llama4_maverick_17b_128e": "meta-llama/Llama-4-Maverick-17B-128E-Instruct",
    "mistral_7b": "mistralai/Mistral-7B-v0.1", "phi3_mini": "microsoft/Phi-3-mini-4k-instruct",
    "phi4_14b": "microsoft/phi-4", "qwen2_0_5b": "Qwen/Qwen2-0.5B-Instruct", "qwen2_1_5b": "Qwen/Qwen2-1.5B-Instruct",
    "qwen2_7b": "Qwen/Qwen2-7B-Instruct", "qwen2_5_0_5b": "Qwen/Qwen2.5-0.5B-Instruct",
    "qwen2_5_1_5b_base": "Qwen/Qwen2.5-1.5B", "qwen2_5_1_5b_instruct": "Qwen/Qwen2.5-1.5B-Instruct",
    "qwen2_5_3b": "Qwen/Qwen2.5-3B-Instruct", "qwen2_5_7b_base": "Qwen/Qwen2.5-7B",
    "qwen2_5_7b_instruct": "Qwen/Qwen2.5-7B-Instruct", "qwen2_5_14b_base": "Qwen/Qwen2.5-14B",
    "qwen2_5_14b_instruct": "Qwen/Qwen2.5-14B-Instruct", "qwen2_5_32b_base": "Qwen/Qwen2.5-32B",
    "qwen2_5_32b_instruct": "Qwen/Qwen2.5-32B-Instruct", "qwen2_5_72b_base": "Qwen/Qwen2.5-72B",
    "qwen2_5_72b_instruct": "Qwen/Qwen2.5-72B-Instruct", "qwen3_0_6b_base": "Qwen/Qwen3-0.6B-Base",
    "qwen3_0_6b_instruct": "Qwen/Qwen3-0.6B", "qwen3_1_7b_base": "Qwen/Qwen3-1.7B-Base",
    "qwen3_1_7b_instruct": "Qwen/Qwen3-1.7B", "qwen3_4b_base": "Qwen/Qwen3-4B-Base", "qwen3_4b_instruct": "Qwen/Qwen3-4B",
    "qwen3_8b_base": "Qwen/Qwen3-8B-Base", "qwen3_8b_instruct": "Qwen/Qwen3-8B", "qwen3_14b_base": "Qwen/Qwen3-14B-Base",
    "qwen3_14b_instruct": "Qwen/Qwen3-14B", "qwen3_32b": "Qwen/Qwen3-32B",
    "smollm2_135m": "HuggingFaceTB/SmolLM2-135M", "smollm2_360m": "HuggingFaceTB/SmolLM2-360M",
    "smollm2_1_7b": "HuggingFaceTB/SmolLM2-1.7B",
}
# torchtune's LoRA module names -> the Hugging Face module names memfit counts.
_LORA_MODULES = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "output_proj": "o_proj"}
_MLP = ["gate_proj", "up_proj", "down_proj"]
# Phi-3 and Phi-4 checkpoints fuse q/k/v into qkv_proj and gate/up into gate_up_proj (Phi3ForCausalLM);
# torchtune's LoRA on any of q/k/v lands on that one fused Linear.
_PHI3_MODULES = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj", "output_proj": "o_proj"}
_DEFAULT_SEQ = 2048
_RUN = re.compile(r"tune run (?:--\S+ \S+ )*(\S+) --config")


def is_torchtune(data: dict[str, Any]) -> bool:
    """torchtune's config instantiates `model: {_component_: torchtune.models...}`."""
    model = data.get("model")
    return isinstance(model, dict) and str(model.get("_component_", "")).startswith("torchtune.")


def _builder(component: str, src: str) -> tuple[str, str]:
    name = component.rsplit(".", 1)[-1]
    base = re.sub(r"^(q?lora_)", "", name)
    method = "qlora" if name.startswith("qlora_") else "lora" if name.startswith("lora_") else "full"
    if base not in BUILDERS:
        raise ModelNotFoundError(f"{src}: model._component_: {component}: memfit knows no Hugging Face "
                                 "checkpoint for this torchtune builder")
    return BUILDERS[base], method


def _lora(model: dict[str, Any], family: str) -> dict[str, Any]:
    rank = int(model.get("lora_rank", 8))
    names, mlp = (_PHI3_MODULES, ["gate_up_proj", "down_proj"]) if family in ("phi3", "phi4") else (_LORA_MODULES, _MLP)
    targets = list(dict.fromkeys(names.get(m, m) for m in model.get("lora_attn_modules") or []))
    if model.get("apply_lora_to_mlp"):
        targets += mlp
    if model.get("apply_lora_to_output"):
        targets.append("lm_head")
    return {"rank": rank, "alpha": model.get("lora_alpha") or 2 * rank,
            "dropout": float(model.get("lora_dropout") or 0.0), "target_modules": targets or "all-linear"}


def recipe_of(path: Path, cfg: dict[str, Any]) -> str:
    """The recipe named in the config's own `tune run RECIPE --config ...` comment, else from the file name."""
    found = _RUN.search(path.read_text(encoding="utf-8"))
    if found:
        return found.group(1)
    kind = "lora_finetune" if "lora" in str(cfg["model"]["_component_"]) else "full_finetune"
    return f"{kind}_{'single_device' if 'single_device' in path.name else 'distributed'}"


def _optimizer(cfg: dict[str, Any], out: ForeignRead) -> str:
    block = cfg.get("optimizer") or {}
    comp = str(block.get("_component_", "torch.optim.AdamW"))
    chosen, warning = optimizer_of(comp, "optimizer._component_")
    if warning:
        out.warnings.append(warning)
    if chosen == "adamw" and block.get("fused") is True:
        chosen = "adamw_fused"  # torch.optim.AdamW(fused=True): no foreach temporaries
    if cfg.get("optimizer_in_bwd"):
        out.warnings.append("optimizer_in_bwd: gradients are freed as soon as each step is applied; memfit "
                            "counts all gradients (an over-estimate)")
    return chosen


def _extras(cfg: dict[str, Any], model: dict[str, Any], out: ForeignRead) -> None:
    if model.get("use_dora"):
        # torchtune's DoRALinear (modules/peft/dora.py) is its own module in the model's dtype; memfit's
        # DoRA terms are peft's (fp32 adapters), so they are not applied to it.
        out.warnings.append("model.use_dora: torchtune's DoRALinear is not modelled (memfit's DoRA terms are peft's)")
    for key in ("tensor_parallel_dim", "context_parallel_dim", "custom_sharded_layers"):
        if cfg.get(key) not in (None, False, 1):
            out.warnings.append(f"{key}: {cfg[key]} is not modelled (effect unknown)")
    unknown = unknown_names("torchtune", cfg)
    if unknown:
        out.warnings.append(f"keys the {key_list('torchtune').rules} recipes do not read: {', '.join(unknown)}")


def _stack(cfg: dict[str, Any], out: ForeignRead) -> tuple[dict[str, Any], dict[str, Any]]:
    """(training keys, data keys): framework, the loss component, activation offloading, packing."""
    training: dict[str, Any] = {"framework": "torchtune"}
    loss = cfg.get("loss") or {}
    comp = str(loss.get("_component_", ""))
    if "Chunked" in comp or "LinearCrossEntropy" in comp:
        # CEWithChunkedOutputLoss(num_output_chunks=8): the recipe sets the model's output chunks from it.
        training["loss"] = {"implementation": "chunked", "chunks": int(loss.get("num_output_chunks") or 8)}
        out.notes.append(f"loss: {comp.rsplit('.', 1)[-1]}: {training['loss']['chunks']} chunks (training.loss chunked)")
    elif comp:
        training["loss"] = {"implementation": "standard"}
        out.notes.append(f"loss: {comp.rsplit('.', 1)[-1]}: whole fp32 logits (training.loss standard)")
    if cfg.get("compile"):
        # The recipes compile each decoder layer and the loss (training.compile_model, compile_loss).
        training["compile"] = True
        out.notes.append("compile: layers and loss compiled (training.compile: what inductor saves)")
    training["activation_offloading"] = bool(cfg.get("enable_activation_offloading", False))
    if training["activation_offloading"]:
        out.notes.append("enable_activation_offloading: checkpointed layer inputs in pinned host memory")
    if (cfg.get("dataset") or {}).get("packed"):
        out.notes.append("dataset.packed: sequences packed to tokenizer.max_seq_len (data.packing)")
        return training, {"packing": True}
    # data/_collate.py padded_collate_sft pads each batch to its longest sequence.
    return training, {"packing": False, "padding": "longest"}


def _sharding(cfg: dict[str, Any], recipe: str, hardware: dict[str, Any],
              out: ForeignRead) -> tuple[dict[str, Any], dict[str, Any]]:
    """Distributed recipes shard with FSDP2 (training/_distributed.py shard_model: fully_shard);
    single-device ones use one GPU."""
    pins: dict[str, Any] = {"zero_stage": 0, "offload_optimizer": "none", "offload_param": "none"}
    if "distributed" in recipe:
        pins, note = fsdp_pins("FULL_SHARD", bool(cfg.get("fsdp_cpu_offload")), version=2)
        out.notes.append(f"{recipe}: {note}")
    elif hardware.get("gpus_per_node", 1) * hardware.get("nodes", 1) > 1:
        out.notes.append(f"{recipe} runs on one GPU: estimated for one GPU of the given hardware")
        hardware.update(gpus_per_node=1, nodes=1)
    return hardware, pins


def read_torchtune(path: str | Path, hardware: dict[str, Any], deepspeed: str | Path | None = None,
                   cwd: str | Path | None = None) -> ForeignRead:
    """Read a torchtune config as a memfit plan (see `read_llamafactory` for the arguments).

    Raises:
        PlanError: unreadable file, or --deepspeed given (torchtune does not run DeepSpeed).
        ModelNotFoundError: a model builder memfit has no checkpoint id for.
    """
    src, p = str(path), Path(path)
    cfg = read_mapping(p)
    if deepspeed:
        raise PlanError(f"{src}: torchtune does not use DeepSpeed (its distributed recipes shard with FSDP2); "
                        "drop --deepspeed")
    model = cfg["model"]
    model_id, method = _builder(str(model["_component_"]), src)
    if model.get("quantize_base"):
        method = "qlora"
    recipe = recipe_of(p, cfg)
    out = ForeignRead(TOOL, f"{key_list('torchtune').rules} and defaults (recipe {recipe})", p, {}, data=cfg)
    out.notes.append(f"model: {model['_component_']} -> {model_id}; recipe {recipe}")
    hardware, pins = _sharding(cfg, recipe, dict(hardware), out)
    seq = (cfg.get("tokenizer") or {}).get("max_seq_len")
    if seq is None:
        out.warnings.append(f"tokenizer.max_seq_len: null: torchtune does not truncate, so the longest sample "
                            f"sets the length; estimated at {_DEFAULT_SEQ} tokens (set tokenizer.max_seq_len=N)")
    micro, gc = int(cfg.get("batch_size", 1)), bool(cfg.get("enable_activation_checkpointing", False))
    out.notes.append(f"gradient checkpointing: {'on' if gc else 'off'}"
                     f"{' (torchtune default)' if 'enable_activation_checkpointing' not in cfg else ''}")
    world = int(hardware.get("gpus_per_node", 1)) * int(hardware.get("nodes", 1))
    dtype = str(cfg.get("dtype", "fp32"))
    training = {"method": method, "seq_len": int(seq or _DEFAULT_SEQ),
                "global_batch_size": micro * int(cfg.get("gradient_accumulation_steps", 1)) * world,
                "precision": {"bf16": "pure_bf16", "fp32": "fp32", "fp16": "fp16"}.get(dtype, "fp32"),
                "optimizer": _optimizer(cfg, out), "attention": "sdpa",
                "lora": _lora(model, str(model["_component_"]).split(".")[2])}
    if "dpo" in recipe and method == "full":
        out.warnings.append(f"{recipe}: the reference model (a frozen copy of the policy) is not added to the estimate")
    _extras(cfg, model, out)
    stack, data = _stack(cfg, out)
    out.plan = {"model": model_id, "hardware": hardware, "training": {**training, **stack}, "data": data}
    out.pinned = {"method": method, **pins, "micro_batch_size": micro, "gradient_checkpointing": gc}
    return out


def refusal(cfg: dict[str, Any], strategy: Strategy, recipe: str) -> str | None:
    """What torchtune's recipe cannot run: DeepSpeed stages (single device: no sharding; distributed: FSDP2)."""
    if "distributed" not in recipe:
        if strategy.zero_stage or strategy.offload_optimizer != "none":
            return f"{recipe} runs on one GPU without sharding or offload"
        return None
    if strategy.zero_stage != 3 or strategy.offload_optimizer != strategy.offload_param or \
            strategy.offload_param == "nvme":
        return f"{recipe} shards with FSDP2 (ZeRO-3-like; fsdp_cpu_offload moves parameters and optimizer together)"
    return None


def overrides(read: ForeignRead, plan: Plan, strategy: Strategy) -> list[str]:
    """`key=value` overrides for `tune run` that apply the strategy to the user's config."""
    recipe = recipe_of(read.source, read.data)
    out = [f"batch_size={strategy.micro_batch_size}",
           f"gradient_accumulation_steps={accumulation_steps(strategy, plan)}",
           f"enable_activation_checkpointing={strategy.gradient_checkpointing}"]
    if "distributed" in recipe:
        out.append(f"fsdp_cpu_offload={strategy.offload_param == 'cpu'}")
    bad = unknown_names("torchtune", [o.split("=")[0] for o in out])
    if bad:
        raise ValueError(f"memfit wrote keys the {key_list('torchtune').rules} recipes do not read: {bad}")
    return out


def launch_line(read: ForeignRead, plan: Plan, strategy: Strategy, config_path: str) -> str:
    """`tune run [--nproc_per_node N] RECIPE --config FILE key=value ...`."""
    recipe = recipe_of(read.source, read.data)
    procs = f"--nproc_per_node {plan.hardware.gpus_per_node} " if "distributed" in recipe else ""
    return f"tune run {procs}{recipe} --config {config_path} " + " ".join(overrides(read, plan, strategy))
