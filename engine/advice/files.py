"""The files `advise --out DIR` writes, rendered in memory; engine/advice/output.py writes them
all or nothing (`write_files`, re-exported here).
"""
from __future__ import annotations

import json
import shlex

from ..policy.knobs import KNOBS, describe, env_for
from .output import write_files

__all__ = ["advice_files", "hf_config", "write_files"]


def _json(data) -> str:
    return json.dumps(data, indent=2, sort_keys=False) + "\n"


def advice_files(advice, plan=None, max_plans: int = 5) -> dict[str, str]:
    """The files `advise --out DIR` writes: name -> text.

    The top feasible plan goes to ds_config.json (concrete, for plain `deepspeed`), ds_config.hf.json
    ("auto" where the HF Trainer / accelerate / LLaMA-Factory fill values; needs `plan`) and launch.sh;
    every feasible plan up to `max_plans` gets plans/NN-<key>/ds_config.json; advice.json holds it all.
    """
    files = {"advice.json": _json(advice.model_dump(mode="json"))}
    feasible = [c for c in advice.candidates if c.feasible and c.deepspeed_config]
    if feasible:
        best = feasible[0]
        files["ds_config.json"] = _json(best.deepspeed_config)
        if plan is not None:
            files["ds_config.hf.json"] = _json(hf_config(best, plan))
        files["launch.sh"] = _launch_script(best)
        if "hostfile" in best.launch:  # built here, once, not per candidate
            from ..deepspeed.launch import hostfile_text

            files["hostfile"] = hostfile_text(advice.hardware.nodes, advice.hardware.gpus_per_node)
        if "deepspeed_env" in best.launch:
            files[".deepspeed_env"] = best.launch["deepspeed_env"]
    fsdp = [c for c in advice.candidates if c.feasible and c.accelerate_config]
    if fsdp:  # the top FSDP plan: accelerate config, and the other tools' keys (engine/fsdp/config.py)
        files["fsdp_config.yaml"] = _fsdp_yaml(fsdp[0])
        files["fsdp_framework_keys.json"] = _json(fsdp[0].framework_keys)
    for i, c in enumerate(feasible[:max_plans], start=1):
        folder = f"plans/{i:02d}-{c.key.replace('/', '-')}"
        files[f"{folder}/ds_config.json"] = _json(c.deepspeed_config)
    return files


def _fsdp_yaml(c) -> str:
    import yaml

    return (f"# accelerate FSDP config written by memfit for {c.key}.\n"
            "# Run: accelerate launch --config_file fsdp_config.yaml train.py\n"
            + yaml.safe_dump(c.accelerate_config, sort_keys=False))


def hf_config(candidate, plan) -> dict:
    """The HF-flavor DeepSpeed config of a candidate ("auto" where the HF Trainer fills values)."""
    from ..deepspeed.config import deepspeed_config
    from ..model.spec import plan_model

    s = candidate.to_strategy()
    return deepspeed_config(s, plan, plan_model(plan), flavor="hf",
                            pin_memory=s.pin_memory, gather_16bit_on_save=s.gather_16bit_on_save)


def _launch_script(c) -> str:
    lines = ["#!/usr/bin/env bash", "# Written by memfit (advise --out). Pick one launcher line.",
             c.launch.get("comment", ""), "set -euo pipefail", ""]
    exports = env_for(c.settings)
    lines += [f"export {k}={shlex.quote(v)}  # set by the rules" for k, v in exports.items()]
    lines += [f"# set by the rules, in your training script: {describe(k, v)}"
              for k, v in c.settings.items() if k not in KNOBS or KNOBS[k].applies != "env"]
    if len(lines) > 5:
        lines.append("")
    for name in ("deepspeed", "accelerate"):
        if name in c.launch:
            prefix = "" if name == "deepspeed" else "# "
            lines.append(f"{prefix}{c.launch[name]}")
    # No llamafactory-cli line: it would name a YAML this command does not write.
    lines.append("# LLaMA-Factory, axolotl, torchtune: `advise YOUR_CONFIG --hardware HW.yaml --out DIR` writes "
                 "your config back with its own launch line.")
    return "\n".join(lines) + "\n"
