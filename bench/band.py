"""The honest error band: calibration residuals of memfit's GPU peak per family, shipped as
engine/memory/band.json.

    .venv/bin/python bench/band.py            # rewrite engine/memory/band.json
    .venv/bin/python bench/band.py --check    # exit 1 when the shipped file is stale
    .venv/bin/python bench/band.py --verdicts # in-sample GPU verdicts: point estimate vs band top

Input: the in-sample calibration cases only (bench/cases/seed.yaml, bench/cases/published_extra.yaml);
the held-out set is never read here, so it stays a fair test of the band. For every case with a
measured GPU peak the residual ratio is measured / memfit estimate (bench/accuracy.py evaluate()),
grouped by bench/accuracy.py family(): method x sharding (z0, z12, z3, fsdp) x offload.

Pooling: a quantile of fewer than MIN_CASES ratios says little, so a family with fewer than 3 cases
uses the ratios of its whole method (every family of that method pooled), and a method with fewer
than 3 uses every case ("all"). The entry records which pool it used. Families and methods with no
case at all are looked up the same way at run time (engine/memory/band.py).

Quantiles: the 10th and 90th percentile of the ratios, statistics.quantiles(n=10, method="inclusive")
(linear interpolation between order statistics, so they stay within the measured range).
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import evaluate, load_cases  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CASE_FILES = ("bench/cases/seed.yaml", "bench/cases/published_extra.yaml")
BAND_FILE = ROOT / "engine" / "memory" / "band.json"
MIN_CASES = 3


def residuals(case_files=CASE_FILES) -> dict[str, list[float]]:
    """measured / estimated GPU peak of every in-sample case with a measured peak, per family.

    Args:
        case_files: case YAML files relative to the repository root.

    Returns:
        family -> list of ratios.
    """
    out: dict[str, list[float]] = {}
    for case in load_cases([ROOT / f for f in case_files]):
        row = evaluate(case)
        estimate = row["tools"]["memfit"][0]
        if row["measured"] and estimate:
            out.setdefault(row["family"], []).append(row["measured"] / estimate)
    return out


def _entry(ratios: list[float], pool: str) -> dict:
    if len(ratios) == 1:
        low = high = ratios[0]
    else:
        cuts = statistics.quantiles(ratios, n=10, method="inclusive")
        low, high = cuts[0], cuts[-1]
    return {"low": round(low, 4), "high": round(high, 4), "n": len(ratios), "pool": pool}


def bands(by_family: dict[str, list[float]]) -> dict:
    """The band table: per family (pooled when thin), per method, and over all cases.

    Args:
        by_family: family -> ratios, as residuals() returns.

    Returns:
        {"families": {family: entry}, "methods": {method: entry}, "all": entry}; an entry is
        {"low", "high", "n", "pool"} with pool the family, the method or "all" whose ratios it used.
    """
    every = [r for rs in by_family.values() for r in rs]
    overall = _entry(every, "all")
    by_method: dict[str, list[float]] = {}
    for fam, rs in by_family.items():
        by_method.setdefault(fam.split("/")[0], []).extend(rs)
    methods = {m: _entry(rs, m) if len(rs) >= MIN_CASES else overall for m, rs in sorted(by_method.items())}
    families = {fam: _entry(rs, fam) if len(rs) >= MIN_CASES else methods[fam.split("/")[0]]
                for fam, rs in sorted(by_family.items())}
    return {"families": families, "methods": methods, "all": overall}


def band_document(case_files=CASE_FILES) -> dict:
    """The whole band.json content: provenance plus bands(residuals())."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"computed": datetime.date.today().isoformat(), "commit": commit or "unknown",
            "case_files": list(case_files), "quantiles": [0.1, 0.9], "min_cases": MIN_CASES,
            "ratio": "measured GPU peak / memfit estimate", **bands(residuals(case_files))}


def band_verdicts(case_files=CASE_FILES) -> dict:
    """GPU fit verdicts of the in-sample cases by the point estimate and by the band's upper end
    (what gpu-upper-over-capacity adds to a plan that keeps no headroom).

    Returns:
        {"cases", "right_point", "right_upper", "unsafe_point", "unsafe_upper", "changed": [names]}.
    """
    from memfit.engine import plan_from_dict
    from memfit.engine.memory.band import band_for
    from memfit.engine.plan.strategy import Strategy

    out = {"cases": 0, "right_point": 0, "right_upper": 0, "unsafe_point": 0, "unsafe_upper": 0, "changed": []}
    for case in load_cases([ROOT / f for f in case_files]):
        row = evaluate(case)
        if row["expect_fits"] is None:
            continue
        t = plan_from_dict(case["plan"], case["name"]).training
        s = Strategy(method=t.method, zero_stage=t.zero_stage, offload_optimizer=t.offload_optimizer,
                     offload_param=t.offload_param, sharding="fsdp" if row["family"].split("/")[1] == "fsdp" else "deepspeed")
        gpu, cap, ran = row["tools"]["memfit"][0], row["capacity"], row["expect_fits"]
        point, upper = gpu <= cap, gpu * band_for(s).high <= cap
        out["cases"] += 1
        out["right_point"] += point == ran
        out["right_upper"] += upper == ran
        out["unsafe_point"] += point and not ran
        out["unsafe_upper"] += upper and not ran
        if point != upper:
            out["changed"].append(f"{case['name']} ({gpu:.1f} GiB, band top {gpu * band_for(s).high:.1f} of {cap:.1f}, "
                                  f"measured {'fits' if ran else 'OOM'})")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the shipped file, write nothing")
    ap.add_argument("--verdicts", action="store_true", help="GPU verdicts by point estimate vs band top, write nothing")
    args = ap.parse_args(argv)
    if args.verdicts:
        print(json.dumps(band_verdicts(), indent=2))
        return 0
    doc = band_document()
    if args.check:
        shipped = json.loads(BAND_FILE.read_text())
        stale = any(shipped.get(k) != doc[k] for k in ("families", "methods", "all"))
        print("engine/memory/band.json is " + ("STALE: run bench/band.py" if stale else "up to date"))
        return 1 if stale else 0
    BAND_FILE.write_text(json.dumps(doc, indent=2) + "\n")
    print("family                    n  pool                   low    high")
    for fam, e in {**doc["families"], **{f"[{m}]": e for m, e in doc["methods"].items()}, "[all]": doc["all"]}.items():
        print(f"{fam:24s} {e['n']:3d}  {e['pool']:20s} {e['low']:6.3f} {e['high']:6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
