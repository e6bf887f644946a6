"""Cold-path timing: `advise plan.yaml` in a fresh process against DeepSpeed's own estimator call on
the same case (also a fresh process, as a user runs it).

    .venv/bin/python bench/cold_path.py [--runs 7] [--plan examples/qwen32b-one-h100.yaml]

Prints medians and the ratio. memfit's run ranks every candidate with rules and writes the full
table; DeepSpeed's call computes three model-states formulas after importing deepspeed (and torch).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

DEEPSPEED_CALL = (
    "from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs as f; "
    # Qwen2.5-32B base model count and largest module (sources.md §1), one GPU, full offload.
    "print(f(31985308672, 778567680, 1, 1, True, True, True))"
)


def wall(cmd: list[str]) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": str(VENV_BIN)})
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed: {proc.stderr[-500:]}")
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--plan", default=str(ROOT / "examples" / "qwen32b-one-h100.yaml"))
    args = ap.parse_args(argv)
    advise = [str(VENV_BIN / "advise"), args.plan]
    ds = [sys.executable, "-c", DEEPSPEED_CALL]
    wall(advise)  # warm the page cache and the checked-rules cache once
    rows = {"memfit advise plan.yaml": [wall(advise) for _ in range(args.runs)],
            "deepspeed estimate_zero3 (import + call)": [wall(ds) for _ in range(args.runs)]}
    print(f"{'command':45} {'median s':>9} {'min s':>7} {'max s':>7}")
    for name, times in rows.items():
        print(f"{name:45} {statistics.median(times):9.3f} {min(times):7.3f} {max(times):7.3f}")
    m, d = (statistics.median(t) for t in rows.values())
    print(f"ratio memfit / deepspeed: {m / d:.2f} (target: memfit under 0.5 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
