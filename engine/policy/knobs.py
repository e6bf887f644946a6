"""Where each `set` knob takes effect, so that a rule's `set` means what it says.

A `set` action names a knob of the run outside the strategy itself (the strategy's DeepSpeed
choices, ZeRO stage, offload, pin_memory, 16-bit gather, are the search's and reach the DeepSpeed JSON
through the candidate). Each knob has one place it acts:

- env: an environment variable of the training processes; exported in launch.sh and put in front of
  every launch line (and written to .deepspeed_env for multi-node `deepspeed` runs, whose launcher
  forwards only the variables listed there or with a few prefixes: deepspeed/launcher/runner.py
  EXPORT_ENVS = MLFLOW, PYTHON, MV2, UCX).
- script: an argument of the training script's own code (model loading, data loading); memfit cannot
  change the script, so the setting is shown in the text output and as a comment in launch.sh.

No shipped knob is a DeepSpeed config key. The knob names are fixed by schemas/rule.schema.json.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class Knob:
    applies: str   # "env" | "script"
    target: str    # the environment variable, or the script setting
    source: str    # where the setting is documented


KNOBS: dict[str, Knob] = {
    "pytorch_cuda_alloc_conf": Knob("env", "PYTORCH_CUDA_ALLOC_CONF",
                                    "PyTorch CUDA semantics docs (memory management: expandable_segments)"),
    "bnb_4bit_quant_storage": Knob("script", "BitsAndBytesConfig(bnb_4bit_quant_storage=torch.{value})",
                                   "HF peft DeepSpeed guide (QLoRA with ZeRO-3)"),
    "dataset_streaming": Knob("script", "datasets.load_dataset(..., streaming={value})",
                              "HF datasets docs (streaming)"),
}


def _text(value: Any) -> str:
    return str(value) if not isinstance(value, bool) else ("True" if value else "False")


def env_for(settings: Mapping[str, Any]) -> dict[str, str]:
    """The environment variables the settings ask for (env knobs only)."""
    return {KNOBS[k].target: _text(v) for k, v in settings.items() if k in KNOBS and KNOBS[k].applies == "env"}


def describe(knob: str, value: Any) -> str:
    """One line saying what the setting is and where it acts."""
    k = KNOBS.get(knob)
    if k is None:
        return f"{knob} = {_text(value)} (not applied anywhere: unknown knob)"
    if k.applies == "env":
        return f"{k.target}={_text(value)} (environment of the training processes; exported in launch.sh)"
    return f"{k.target.format(value=_text(value))} (in the training script; memfit cannot set it for you)"
