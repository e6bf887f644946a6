"""Cold-path timing: `advise plan.yaml` in a fresh process against DeepSpeed's own estimator call on
the same case (also a fresh process, as a user runs it), or against memfit at another revision.

    .venv/bin/python bench/cold_path.py [--runs 7] [--plan examples/qwen32b-one-h100.yaml]
    .venv/bin/python bench/cold_path.py --against 93a9cb9 [--runs 7]

Prints medians and the ratio. memfit's run ranks every candidate with rules and writes the full
table; DeepSpeed's call computes three model-states formulas after importing deepspeed (and torch).

--against REV times this checkout and REV alternately, two runs of each per round, so that the
machine's drift (these machines are noisy) falls on both alike. Both import memfit the same way:
from a temporary tree of symlinks put first on PYTHONPATH (memfit is a namespace package whose parts
are the repository's engine/, cli/, rules/ and schemas/); REV is checked out in a temporary git
worktree, removed afterwards.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
PARTS = ("engine", "cli", "rules", "schemas")

DEEPSPEED_CALL = (
    "from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs as f; "
    # Qwen2.5-32B base model count and largest module (sources.md §1), one GPU, full offload.
    "print(f(31985308672, 778567680, 1, 1, True, True, True))"
)


def wall(cmd: list[str], pythonpath: str | None = None) -> float:
    env = {"HF_HUB_OFFLINE": "1", "PATH": str(VENV_BIN)}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed: {proc.stderr[-500:]}")
    return time.perf_counter() - t


def _link_tree(tree: Path, source: Path) -> str:
    """A PYTHONPATH entry whose `memfit` package is `source`'s parts."""
    (tree / "memfit").mkdir(parents=True)
    for part in PARTS:
        (tree / "memfit" / part).symlink_to(source / part)
    return str(tree)


def _table(rows: dict[str, list[float]]) -> None:
    print(f"{'command':45} {'median s':>9} {'min s':>7} {'max s':>7}")
    for name, times in rows.items():
        print(f"{name:45} {statistics.median(times):9.3f} {min(times):7.3f} {max(times):7.3f}")


def against(rev: str, advise: list[str], runs: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        worktree = Path(tmp) / "rev"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(worktree), rev], check=True)
        try:
            paths = {"this checkout": _link_tree(Path(tmp) / "head", ROOT),
                     f"at {rev}": _link_tree(Path(tmp) / "other", worktree)}
            for p in paths.values():  # compile both trees' bytecode once
                wall(advise, p)
            rows: dict[str, list[float]] = {name: [] for name in paths}
            for _ in range(runs):
                for name, p in paths.items():
                    rows[name] += [wall(advise, p), wall(advise, p)]
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], check=False)
    _table({f"memfit advise plan.yaml, {name}": t for name, t in rows.items()})
    head, other = (statistics.median(t) for t in rows.values())
    print(f"ratio this checkout / {rev}: {head / other:.2f} (target: memfit under 0.5 s)")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--plan", default=str(ROOT / "examples" / "qwen32b-one-h100.yaml"))
    ap.add_argument("--against", metavar="REV", help="time this checkout against memfit at git revision REV")
    args = ap.parse_args(argv)
    advise = [str(VENV_BIN / "advise"), os.path.abspath(args.plan)]
    if args.against:
        return against(args.against, advise, args.runs)
    ds = [sys.executable, "-c", DEEPSPEED_CALL]
    wall(advise)  # warm the page cache and the checked-rules cache once
    rows = {"memfit advise plan.yaml": [wall(advise) for _ in range(args.runs)],
            "deepspeed estimate_zero3 (import + call)": [wall(ds) for _ in range(args.runs)]}
    _table(rows)
    m, d = (statistics.median(t) for t in rows.values())
    print(f"ratio memfit / deepspeed: {m / d:.2f} (target: memfit under 0.5 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
