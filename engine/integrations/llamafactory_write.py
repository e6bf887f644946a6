"""Write a LLaMA-Factory YAML back: the user's file with comments and key order, strategy keys changed.

Refusals (llamafactory 0.9.5 src/llamafactory/hparams/parser.py::get_train_args) honoured when choosing
what to write: "GaLore and APOLLO are incompatible with DeepSpeed yet."; "`pure_bf16` is incompatible
with DeepSpeed ZeRO-3."; "Layer-wise BAdam only supports DeepSpeed ZeRO-3 training." (distributed);
"Radio-based BAdam does not yet support distributed training". Launching: `llamafactory-cli train`
uses torchrun only with FORCE_TORCHRUN=1 or several visible GPUs (launcher.py), and a `deepspeed:`
run without torchrun is refused ("Please use `FORCE_TORCHRUN=1` to launch DeepSpeed training.").
"""
from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Any

from ..deepspeed.config import accumulation_steps
from ..plan.strategy import Strategy
from .common import DELETE, ForeignRead, edit_yaml
from .keylists import key_list, unknown_names

if TYPE_CHECKING:
    from ..plan.schema import Plan


def refusal(lf: dict[str, Any], strategy: Strategy, world: int) -> str | None:
    """Why LLaMA-Factory would refuse `strategy` for this YAML (its own message), or None."""
    deepspeed = strategy.zero_stage > 0
    if deepspeed and (lf.get("use_galore") or lf.get("use_apollo")):
        return "LLaMA-Factory: GaLore and APOLLO are incompatible with DeepSpeed yet."
    if strategy.zero_stage == 3 and lf.get("pure_bf16"):
        return "LLaMA-Factory: `pure_bf16` is incompatible with DeepSpeed ZeRO-3."
    if lf.get("use_badam") and world > 1:
        if lf.get("badam_mode", "layer") == "ratio":
            return "LLaMA-Factory: Radio-based BAdam does not yet support distributed training"
        if strategy.zero_stage != 3:
            return "LLaMA-Factory: Layer-wise BAdam only supports DeepSpeed ZeRO-3 training."
    return None


def _method(lf: dict[str, Any], read: ForeignRead, strategy: Strategy, plan: Plan) -> dict[str, Any]:
    if strategy.method == read.pinned["method"]:
        return {}  # the user's method (oft, freeze, 8-bit ...) stays exactly as written
    changes: dict[str, Any] = {"finetuning_type": "full" if strategy.method == "full" else "lora",
                               "quantization_bit": 4 if strategy.method == "qlora" else DELETE}
    if strategy.method != "full" and "lora_rank" not in lf:
        targets = plan.training.lora.target_modules
        changes.update(lora_rank=int(plan.training.lora.rank),
                       lora_target="all" if targets == "all-linear" else ",".join(targets))
    return changes


def llamafactory_yaml(read: ForeignRead, plan: Plan, strategy: Strategy, ds_path: str | None) -> str:
    """The user's YAML with memfit's strategy: method only where memfit changed it, batch, checkpointing, deepspeed.

    Args:
        read: the ForeignRead of the user's YAML (its file is edited line by line, comments kept).
        plan: the plan it was read into (global batch, LoRA settings).
        strategy: the chosen strategy.
        ds_path: the absolute path of the DeepSpeed JSON, or None for no DeepSpeed (ZeRO-0).
    Returns:
        YAML text: a header comment, then the user's file with only the strategy keys changed.
    Raises:
        ValueError: a key memfit wrote is not an argument of the LLaMA-Factory version whose rules apply.
    """
    lf = read.data
    changes = _method(lf, read, strategy, plan)
    changes.update(per_device_train_batch_size=int(strategy.micro_batch_size),
                   gradient_accumulation_steps=int(accumulation_steps(strategy, plan)))
    if not strategy.gradient_checkpointing or "disable_gradient_checkpointing" in lf:
        changes["disable_gradient_checkpointing"] = not strategy.gradient_checkpointing  # default: on
    if ds_path:
        changes["deepspeed"] = ds_path
        changes.update({k: DELETE for k in ("fsdp", "fsdp_config", "fsdp_transformer_layer_cls_to_wrap")
                        if k in lf})  # the HF Trainer takes one of deepspeed and fsdp
    elif "deepspeed" in lf:
        changes["deepspeed"] = DELETE
    changes = {k: v for k, v in changes.items() if not (v is DELETE and k not in lf)}
    bad = unknown_names("llamafactory", [k for k, v in changes.items() if v is not DELETE])
    if bad:
        raise ValueError(f"memfit wrote keys that {key_list('llamafactory').rules} does not have: {bad}")
    header = (f"# LLaMA-Factory config written by memfit for strategy {strategy.key} from {read.source.name}\n"
              f"# (keys checked against {key_list('llamafactory').rules}).\n")
    return header + edit_yaml(read.source, changes)


def launch_line(yaml_path: str, plan: Plan, uses_deepspeed: bool) -> str:
    """`llamafactory-cli train YAML`, with FORCE_TORCHRUN=1 for any DeepSpeed run or several GPUs."""
    hw = plan.hardware
    env = []
    if uses_deepspeed or hw.world_size > 1:
        env.append("FORCE_TORCHRUN=1")
    if hw.nodes > 1:
        env += [f"NNODES={hw.nodes}", 'NODE_RANK="$NODE_RANK"', "MASTER_ADDR=node-1", "MASTER_PORT=29500"]
    return " ".join([*env, "llamafactory-cli", "train", shlex.quote(yaml_path)])
