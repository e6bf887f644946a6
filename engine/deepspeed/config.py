"""Strategy + Plan -> a DeepSpeed JSON config, ready to run.

Two flavors:
- "concrete": every value filled in (plain `deepspeed train.py --deepspeed_config ds.json`).
- "hf": the values the Hugging Face Trainer fills itself are "auto" (batch sizes, accumulation, clipping,
  optimizer hyper-parameters, precision switches, the three hidden-size based bucket sizes), so the JSON
  cannot disagree with the TrainingArguments it is used with.

Notes that must not go into the JSON (DeepSpeed ignores unknown keys silently, and memfit's own schema
rejects them) come from `config_notes`.
"""
from __future__ import annotations

from typing import Any

from ..core import ds_defaults
from ..core.ds_defaults import (AIO as _AIO, HF_DEFAULT_BETAS, HF_DEFAULT_EPS, HF_DEFAULT_LR,
                               HF_DEFAULT_WEIGHT_DECAY, MAX_LIVE_PARAMETERS, MAX_REUSE_DISTANCE, OPT_NVME_BUFFERS,
                               PARAM_NVME_BUFFER_SIZE, PARAM_NVME_BUFFERS, SUB_GROUP_SIZE)
from ..plan.schema import Plan
from ..plan.strategy import Strategy

Flavor = str  # "concrete" | "hf"


def accumulation_steps(strategy: Strategy, plan: Plan, world_size: int | None = None) -> int:
    """Gradient accumulation that reaches the plan's global batch (rounded up), else 1.

    Args:
        strategy: supplies the micro-batch size.
        plan: supplies `training.global_batch_size` and the world size.
        world_size: override (verify runs on one process).
    """
    return ds_defaults.accumulation_steps(plan.training.global_batch_size, strategy.micro_batch_size,
                                          world_size or plan.hardware.world_size)


def _hidden_size(plan: Plan, facts: Any) -> int | None:
    if facts is not None and getattr(facts, "hidden_size", None):
        return int(facts.hidden_size)
    if isinstance(plan.model, dict) and isinstance(plan.model.get("hidden_size"), int):
        hidden: int = plan.model["hidden_size"]
        return hidden
    return None


def bucket_sizes(plan: Plan, facts: Any = None) -> dict[str, int]:
    """DeepSpeed bucket sizes for the plan's model (core.ds_defaults.bucket_sizes of its hidden size)."""
    return ds_defaults.bucket_sizes(_hidden_size(plan, facts))


