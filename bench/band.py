"""The honest error band: out-of-sample residuals of memfit's GPU peak, as split-conformal quantiles
per family, shipped as engine/memory/band.json.

    .venv/bin/python bench/band.py            # rewrite engine/memory/band.json
    .venv/bin/python bench/band.py --check    # exit 1 when the shipped file is stale
    .venv/bin/python bench/band.py --verdicts # GPU verdicts of the calibration cases: point vs band top
    .venv/bin/python bench/band.py --cross-validate  # leave one set out: errors with and without the centre

Calibration set: the published runs of held-out sets 1 to 37 (bench/heldout/ to bench/heldout37/) whose
technique memfit models (bench/heldout.py's headline) and that printed a GPU peak. Each set was
collected after a memory model was frozen and scored on it before joining this set (set 3 tested the
band of tag freeze-s4, set 4 the model of freeze-s5, set 5 that of freeze-s6, set 6 that of freeze-s7, set 7 that of freeze-s8,
set 8 that of freeze-s9, set 9 that of freeze-s10, sets 10 and 11 that of freeze-s11, sets 12 to 14 those of
freeze-s12 and freeze-s12b, sets 15 and 16 those of freeze-s12b and freeze-s13, sets 17 and 18 those of
freeze-s14 and freeze-s15, sets 19 to 21 those of freeze-s16 and freeze-s17, sets 22 to 24 those of freeze-s18 to
freeze-s20, sets 25 and 26 that of freeze-s21, sets 27 to 29 those of freeze-s22 and freeze-s23, sets 30
and 31 that of freeze-s24, sets 32 to 37 that of freeze-s26), so their residuals are the spread on runs memfit had not been fitted on. The
in-sample cases (bench/cases/) are not used: the point model was built on them and their residuals
understate its error (docs/accuracy.md shows both). Out-of-memory outcomes are not residuals (only a
lower bound of one): they test the band (--verdicts, and the newest held-out set in bench/heldout.py),
they do not set it.

Residual: measured / estimated GPU peak per device. Quantiles are weighted split-conformal: at level q
the upper end is the smallest ratio whose weight at or below it, over the total weight plus the new
run's 1, reaches q, and the lower end mirrors it (Tibshirani, Barber, Candes and Ramdas, "Conformal
prediction under covariate shift", NeurIPS 2019). Runs of one source move together (a stack, a way of
measuring, a machine), so a source with m > SOURCE_CAP runs in a pool gives each SOURCE_CAP / m, as
groups are weighted in Dunn, Wasserman and Ramdas, "Distribution-free prediction sets for two-layer
hierarchical models" (JASA 2023); with every weight 1 the ends are the ceil((n+1) q)-th and
floor((n+1)(1-q))-th smallest ratios (Lei et al., JASA 2018).

Pooling, finest first: the family (method x sharding z0 / z12 / z3 / fsdp x offload, as
bench/accuracy.py family() spells it); its sharding group (single, zero, fsdp, each with or without
offload: "zero/offload"); its kind (ZeRO-3 and FSDP offload runs pooled, "offload", or every run whose
weights stay on the GPU, "resident", which includes ZeRO-1/2 optimizer offload); then every case. A pool too thin for the level uses the next one; the
entry names the pool it used. A pool is thin when either end of its band would be its own most extreme
ratio (unweighted, at 0.8 that needs n >= 9, at 0.9 n >= 19): one odd run must not set a band. Its ratios still
count in the pools above it. A higher level's upper end is never below a lower level's for the same
family (the lower level's is taken where pooling would make it so). Offload stays apart at every level because its GPU side is the least
known part of the model: pooling it with resident runs would widen their band and narrow its own.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from heldout import as_plan_case, score  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CASE_FILES = ("bench/heldout/cases.yaml", "bench/heldout2/cases.yaml", "bench/heldout3/cases.yaml",
              "bench/heldout4/cases.yaml", "bench/heldout5/cases.yaml", "bench/heldout6/cases.yaml",
              "bench/heldout7/cases.yaml", "bench/heldout8/cases.yaml",
              "bench/heldout9/cases.yaml", "bench/heldout10/cases.yaml", "bench/heldout11/cases.yaml",
              "bench/heldout12/cases.yaml", "bench/heldout13/cases.yaml", "bench/heldout14/cases.yaml",
              "bench/heldout15/cases.yaml", "bench/heldout16/cases.yaml",
              "bench/heldout17/cases.yaml", "bench/heldout18/cases.yaml",
              "bench/heldout19/cases.yaml", "bench/heldout20/cases.yaml", "bench/heldout21/cases.yaml",
              "bench/heldout22/cases.yaml", "bench/heldout23/cases.yaml", "bench/heldout24/cases.yaml",
              "bench/heldout25/cases.yaml", "bench/heldout26/cases.yaml", "bench/heldout27/cases.yaml",
              "bench/heldout28/cases.yaml", "bench/heldout29/cases.yaml", "bench/heldout30/cases.yaml",
              "bench/heldout31/cases.yaml", "bench/heldout32/cases.yaml", "bench/heldout33/cases.yaml",
              "bench/heldout34/cases.yaml", "bench/heldout35/cases.yaml", "bench/heldout36/cases.yaml",
              "bench/heldout37/cases.yaml")
# The most runs one source may weigh in a pool: held-out set 5 was collected with at most 5 runs per
# source, so the calibration weighs sources as the fresh sets sample them (set 3 had 30 from one).
SOURCE_CAP = 5.0
# The fewest runs a sharding group needs for a centre of its own; a thinner group takes the pooled one.
# 20, as the band needs at its default level: with 10 the bimodal ZeRO-3 offload group (18 runs, set 11)
# moved from 1.06 to 0.85 when one 1.3 GB term was added (docs/explanation/memory-model.md).
MIN_CENTRE = 20
BAND_FILE = ROOT / "engine" / "memory" / "band.json"
from memfit.engine.plan.schema import BAND_LEVELS as LEVELS, Policy  # noqa: E402

DEFAULT_LEVEL = Policy().band_quantile


def group_of(family: str) -> str:
    """The sharding group of a family: "single", "zero" or "fsdp", with "/offload" for an offload family
    (engine/memory/band.py strategy_group spells a strategy's the same way)."""
    parts = family.split("/")
    group = {"z0": "single", "fsdp": "fsdp"}.get(parts[1], "zero")
    return group + ("/offload" if kind_of(family) == "offload" else "")


def kind_of(family: str) -> str:
    """"offload" for a ZeRO-3 or FSDP family with offload (parameters leave the GPU and are fetched
    back), else "resident". ZeRO-1/2 offload only the optimizer: weights and gradients stay resident (so does z0 offload)."""
    parts = family.split("/")
    return "offload" if parts[2:] == ["offload"] and parts[1] in ("z3", "fsdp") else "resident"


def band_family(row: dict) -> str:
    """A scored case's family for the band: ZeRO-1/2 on one GPU is a single-GPU run, as
    engine/memory/band.py band_strategy treats a strategy."""
    if row["world_size"] == 1 and "/z12" in row["family"]:
        return row["family"].replace("/z12", "/z0")
    return row["family"]


def source_of(case: dict) -> str:
    """The source cluster of a case: the first word of its `source` (a repository, a site or a gist).

    Cases from one source share a stack, a measuring habit and often a machine: their errors move
    together, so they count as one cluster when the band is weighted (SOURCE_CAP)."""
    return str(case.get("source") or case["name"]).split()[0].rstrip(",;:")


def framework_of(case: dict) -> str:
    """The training stack a case's plan runs (training.framework as bench/heldout.py writes the plan)."""
    training = as_plan_case(case)["plan"].get("training") or {}
    return str(training.get("framework") or "hf-trainer")


def residuals(case_files=CASE_FILES, by_stack: bool = False) -> dict[str, list[tuple[float, str]]]:
    """measured / estimated GPU peak of every modelled calibration case with a measured peak, per family.

    Args:
        case_files: held-out case YAML files relative to the repository root.
        by_stack: key each family by stack too ("qlora/z0@unsloth"): the stack pools of bands().

    Returns:
        family (or family@stack) -> list of (ratio, source cluster).
    """
    out: dict[str, list[tuple[float, str]]] = {}
    for f in case_files:
        for family, stack, ratio, source in _scored(f):
            out.setdefault(family + (f"@{stack}" if by_stack else ""), []).append((ratio, source))
    return out


@functools.lru_cache(maxsize=None)
def _scored(case_file: str) -> tuple[tuple[str, str, float, str], ...]:
    """(family, stack, measured / modelled, source) of each modelled case of one file with a peak,
    scored once per process (the family and the stack pools read the same runs)."""
    cases = yaml.safe_load((ROOT / case_file).read_text())["cases"]
    by_name = {c["name"]: c for c in cases}
    rows, _failed = score(cases)
    out = []
    for row in rows:
        estimate = row["memfit_modelled"]  # the named terms: the centre is calibrated on them
        if row["measured"] and estimate and not row["not_modelled"]:
            case = by_name[row["name"]]
            out.append((band_family(row), framework_of(case), row["measured"] / estimate, source_of(case)))
    return tuple(out)


def source_weights(sources: list[str], cap: float = SOURCE_CAP) -> list[float]:
    """Each ratio's weight in its pool: 1, or cap / m for a source with m > cap ratios in the pool, so no
    source weighs more than `cap` runs."""
    counts = {s: sources.count(s) for s in set(sources)}
    return [min(1.0, cap / counts[s]) for s in sources]


def _cut(ratios: list[float], level: float, weights: list[float] | None = None) -> tuple[int, int] | None:
    """0-based indices (low, high) into sorted(ratios) of the weighted split-conformal ends, or None.

    The upper end is the `level` quantile of the weighted ratios with the new run's weight (1) put at
    +infinity (Tibshirani et al., NeurIPS 2019, weighted conformal); the lower end mirrors it. With
    every weight 1 these are the ceil((n+1) q)-th and floor((n+1)(1-q))-th smallest ratios."""
    order = sorted(range(len(ratios)), key=lambda i: ratios[i])
    w = [1.0 if weights is None else weights[i] for i in order]
    total = sum(w) + 1.0
    run, high = 0.0, None
    for k, wk in enumerate(w):
        run += wk
        if round(run / total, 9) >= level:
            high = k
            break
    run, low = 0.0, None
    for k in range(len(w) - 1, -1, -1):
        run += w[k]
        if round(run / total, 9) >= level:
            low = k
            break
    return None if high is None or low is None else (low, high)


def conformal(ratios: list[float], level: float, weights: list[float] | None = None) -> tuple[float, float] | None:
    """The split-conformal (low, high) ratios at `level`, or None when too few ratios define them.

    Args:
        ratios: residual ratios of one pool.
        level: coverage of the upper end, e.g. 0.8.
        weights: each ratio's weight (source_weights); None weighs every ratio 1.

    Returns:
        (low, high) ratios, or None when the weight below or above the new run's is short of `level`.
    """
    cut = _cut(ratios, level, weights)
    if cut is None:
        return None
    xs = sorted(ratios)
    return xs[cut[0]], xs[cut[1]]


def _entry(pool_residuals: list[tuple[float, str]], level: float, pool: str, fallback: dict | None = None) -> dict | None:
    """The pool's own conformal entry, or the fallback when the pool is thin (an end would be its extreme)."""
    ratios = [r for r, _ in pool_residuals]
    weights = source_weights([s for _, s in pool_residuals])
    cut = _cut(ratios, level, weights)
    if cut is None or cut[1] >= len(ratios) - 1 or cut[0] <= 0:
        return fallback
    xs = sorted(ratios)
    return {"low": round(xs[cut[0]], 4), "high": round(xs[cut[1]], 4), "n": len(ratios),
            "n_weighted": round(sum(weights), 2), "pool": pool}


def _monotone(levels: dict[str, dict]) -> dict[str, dict]:
    """Raise each level's upper ends to at least the next lower level's, entry by entry."""
    order = sorted(levels, key=float)
    for lower, upper in zip(order, order[1:]):
        for section in ("families", "groups", "kinds", "stacks"):
            for name, e in levels[upper][section].items():
                below = levels[lower][section].get(name)
                if below and below["high"] > e["high"]:
                    levels[upper][section][name] = {**e, "high": below["high"],
                                                    "pool": f"{e['pool']}, top raised to level {lower}'s"}
    return levels


def bands(by_family: dict[str, list[tuple[float, str]]], level: float,
          by_stack: dict[str, list[tuple[float, str]]] | None = None) -> dict:
    """The band table at one level: per family, group, kind and over all cases, thin pools falling back,
    and per family and stack where that pool is thick enough on its own.

    Args:
        by_family: family -> (ratio, source) pairs, as residuals() returns.
        level: conformal coverage of the upper end.
        by_stack: family@stack -> pairs (residuals(by_stack=True)); a thin one is left out, so the
            engine falls back to the family over every stack.

    Returns:
        {"families": {family: entry}, "groups": {group: entry}, "kinds": {kind: entry}, "all": entry,
        "stacks": {family@stack: entry}}; an entry is {"low", "high", "n", "pool"}, pool the family,
        group, kind or "all" whose ratios it used.

    Raises:
        ValueError: when even all the ratios together are too few for the level.
    """
    every = [r for rs in by_family.values() for r in rs]
    overall = _entry(every, level, "all")
    if overall is None:
        raise ValueError(f"too few calibration ratios for a {level} band")
    by_kind: dict[str, list[tuple[float, str]]] = {}
    by_group: dict[str, list[tuple[float, str]]] = {}
    for fam, rs in by_family.items():
        by_kind.setdefault(kind_of(fam), []).extend(rs)
        by_group.setdefault(group_of(fam), []).extend(rs)
    kinds = {k: _entry(rs, level, k, overall) for k, rs in sorted(by_kind.items())}
    groups = {g: _entry(rs, level, g, kinds["offload" if g.endswith("/offload") else "resident"])
              for g, rs in sorted(by_group.items())}
    families = {fam: _entry(rs, level, fam, groups[group_of(fam)]) for fam, rs in sorted(by_family.items())}
    stacks = {key: e for key, rs in sorted((by_stack or {}).items()) if (e := _entry(rs, level, key))}
    return {"families": families, "groups": groups, "kinds": kinds, "all": overall, "stacks": stacks}


def weighted_median(ratios: list[float], weights: list[float]) -> float:
    """The smallest ratio whose weight at or below it reaches half the total weight."""
    order = sorted(range(len(ratios)), key=lambda i: ratios[i])
    total, run = sum(weights), 0.0
    for i in order:
        run += weights[i]
        if round(run / total, 9) >= 0.5:
            return ratios[i]
    raise ValueError("no ratios")


def centres(by_family: dict[str, list[tuple[float, str]]]) -> dict:
    """The calibrated centre: per sharding group with at least MIN_CENTRE runs, and over every run, the
    source-weighted median of measured / modelled peak (engine/memory/band.py centre_for reads it).

    A group rather than a family: leave-one-set-out over sets 1-9 (docs/explanation/memory-model.md) scored per-family
    centres no better than per-group ones, and a family holds as few as one run."""
    def median_of(pool: list[tuple[float, str]]) -> float:
        return round(weighted_median([r for r, _ in pool], source_weights([s for _, s in pool])), 4)

    every = [r for rs in by_family.values() for r in rs]
    by_group: dict[str, list[tuple[float, str]]] = {}
    for fam, rs in by_family.items():
        by_group.setdefault(group_of(fam), []).extend(rs)
    groups = {g: median_of(rs) for g, rs in sorted(by_group.items()) if len(rs) >= MIN_CENTRE}
    return {"groups": groups, "all": median_of(every), "n": {g: len(rs) for g, rs in sorted(by_group.items())}}


def centre_of(centre: dict, family: str) -> float:
    """A family's centre: its group's, else the pooled one (engine/memory/band.py centre_for); a
    family@stack key takes its family's."""
    return centre["groups"].get(group_of(family.split("@")[0]), centre["all"])


def around(by_family: dict[str, list[tuple[float, str]]], centre: dict) -> dict[str, list[tuple[float, str]]]:
    """The residuals around the calibrated estimate: each ratio divided by its group's centre."""
    return {fam: [(r / centre_of(centre, fam), s) for r, s in rs] for fam, rs in by_family.items()}


def level_tables(by_family: dict[str, list[tuple[float, str]]],
                 by_stack: dict[str, list[tuple[float, str]]] | None = None) -> dict[str, dict]:
    """One band table per shipped level, each level's tops at least the lower level's."""
    return _monotone({str(q): bands(by_family, q, by_stack) for q in LEVELS})


def band_document(case_files=CASE_FILES) -> dict:
    """The whole band.json content: provenance plus one band table per level."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    by_family = residuals(case_files)
    centre = centres(by_family)
    return {"computed": datetime.date.today().isoformat(), "commit": commit or "unknown",
            "case_files": list(case_files), "method": f"weighted split conformal, no source above {SOURCE_CAP:g} runs per pool",
            "ratio": "measured GPU peak / memfit estimate (the modelled terms times the centre)",
            "centre": centre, "default_level": DEFAULT_LEVEL,
            "levels": level_tables(around(by_family, centre),
                                   around(residuals(case_files, by_stack=True), centre))}


def band_verdicts(case_files=CASE_FILES, level: float = DEFAULT_LEVEL) -> dict:
    """GPU fit verdicts of the calibration cases (peaks and out-of-memory outcomes) by the point estimate
    and by the band's upper end (what gpu-upper-over-capacity adds to a plan that keeps no headroom).

    Returns:
        {"cases", "right_point", "right_upper", "unsafe_point", "unsafe_upper"} and, where any,
        "unsafe_upper_cases": each run that ran out of memory under the band's top (estimate / card).
    """
    from memfit.engine import plan_from_dict
    from memfit.engine.core.errors import MemfitError
    from memfit.engine.memory.band import band_for
    from memfit.engine.plan.strategy import Strategy

    out = {"cases": 0, "right_point": 0, "right_upper": 0, "unsafe_point": 0, "unsafe_upper": 0}
    for f in case_files:
        rows, _ = score(yaml.safe_load((ROOT / f).read_text())["cases"])
        cases = {c["name"]: c for c in yaml.safe_load((ROOT / f).read_text())["cases"]}
        for row in rows:
            if row["expect_fits"] is None or row["not_modelled"]:
                continue
            try:
                t = plan_from_dict(cases[row["name"]]["plan"], row["name"]).training
            except MemfitError:
                continue
            s = Strategy(method=t.method, zero_stage=t.zero_stage, offload_optimizer=t.offload_optimizer,
                         offload_param=t.offload_param, sharding="fsdp" if group_of(row["family"]) == "fsdp" else "deepspeed")
            gpu, cap, ran = row["tools"]["memfit"][0], row["capacity"], row["expect_fits"]
            top = band_for(s, level, row["world_size"], framework_of(cases[row["name"]])).high
            point, upper = gpu <= cap, gpu * top <= cap
            out["cases"] += 1
            out["right_point"] += point == ran
            out["right_upper"] += upper == ran
            out["unsafe_point"] += point and not ran
            out["unsafe_upper"] += upper and not ran
            if upper and not ran:
                out.setdefault("unsafe_upper_cases", []).append(f"{row['name']} ({gpu / cap:.0%} of the card)")
    return out


def cross_validate(case_files=CASE_FILES) -> dict:
    """Leave one set out: each set's errors under the centres calibrated on the other sets, against its
    errors with no centre (error = estimate / measured - 1, as bench/heldout.py scores).

    Returns:
        {"sets": {file: {"n", "none": (median |e|, median e), "centred": (...)}}, "pooled": same over all}.
    """
    per_set = {f: residuals((f,)) for f in case_files}

    def stats(errors: list[float]) -> tuple[float, float, int]:
        return (round(statistics.median(map(abs, errors)), 4), round(statistics.median(errors), 4),
                sum(abs(e) <= 0.10 for e in errors))

    out, every_none, every_centred = {"sets": {}}, [], []
    for f in case_files:
        rest: dict[str, list[tuple[float, str]]] = {}
        for g in case_files:
            if g != f:
                for fam, rs in per_set[g].items():
                    rest.setdefault(fam, []).extend(rs)
        centre = centres(rest)
        none = [1 / r - 1 for rs in per_set[f].values() for r, _ in rs]
        centred = [centre_of(centre, fam) / r - 1 for fam, rs in per_set[f].items() for r, _ in rs]
        every_none += none
        every_centred += centred
        if none:  # a set of outcomes only (set 14) has no residual to score
            out["sets"][f] = {"n": len(none), "none": stats(none), "centred": stats(centred)}
    out["pooled"] = {"n": len(every_none), "none": stats(every_none), "centred": stats(every_centred)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the shipped file, write nothing")
    ap.add_argument("--verdicts", action="store_true", help="GPU verdicts by point estimate vs band top, write nothing")
    ap.add_argument("--cross-validate", action="store_true",
                    help="leave one set out: errors with and without the centre, write nothing")
    args = ap.parse_args(argv)
    if args.cross_validate:
        print(json.dumps(cross_validate(), indent=2))
        return 0
    if args.verdicts:
        print(json.dumps({str(q): band_verdicts(level=q) for q in LEVELS}, indent=2))
        return 0
    doc = band_document()
    if args.check:
        shipped = json.loads(BAND_FILE.read_text())
        stale = shipped.get("levels") != doc["levels"] or shipped.get("centre") != doc["centre"]
        print("engine/memory/band.json is " + ("STALE: run bench/band.py" if stale else "up to date"))
        return 1 if stale else 0
    BAND_FILE.write_text(json.dumps(doc, indent=2) + "\n")
    print("level  pool               n  n_w     low    high   (families, then groups, kinds, all)")
    for q, table in doc["levels"].items():
        rows = {**table["families"], **{f"[{g}]": e for g, e in table["groups"].items()},
                **{f"[{k}]": e for k, e in table["kinds"].items()}, "[all]": table["all"]}
        for name, e in rows.items():
            print(f"{q:5s}  {name:18s} {e['n']:3d} {e['n_weighted']:5.1f}  {e['low']:6.3f} {e['high']:6.3f}  pool {e['pool']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
