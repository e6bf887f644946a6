"""Measured evidence (logs of real runs) matched to a plan: the measured half of the facts.

- The strategy of the run that wrote a log is read from DeepSpeed's own config print (`zero_config
  .... stage=3 ... offload_param=...(device='cpu' ...)`) and the trainer's batch line where present,
  and completed from what the plan pins (a log line always wins over the plan).
- A GPU or host OOM rejects that strategy and every candidate predicted to need at least as much as
  memfit predicts for it (sweep._matching_oom). With no strategy known there is nothing to compare a
  candidate with: the OOM is reported, not used (a log from another card or model proves nothing here).
- A measured peak calibrates: ratio = measured / estimated for the run's strategy; candidates of the
  same family (method, ZeRO stage, offloads) are scaled by it and use the measured error as their GPU
  headroom instead of the policy default.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional

from ..memory.estimate import estimate_memory
from ..plan.strategy import Strategy
from .reader import MATCH_CHARS, read_blocks

if TYPE_CHECKING:
    from ..model.spec import ModelSpec
    from ..plan.schema import Plan
    from .record import LogRecord

# A calibration family: (method, ZeRO stage, offload_optimizer, offload_param).
Family = tuple[str, int, str, str]

_STAGE = re.compile(r"zero_config \.+ stage=(\d)")
_DEVICE = {"offload_param": re.compile(r"offload_param=\w*\(device='(\w+)'"),
           "offload_optimizer": re.compile(r"offload_optimizer=\w*\(device='(\w+)'")}
_PIN = re.compile(r"pin_memory=(True|False)")
_MICRO = re.compile(r"(?:train_micro_batch_size_per_gpu \.*|Instantaneous batch size per device = )\s*(\d+)")
# Calibrated headroom never drops below this: even a measured plan varies run to run.
MIN_CALIBRATED_HEADROOM = 0.05


@dataclass(frozen=True)
class OomEvidence:
    kind: str                    # gpu_oom | host_oom
    source: str                  # FILE:LINE
    strategy: Strategy           # the run's strategy
    gpu_gib: float               # memfit's estimate for that strategy
    host_gib: float


@dataclass(frozen=True)
class Evidence:
    """What the sweep needs from the measured facts."""

    ooms: tuple[OomEvidence, ...] = ()
    family: Optional[Family] = None   # (method, zero_stage, offload_optimizer, offload_param) calibrated
    ratio: float = 0.0               # measured / estimated GPU peak for that family (0: none)
    fragmentation: bool = False
    present: bool = False
    notes: tuple[str, ...] = ()      # what was read, and what could not be used
    ratio_source: str = ""           # where the measured peak behind `ratio` was read (FILE:LINE, store record)

    def ratio_for(self, strategy: Strategy) -> float:
        """The measured/estimated ratio that applies to a candidate (0.0: none, another family)."""
        return self.ratio if self.ratio and self.family == _family(strategy) else 0.0

    def calibration(self, strategy: Strategy, policy_headroom: float) -> tuple[float, float]:
        """(scale for the GPU estimate, GPU headroom) for a candidate."""
        ratio = self.ratio_for(strategy)
        if ratio:
            return ratio, max(MIN_CALIBRATED_HEADROOM, min(policy_headroom, abs(ratio - 1)))
        return 1.0, policy_headroom


def _family(s: Strategy) -> Family:
    return (s.method, s.zero_stage, s.offload_optimizer, s.offload_param)


def family_of(s: Strategy) -> Family:
    """The calibration family of a strategy (what Evidence.family holds): method, ZeRO stage, offloads."""
    return _family(s)


def infer_run(path: str | Path) -> dict[str, Any]:
    """Strategy fields a log states about its own run (DeepSpeed's config print, the trainer's batch)."""
    found: dict[str, Any] = {}
    for block in read_blocks(path):  # the same reader as the facts: gzip by magic bytes, bounded lines
        if b"zero_config" not in block and b"batch" not in block:
            continue
        for raw in block.split(b"\n"):
            if b"zero_config" in raw or b"batch" in raw:
                _infer_line(raw[:MATCH_CHARS].decode("utf-8", "replace"), found)
    return found


def _infer_line(line: str, found: dict[str, Any]) -> None:
    if "zero_config" in line and (m := _STAGE.search(line)):
        found["zero_stage"] = int(m.group(1))
        for key, rx in _DEVICE.items():
            d = rx.search(line)
            found[key] = d.group(1) if d and d.group(1) in ("cpu", "nvme") else "none"
        if pin := _PIN.search(line):
            found["pin_memory"] = pin.group(1) == "True"
    elif "batch" in line and (m := _MICRO.search(line)):
        found.setdefault("micro_batch_size", int(m.group(1)))


def run_strategy(plan: Plan, inferred: dict[str, Any]) -> Optional[Strategy]:
    """The run's strategy: log lines first, then the plan's pins; None if a choice stays unknown."""
    t = plan.training
    pins = {"method": t.method, "zero_stage": t.zero_stage, "offload_optimizer": t.offload_optimizer,
            "offload_param": t.offload_param, "gradient_checkpointing": t.gradient_checkpointing,
            "micro_batch_size": t.micro_batch_size}
    merged = {k: v for k, v in pins.items() if v != "auto"}
    merged.update(inferred)
    if merged.get("gradient_checkpointing") is None:
        merged["gradient_checkpointing"] = True  # unknown: the less memory-hungry assumption is safer
    merged.setdefault("method", "full")
    required = ("zero_stage", "offload_optimizer", "offload_param", "micro_batch_size")
    if any(k not in merged for k in required):
        return None
    return Strategy(**merged)


def _measured_gpu_peak(facts: Iterable[LogRecord]) -> Optional[tuple[float, str]]:
    best = None
    for f in facts:
        value = f.max_reserved_gib or f.gpu_peak_gib
        if f.kind in ("deepspeed_memory", "torch_memory", "gpu_memory_trace") and value:
            if best is None or value > best[0]:
                best = (value, f.source)
    return best


def evidence_for(plan: Plan, model: ModelSpec, logs: Iterable[str | Path]) -> Evidence:
    """Parse logs and turn their evidence into what the sweep and rules use.

    Raises:
        LogError: a log cannot be read (every unreadable file named).
    """
    logs = [Path(p) for p in logs]
    if not logs:
        return Evidence()
    from .logs import fragmentation_hint, parse_logs  # only when there are logs to read

    facts = parse_logs(logs)
    inferred: dict[str, Any] = {}
    for p in logs:
        inferred.update(infer_run(p))
    run = run_strategy(plan, inferred)
    est = estimate_memory(plan, model, run) if run else None
    oom_facts = [f for f in facts if f.kind in ("gpu_oom", "host_oom")]
    notes = [f"{len(facts)} memory fact(s) read from {len(logs)} log(s)"]
    if run is not None:
        notes.append(f"the logged run's strategy: {run.key} (from the log where it says, else the plan's pins)")
    ooms = [OomEvidence(f.kind, f.source, run, est.gpu_peak_gib, est.host_peak_gib)
            for f in oom_facts if run is not None and est is not None]
    if oom_facts and run is None:
        notes.append(f"{oom_facts[0].kind} at {oom_facts[0].source} not used: the run's ZeRO stage, offloads and "
                     "micro-batch are unknown (pin them in the plan, or give a log with DeepSpeed's config print)")
    peak = _measured_gpu_peak(facts)
    ratio, ratio_source = 0.0, ""
    if peak and run is not None and est is not None and not oom_facts:  # est exists exactly when run does
        ratio = peak[0] / est.gpu_peak_gib
    if ratio and peak and run is not None and est is not None:
        ratio_source = peak[1]
        notes.append(f"measured GPU peak {peak[0]:.1f} GiB ({peak[1]}) vs {est.gpu_peak_gib:.1f} GiB estimated: "
                     f"ratio {ratio:.2f} applied to {run.method} ZeRO-{run.zero_stage} candidates")
    return Evidence(ooms=tuple(ooms), family=_family(run) if (run and ratio) else None, ratio=ratio,
                    fragmentation=any(fragmentation_hint(f) for f in facts), present=bool(facts),
                    notes=tuple(notes), ratio_source=ratio_source)
