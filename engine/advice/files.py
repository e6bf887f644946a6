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
        if "hostfile" in best.launch:
            files["hostfile"] = best.launch["hostfile"]
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
