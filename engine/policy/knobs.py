"""Where each `set` knob takes effect, so that a rule's `set` means what it says.

A `set` action names a knob of the run outside the strategy itself (the strategy's DeepSpeed
choices, ZeRO stage, offload, pin_memory, 16-bit gather, are the search's and reach the DeepSpeed JSON
through the candidate). Each knob has one place it acts:

- env: an environment variable of the training processes; exported in launch.sh and put in front of
  every launch line (and written to .deepspeed_env for multi-node `deepspeed` runs, whose launcher
  forwards only the variables listed there or with a few prefixes: deepspeed/launcher/runner.py
  EXPORT_ENVS = MLFLOW, PYTHON, MV2, UCX).
- accelerate: a key of the accelerate config's `fsdp_config` (FSDP plans): written into the
  fsdp_config.yaml memfit emits (accelerate/utils/dataclasses.py FullyShardedDataParallelPlugin).
- script: an argument of the training script's own code (model loading, data loading); memfit cannot
  change the script, so the setting is shown in the text output and as a comment in launch.sh.

No shipped knob is a DeepSpeed config key; the FSDP knobs reach the accelerate config. The knob names are fixed by schemas/rule.schema.json.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class Knob:
    applies: str   # "env" | "accelerate" | "script"
    target: str    # the environment variable, or the script setting
    source: str    # where the setting is documented


KNOBS: dict[str, Knob] = {
    "pytorch_cuda_alloc_conf": Knob("env", "PYTORCH_CUDA_ALLOC_CONF",
                                    "PyTorch CUDA semantics docs (memory management: expandable_segments)"),
    "bnb_4bit_quant_storage": Knob("script", "BitsAndBytesConfig(bnb_4bit_quant_storage=torch.{value})",
                                   "HF peft DeepSpeed guide (QLoRA with ZeRO-3)"),
    "dataset_streaming": Knob("script", "datasets.load_dataset(..., streaming={value})",
                              "HF datasets docs (streaming)"),
    "fsdp_use_orig_params": Knob("accelerate", "fsdp_use_orig_params",
                                 "accelerate FullyShardedDataParallelPlugin.use_orig_params"),
    "fsdp_cpu_ram_efficient_loading": Knob("accelerate", "fsdp_cpu_ram_efficient_loading",
                                           "accelerate FullyShardedDataParallelPlugin.cpu_ram_efficient_loading"),
    "fsdp_sync_module_states": Knob("accelerate", "fsdp_sync_module_states",
                                    "accelerate FullyShardedDataParallelPlugin.sync_module_states"),
}


def _text(value: Any) -> str:
    return str(value) if not isinstance(value, bool) else ("True" if value else "False")


def env_for(settings: Mapping[str, Any]) -> dict[str, str]:
    """The environment variables the settings ask for (env knobs only)."""
    return {KNOBS[k].target: _text(v) for k, v in settings.items() if k in KNOBS and KNOBS[k].applies == "env"}


def accelerate_for(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The accelerate `fsdp_config` keys the settings ask for (accelerate knobs only)."""
    return {KNOBS[k].target: v for k, v in settings.items() if k in KNOBS and KNOBS[k].applies == "accelerate"}


def describe(knob: str, value: Any) -> str:
    """One line saying what the setting is and where it acts."""
    k = KNOBS.get(knob)
    if k is None:
        return f"{knob} = {_text(value)} (not applied anywhere: unknown knob)"
    if k.applies == "env":
        return f"{k.target}={_text(value)} (environment of the training processes; exported in launch.sh)"
    if k.applies == "accelerate":
        return f"fsdp_config.{k.target}: {_text(value)} (written into fsdp_config.yaml)"
    return f"{k.target.format(value=_text(value))} (in the training script; memfit cannot set it for you)"
