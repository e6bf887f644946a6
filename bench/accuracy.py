"""Accuracy benchmark: memfit's estimate against published measured peaks, with DeepSpeed's
estimator, accelerate's estimate-memory and LLaMA-Factory's hardware table side by side.

    .venv/bin/python bench/accuracy.py [--markdown] [--cases FILE ...]

Cases: bench/cases/*.yaml (seed.yaml is the project's seed calibration set) and bench/measured/*.json (rows of
bench/gpu_calibration.py runs on a real GPU: NVML used memory, CUDA context included, is the measured
peak; an OOM row is a measured "does not fit"). Prints one row per case and per tool, the median absolute error on GPU peaks, and the
fit/OOM verdicts each tool gets right or wrong (a "fits" where a run measured OOM is the worst error).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import yaml  # noqa: E402

from memfit.engine import estimate, plan_from_dict  # noqa: E402
from memfit.engine.deepspeed.parity import deepspeed_estimate  # noqa: E402
from memfit.engine.model.spec import resolve_model  # noqa: E402
from memfit.engine.plan.strategy import Strategy  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CASES = [*sorted((ROOT / "bench" / "cases").glob("*.yaml")),
                 *sorted((ROOT / "bench" / "measured").glob("*.json"))]


def lf_table_gib(facts, plan) -> float:
    """LLaMA-Factory README "Hardware Requirement" table, xB column: full AMP 18x, pure bf16 8x,
    LoRA 2x, QLoRA 4-bit x/2 GB for an x-billion-parameter model (units read as GiB)."""
    x = facts.total_params / 1e9
    method, precision = plan.training.method, plan.training.precision
    if method == "full":
        return (8 if precision == "pure_bf16" else 18) * x
    return 2 * x if method == "lora" else x / 2


def accelerate_gib(facts, plan) -> float | None:
    """accelerate estimate-memory "Training using Adam": max of its model/gradients/optimizer/step
    terms for the fp32 model size (accelerate/commands/estimate.py); full fine-tuning only."""
    if plan.training.method != "full":
        return None
    from accelerate.commands.estimate import estimate_training_usage

    dtype = "float32" if plan.training.precision == "fp32" else "bfloat16"
    return max(estimate_training_usage(facts.total_params * 4, dtype).values()) / 2**30


def load_cases(paths) -> list[dict]:
    cases = []
    for p in paths:
        p = Path(p)
        if p.suffix == ".json" and p.exists():
            cases += measured_cases(p)
        elif p.exists():
            for c in yaml.safe_load(p.read_text())["cases"]:
                cases.append({**c, "file": p.name})
    return cases


def measured_cases(path: Path) -> list[dict]:
    """Rows of a bench/gpu_calibration.py results file as accuracy cases."""
    import json

    data = json.loads(path.read_text())
    out = []
    for row in data.get("rows", []):
        if not row.get("plan"):
            continue
        if row.get("status") == "oom":
            expect = {"gpu_fits": False}
        elif row.get("status") == "ok" and row.get("nvml_used_bytes"):
            expect = {"gpu_peak_gib": row["nvml_used_bytes"] / 2**30}
        else:
            continue
        out.append({"name": f"{data.get('device_name', 'gpu')}:{row['case']}", "plan": row["plan"],
                    "expect": expect, "source": str(path), "file": path.name})
    return out


def family(plan, name: str = "") -> str:
    """Calibration family of a case: method x sharding (ZeRO stage 0, 1-2, 3, or FSDP) x offload."""
    t = plan.training
    stage = {0: "z0", 1: "z12", 2: "z12", 3: "z3"}[t.zero_stage] if t.zero_stage != "auto" else "auto"
    if t.sharding in ("fsdp", "fsdp1", "fsdp2"):
        stage = "fsdp"
    off = "offload" if "cpu" in (t.offload_optimizer, t.offload_param) or "nvme" in (t.offload_optimizer, t.offload_param) else ""
    return "/".join(x for x in (t.method, stage, off) if x)


def family_table(rows: list[dict]) -> list[str]:
    """Median |error| and median signed error of memfit's GPU peak per family."""
    groups: dict[str, list[float]] = {}
    for r in rows:
        if r["measured"] and r["tools"]["memfit"][0] is not None:
            groups.setdefault(r["family"], []).append(r["tools"]["memfit"][0] / r["measured"] - 1)
    lines = ["memfit per family: family, cases, median |error|, median signed error"]
    for fam, errs in sorted(groups.items()):
        lines.append(f"    {fam:24s} {len(errs):3d}  {statistics.median(map(abs, errs)):6.1%}  {statistics.median(errs):+6.1%}")
    return lines