def _precision(plan: Plan, hf: bool) -> dict[str, Any]:
    precision = plan.training.precision
    if precision in ("bf16", "pure_bf16"):
        return {"bf16": {"enabled": "auto" if hf else True}}
    if precision == "fp16":
        # Dynamic loss scaling: loss_scale 0 means dynamic; start at 2^16, halve on overflow,
        # double after 1000 clean steps (DeepSpeed config-json docs, fp16 section).
        return {"fp16": {"enabled": "auto" if hf else True, "loss_scale": 0, "initial_scale_power": 16,
                         "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1}}
    return {}


def _offload_optimizer(device: str, plan: Plan, pin_memory: bool) -> dict[str, Any]:
    block: dict[str, Any] = {"device": device, "pin_memory": pin_memory}
    if device == "nvme":
        block.update(nvme_path=plan.hardware.nvme_path, buffer_count=OPT_NVME_BUFFERS,
                     pipeline_read=False, pipeline_write=False)
    return block


def _offload_param(device: str, plan: Plan, facts: Any, pin_memory: bool) -> dict[str, Any]:
    block: dict[str, Any] = {"device": device, "pin_memory": pin_memory}
    if device == "nvme":
        # Each swap buffer must hold the largest single parameter tensor (embedding / lm_head).
        largest = int(getattr(facts, "largest_layer_params", 0) or 0)
        block.update(nvme_path=plan.hardware.nvme_path, buffer_count=PARAM_NVME_BUFFERS,
                     buffer_size=max(PARAM_NVME_BUFFER_SIZE, largest), max_in_cpu=1_000_000_000)
    return block


def _zero(strategy: Strategy, plan: Plan, facts: Any, hf: bool, pin_memory: bool,
          gather_16bit_on_save: bool) -> dict[str, Any]:
    stage = strategy.zero_stage
    b = bucket_sizes(plan, facts)
    zero: dict[str, Any] = {"stage": stage}
    if stage == 0:
        return zero
    zero.update(overlap_comm=True, contiguous_gradients=True,
                reduce_bucket_size="auto" if hf else b["reduce"])
    if stage in (1, 2):
        zero["allgather_bucket_size"] = b["allgather"]  # HF does not fill this one
    else:
        zero.update(stage3_prefetch_bucket_size="auto" if hf else b["prefetch"],
                    stage3_param_persistence_threshold="auto" if hf else b["persistence"],
                    # DeepSpeed defaults; lower them only when GPU memory is the limit.
                    stage3_max_live_parameters=MAX_LIVE_PARAMETERS, stage3_max_reuse_distance=MAX_REUSE_DISTANCE,
                    sub_group_size=SUB_GROUP_SIZE,
                    stage3_gather_16bit_weights_on_model_save=gather_16bit_on_save)
    zero.update(_plan_knobs(plan, stage))
    if strategy.offload_optimizer != "none":
        zero["offload_optimizer"] = _offload_optimizer(strategy.offload_optimizer, plan, pin_memory)
    if stage == 3 and strategy.offload_param != "none":
        zero["offload_param"] = _offload_param(strategy.offload_param, plan, facts, pin_memory)
    return zero


def _plan_knobs(plan: Plan, stage: int) -> dict[str, Any]:
    """The zero_optimization values the plan sets itself (`training.deepspeed`), for the stages that
    read them: the stage3_ keys and sub_group_size only at stage 3 (DeepSpeed ignores them below)."""
    return {k: v for k, v in plan.training.deepspeed.given().items()
            if stage == 3 or not (k.startswith("stage3_") or k == "sub_group_size")}


def _optimizer(plan: Plan, hf: bool, learning_rate: float) -> dict[str, Any] | None:
    if plan.training.optimizer != "adamw":
        return None
    if hf:
        params: dict[str, Any] = {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"}
    else:
        params = {"lr": learning_rate, "betas": list(HF_DEFAULT_BETAS), "eps": HF_DEFAULT_EPS,
                  "weight_decay": HF_DEFAULT_WEIGHT_DECAY}
    return {"type": "AdamW", "params": params}


def _batch(strategy: Strategy, plan: Plan, hf: bool, world_size: int | None) -> dict[str, Any]:
    if hf:
        return {"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
                "gradient_accumulation_steps": "auto", "gradient_clipping": "auto"}
    world = world_size or plan.hardware.world_size
    accum = accumulation_steps(strategy, plan, world)
    return {"train_batch_size": strategy.micro_batch_size * accum * world,
            "train_micro_batch_size_per_gpu": strategy.micro_batch_size,
            "gradient_accumulation_steps": accum, "gradient_clipping": 1.0}


def deepspeed_config(strategy: Strategy, plan: Plan, facts: Any = None, flavor: Flavor = "concrete", *,
                     pin_memory: bool = True, gather_16bit_on_save: bool = True,
                     learning_rate: float = HF_DEFAULT_LR, world_size: int | None = None) -> dict[str, Any]:
    """Build the DeepSpeed config for one strategy.

    Args:
        strategy: the concrete strategy (method, ZeRO stage, offloads, micro-batch).
        plan: supplies precision, optimizer, global batch, world size, nvme_path.
        facts: any object with `hidden_size`, `largest_layer_params`, `total_params` (bucket sizes only).
        flavor: "concrete" (no "auto") or "hf" ("auto" wherever the HF Trainer fills the value).
        pin_memory: pinned host buffers for offload (rules turn this off when host RAM is tight).
        gather_16bit_on_save: ZeRO-3 gathers a 16-bit state dict on save (costs one full copy on rank 0).
        learning_rate: concrete-flavor AdamW learning rate.
        world_size: override the plan's world size (verify runs with 1 process).
    Returns:
        A JSON-serialisable dict; see `config_notes` for what it leaves to the trainer.
    Raises:
        ValueError: unknown flavor, or NVMe offload without `hardware.nvme_path`.
    """
    if flavor not in ("concrete", "hf"):
        raise ValueError(f"flavor must be 'concrete' or 'hf' (got {flavor!r})")
    nvme = "nvme" in (strategy.offload_optimizer, strategy.offload_param)
    if nvme and not plan.hardware.nvme_path:
        raise ValueError("NVMe offload needs hardware.nvme_path in the plan (the mount point to swap to)")
    hf = flavor == "hf"
    cfg: dict[str, Any] = _batch(strategy, plan, hf, world_size)
    cfg.update(_precision(plan, hf))
    cfg["zero_optimization"] = _zero(strategy, plan, facts, hf, pin_memory, gather_16bit_on_save)
    if nvme:
        cfg["aio"] = dict(_AIO)
    optimizer = _optimizer(plan, hf, learning_rate)
    if optimizer is not None:
        cfg["optimizer"] = optimizer
    else:
        # The trainer brings its own optimizer: DeepSpeed must accept it under ZeRO and offload.
        cfg["zero_allow_untested_optimizer"] = True
        if strategy.offload_optimizer != "none":
            cfg["zero_force_ds_cpu_optimizer"] = False
    cfg.update(steps_per_print=100, wall_clock_breakdown=False)
    return cfg


def config_notes(strategy: Strategy, plan: Plan, flavor: Flavor = "concrete") -> list[str]:
    """What the config leaves to the trainer or the person, one line each (kept out of the JSON).

    Returns:
        Human-readable notes; empty when there is nothing to say.
    """
    notes: list[str] = []
    t = plan.training
    if t.global_batch_size is not None and flavor == "concrete":
        accum = accumulation_steps(strategy, plan)
        real = strategy.micro_batch_size * accum * plan.hardware.world_size
        if real != t.global_batch_size:
            notes.append(f"global batch {t.global_batch_size} is not a multiple of micro x world; "
                         f"rounded up to {real} ({accum} accumulation steps)")
    if t.optimizer != "adamw":
        notes.append(f"optimizer {t.optimizer}: no optimizer block; the trainer creates it "
                     "(zero_allow_untested_optimizer is set)")
        if strategy.offload_optimizer != "none":
            notes.append(f"optimizer {t.optimizer} with optimizer offload: DeepSpeed's CPU Adam is not used, "
                         "so the step runs a client optimizer on CPU tensors (8-bit/bitsandbytes optimizers "
                         "need GPU tensors and will fail)")
    elif strategy.offload_optimizer == "cpu":
        notes.append("optimizer offload to CPU: DeepSpeed swaps AdamW for its CPU Adam (compiled on first use)")
    if strategy.gradient_checkpointing:
        notes.append("gradient checkpointing is switched on in the trainer "
                     "(gradient_checkpointing=True), not in this JSON")
    if strategy.method == "qlora" and strategy.zero_stage == 3:
        notes.append("QLoRA under ZeRO-3 needs bnb_4bit_quant_storage equal to the compute dtype")
    notes.append("no scheduler block: the trainer's scheduler is used (plain deepspeed keeps the LR constant)")
    return notes
