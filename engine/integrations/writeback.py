"""Write advice back in the user's own format: choose a plan the tool accepts, emit its files.

Shared by the LLaMA-Factory, axolotl and torchtune writers: the DeepSpeed JSON they point at, the
choice of the best feasible candidate the tool does not refuse, and launch.sh.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..plan.strategy import Strategy

if TYPE_CHECKING:
    from ..advice.results import Advice, CandidateResult
    from ..plan.schema import Plan


def tool_deepspeed_config(candidate: CandidateResult, plan: Plan) -> dict[str, Any]:
    """The HF-flavor DeepSpeed config for a tool that builds its own optimizer (HF Trainer based).

    No `optimizer` block: with one, the HF Trainer skips create_optimizer() and the tool's `optim:`
    choice (LoRA+, GaLore, 8-bit Adam, ...) is silently replaced by DeepSpeed's AdamW. LLaMA-Factory's
    and axolotl's own DeepSpeed JSONs carry none. DeepSpeed must then accept a client optimizer under
    ZeRO (zero_allow_untested_optimizer) and, with offload, one that is not its CPU Adam.
    """
    from ..advice.files import hf_config

    cfg = hf_config(candidate, plan)
    cfg.pop("optimizer", None)
    cfg["zero_allow_untested_optimizer"] = True
    if candidate.offload_optimizer != "none":
        cfg["zero_force_ds_cpu_optimizer"] = False
    return cfg


@dataclass
class Chosen:
    """The candidate written back (None: nothing fits, or the tool refuses all that fit) and the
    better-ranked ones the tool refuses, with its reason."""

    candidate: Optional[CandidateResult]
    skipped: list[str] = field(default_factory=list)


def choose(advice: Advice, refusal: Callable[[Strategy], str | None]) -> Chosen:
    """The best feasible candidate that `refusal` lets through."""
    skipped: list[str] = []
    for c in advice.candidates:
        if not c.feasible:
            continue
        why = refusal(c.to_strategy())
        if why is None:
            return Chosen(c, skipped)
        skipped.append(f"{c.key}: {why}")
    return Chosen(None, skipped)


def launch_script(lines: list[str], written: list[str]) -> str:
    """launch.sh naming exactly the files written beside it."""
    return "\n".join(["#!/usr/bin/env bash", "# Written by memfit. Files written with it: " + ", ".join(written),
                      "set -euo pipefail", "", *lines]) + "\n"


def json_text(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2) + "\n"


def absolute(out_dir: str | Path, name: str) -> str:
    """An absolute path for a written file: tools open relative paths from their working directory."""
    return str((Path(out_dir) / name).resolve())