def evaluate(case: dict) -> dict:
    plan = plan_from_dict(case["plan"], case["name"])
    facts = resolve_model(plan.model)
    ours = estimate(plan)
    t = plan.training
    s = Strategy(method=t.method, zero_stage=t.zero_stage, offload_optimizer=t.offload_optimizer,
                 offload_param=t.offload_param, gradient_checkpointing=t.gradient_checkpointing,
                 micro_batch_size=t.micro_batch_size)
    fsdp = t.sharding in ("fsdp", "fsdp1", "fsdp2")
    ds = None if fsdp else deepspeed_estimate(facts, s, plan)  # DeepSpeed's estimator is for ZeRO runs
    cap = plan.hardware.gpu_memory_gib
    exp = case["expect"]
    ran = exp.get("gpu_fits", True if "gpu_peak_gib" in exp else None)
    return {"name": case["name"], "family": family(plan, case["name"]), "world_size": plan.hardware.world_size,
            "measured": exp.get("gpu_peak_gib"), "expect_fits": ran,
            "expect_host_fits": exp.get("host_fits", True if "host_peak_gib" in exp else None),
            "measured_host": exp.get("host_peak_gib"), "capacity": cap,
            "host_capacity": plan.hardware.host_memory_gib,
            "band_high": ours.gpu_band.high if ours.gpu_band else None,
            # torch's own counters, for cases that quote them (bench/heldout.py measure_kind)
            "memfit_allocated": ours.breakdown["allocator"]["allocated_gib"],
            "memfit_reserved": ours.breakdown["allocator"]["reserved_gib"],
            # the named terms before the calibrated centre: what bench/band.py calibrates the centre on
            "memfit_modelled": ours.breakdown["calibration"]["modelled_gib"],
            "tools": {"memfit": (ours.gpu_peak_gib, ours.host_peak_gib),
                      "deepspeed": (ds.gpu_gib, ds.host_gib) if ds else (None, None),
                      "accelerate": (accelerate_gib(facts, plan), None),
                      "llamafactory": (lf_table_gib(facts, plan), None)}}


def summarize(rows: list[dict], tools=("memfit", "deepspeed", "accelerate", "llamafactory")) -> dict:
    out = {}
    for tool in tools:
        errors, right, wrong, unsafe, n_verdicts, misses = [], 0, 0, 0, 0, []
        for r in rows:
            gpu, host = r["tools"][tool]
            if gpu is not None and r["measured"]:
                errors.append(gpu / r["measured"] - 1)
            for pred, cap, expect in ((gpu, r["capacity"], r["expect_fits"]), (host, r["host_capacity"], r["expect_host_fits"])):
                if pred is None or expect is None:
                    continue
                n_verdicts += 1
                fits = pred <= cap
                right += fits == expect
                wrong += fits != expect
                unsafe += fits and not expect
                if fits != expect:
                    misses.append(f"{r['name']} ({'fits' if fits else 'OOM'} predicted, {pred:.1f} of {cap:.1f} GiB)")
        out[tool] = {"median_abs_error": statistics.median(abs(e) for e in errors) if errors else None,
                     "median_signed_error": statistics.median(errors) if errors else None,
                     "cases_with_peak": len(errors), "verdicts": n_verdicts, "right": right, "wrong": wrong,
                     "fits_but_measured_oom": unsafe, "misses": misses}
    return out


def _fmt(v, cap=None):
    if v is None:
        return "n/a"
    return f"{v:.1f}" + ("" if cap is None else ("" if v <= cap else "!"))


def render(rows, summary, markdown: bool) -> str:
    sep = " | " if markdown else "  "
    head = ["case", "measured GPU", "memfit", "err", "DeepSpeed", "accelerate", "LLaMA-Factory", "memfit host", "measured host"]
    lines = [sep.join(head)]
    if markdown:
        lines = ["| " + lines[0] + " |", "|" + "---|" * len(head)]
    for r in rows:
        m = r["tools"]["memfit"]
        meas = _fmt(r["measured"]) if r["measured"] else ("OOM" if r["expect_fits"] is False else "fits" if r["expect_fits"] else "-")
        err = f"{m[0] / r['measured'] - 1:+.0%}" if r["measured"] else "-"
        host_meas = _fmt(r["measured_host"]) if r["measured_host"] else ("OOM" if r["expect_host_fits"] is False else "-")
        cells = [r["name"], meas, _fmt(m[0], r["capacity"]), err, _fmt(r["tools"]["deepspeed"][0], r["capacity"]),
                 _fmt(r["tools"]["accelerate"][0], r["capacity"]), _fmt(r["tools"]["llamafactory"][0], r["capacity"]),
                 _fmt(m[1], r["host_capacity"]), host_meas]
        lines.append(("| " + " | ".join(cells) + " |") if markdown else sep.join(cells))
    lines.append("")
    lines.append("GiB; '!' marks a prediction over capacity (predicts OOM).")
    for tool, s in summary.items():
        mae = "n/a" if s["median_abs_error"] is None else f"{s['median_abs_error']:.1%}"
        signed = "n/a" if s["median_signed_error"] is None else f"{s['median_signed_error']:+.1%}"
        lines.append(f"{'- ' if markdown else ''}{tool}: median |error| {mae} (signed {signed}) over {s['cases_with_peak']} measured peaks; "
                     f"verdicts right {s['right']}/{s['verdicts']}, 'fits' where a run measured OOM: {s['fits_but_measured_oom']}")
        if tool == "memfit":
            lines += [f"{'  - ' if markdown else '    '}wrong verdict: {m}" for m in s["misses"]]
    lines += family_lines(rows, markdown)
    return "\n".join(lines)


def family_lines(rows, markdown: bool) -> list[str]:
    """memfit's summary per sharding family (PyTorch FSDP runs apart from DeepSpeed / single-GPU runs)."""
    out = ["", "memfit by family:"]
    for family in sorted({r["family"] for r in rows}):
        s = summarize([r for r in rows if r["family"] == family], tools=("memfit",))["memfit"]
        mae = "n/a" if s["median_abs_error"] is None else f"{s['median_abs_error']:.1%}"
        out.append(f"{'- ' if markdown else '  '}{family}: median |error| {mae} over {s['cases_with_peak']} measured peaks; "
                   f"verdicts right {s['right']}/{s['verdicts']}, 'fits' where a run measured OOM: {s['fits_but_measured_oom']}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="*", default=DEFAULT_CASES)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    rows = [evaluate(c) for c in load_cases(args.cases)]
    print(render(rows, summarize(rows), args.markdown))
    print("\n".join(family_table(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
