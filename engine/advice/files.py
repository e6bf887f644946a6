"""The files `advise --out DIR` writes, rendered in memory; engine/advice/output.py writes them
all or nothing (`write_files`, re-exported here).
"""
from __future__ import annotations

import json
import shlex
from typing import TYPE_CHECKING, Any

from ..policy.knobs import KNOBS, describe, env_for
from .output import write_files

if TYPE_CHECKING:
    from ..plan.schema import Plan
    from .results import Advice, CandidateResult

__all__ = ["advice_files", "hf_config", "write_files"]


def _json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False) + "\n"


CLOSEST = 3  # how many closest non-fitting plans --out writes when nothing fits


def advice_files(advice: Advice, plan: Plan | None = None, max_plans: int | None = None) -> dict[str, str]:
    """The files `advise --out DIR` writes: name -> text.

    The top feasible plan goes to ds_config.json (concrete, for plain `deepspeed`), ds_config.hf.json
    ("auto" where the HF Trainer / accelerate / LLaMA-Factory fill values; needs `plan`) and launch.sh;
    every feasible plan (or the first `max_plans`) gets plans/NN-<key>/ds_config.json; advice.json
    holds it all. When nothing fits, no ds_config.json is written: the closest plans go under
    closest/NN-<key>/ with a README.md saying that they do not fit and why.
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
        files[f"{_folder('plans', i, c)}/ds_config.json"] = _json(c.deepspeed_config)
    if not feasible:
        files.update(closest_files(advice))
    return files


def _fsdp_yaml(c: CandidateResult) -> str:
    import yaml

    body: str = yaml.safe_dump(c.accelerate_config, sort_keys=False)
    return (f"# accelerate FSDP config written by memfit for {c.key}.\n"
            "# Run: accelerate launch --config_file fsdp_config.yaml train.py\n"
            + body)


def closest_files(advice: Advice, count: int = CLOSEST) -> dict[str, str]:
    """The closest non-fitting plans' configs under closest/, with a README.md marking them."""
    closest: list[CandidateResult] = []
    shapes: set[tuple[object, ...]] = set()
    for c in advice.candidates:  # distinct strategies: not the same one pinned and unpinned
        shape = (c.method, c.zero_stage, c.offload_optimizer, c.offload_param, c.gradient_checkpointing)
        if not c.feasible and c.deepspeed_config and shape not in shapes and len(closest) < count:
            shapes.add(shape)
            closest.append(c)
    if not closest:
        return {}
    readme = ["# These plans do NOT fit", "",
              f"memfit found no strategy for {advice.model.name} that fits this hardware within the policy's "
              "headroom. These are the closest candidates, written so you can see what they would be; "
              "running one is expected to run out of memory.", ""]
    files = {}
    for i, c in enumerate(closest, start=1):
        folder = _folder("closest", i, c)
        files[f"{folder}/ds_config.json"] = _json(c.deepspeed_config)
        readme.append(f"- `{folder.removeprefix('closest/')}/` ({c.key}): DOES NOT FIT: " + "; ".join(c.rejected_because))
    files["closest/README.md"] = "\n".join(readme) + "\n"
    return files


def _folder(root: str, i: int, c: CandidateResult) -> str:
    return f"{root}/{i:02d}-{c.key.replace('/', '-')}"


def hf_config(candidate: CandidateResult, plan: Plan) -> dict[str, Any]:
    """The HF-flavor DeepSpeed config of a candidate ("auto" where the HF Trainer fills values)."""
    from ..deepspeed.config import deepspeed_config
    from ..model.spec import plan_model

    s = candidate.to_strategy()
    return deepspeed_config(s, plan, plan_model(plan), flavor="hf",
                            pin_memory=s.pin_memory, gather_16bit_on_save=s.gather_16bit_on_save)


def _launch_script(c: CandidateResult) -> str:
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
