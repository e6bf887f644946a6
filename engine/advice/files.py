"""Write advice files into an output folder atomically, never overwriting without `force`.

Everything is rendered in memory first; then each file is written to a temporary name in the same
folder and moved into place, so an interrupted run leaves either the old file or the new one.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Mapping

from ..core.errors import OutputExistsError


def _json(data) -> str:
    return json.dumps(data, indent=2, sort_keys=False) + "\n"


CLOSEST = 3  # how many closest non-fitting plans --out writes when nothing fits


def advice_files(advice, plan=None, max_plans: int | None = None) -> dict[str, str]:
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
        if "hostfile" in best.launch:
            files["hostfile"] = best.launch["hostfile"]
    for i, c in enumerate(feasible[:max_plans], start=1):
        files[f"{_folder('plans', i, c)}/ds_config.json"] = _json(c.deepspeed_config)
    if not feasible:
        files.update(closest_files(advice))
    return files


def closest_files(advice, count: int = CLOSEST) -> dict[str, str]:
    """The closest non-fitting plans' configs under closest/, with a README.md marking them."""
    closest, shapes = [], set()
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


def _folder(root: str, i: int, c) -> str:
    return f"{root}/{i:02d}-{c.key.replace('/', '-')}"


def hf_config(candidate, plan) -> dict:
    """The HF-flavor DeepSpeed config of a candidate ("auto" where the HF Trainer fills values)."""
    from ..deepspeed.config import deepspeed_config
    from ..model.spec import resolve_model

    s = candidate.to_strategy()
    return deepspeed_config(s, plan, resolve_model(plan.model, plan.base_dir), flavor="hf",
                            pin_memory=s.pin_memory, gather_16bit_on_save=s.gather_16bit_on_save)


def _launch_script(c) -> str:
    lines = ["#!/usr/bin/env bash", "# Written by memfit (advise --out). Pick one launcher line.",
             c.launch.get("comment", ""), "set -euo pipefail", ""]
    for name in ("deepspeed", "accelerate", "llamafactory"):
        if name in c.launch:
            prefix = "" if name == "deepspeed" else "# "
            lines.append(f"{prefix}{c.launch[name]}")
    return "\n".join(lines) + "\n"


def write_files(out_dir: str | Path, files: Mapping[str, str], force: bool = False) -> list[Path]:
    """Write files under out_dir atomically.

    Raises:
        OutputExistsError: some files exist and force is False (nothing is written then).
    """
    root = Path(out_dir)
    targets = {root / name: text for name, text in files.items()}
    existing = [str(p) for p in targets if p.exists()]
    if existing and not force:
        raise OutputExistsError([f"{p}: exists; use --force to overwrite" for p in existing])
    written = []
    for path, text in targets.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.chmod(tmp, 0o755 if path.suffix == ".sh" else 0o644)  # mkstemp creates 0600
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(path)
    return written
