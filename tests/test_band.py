"""The honest error band: engine/memory/band.json (bench/band.py: split-conformal quantiles of the residuals of
held-out sets 1 to 3), its lookup, the advice fields that carry it, and the gpu-upper-over-capacity rule."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from memfit.engine import advise, estimate, plan_from_dict
from memfit.engine.memory.band import band_for, band_table, strategy_family, strategy_group
from memfit.engine.plan.strategy import Strategy
from memfit.engine.policy.oracle import PythonEvaluator
from memfit.engine.policy.rules import load_rules

ROOT = Path(__file__).resolve().parent.parent


def _conformal():
    sys.path.insert(0, str(ROOT / "bench"))
    from band import conformal

    return conformal


def test_conformal_cut_is_the_order_statistic_of_its_definition():
    # Split conformal (Lei et al. 2018): upper end = the ceil((n+1) q)-th smallest of n ratios, lower
    # end = the floor((n+1)(1-q))-th; undefined when that index falls outside 1..n.
    conformal = _conformal()
    nine = [float(i) for i in range(9, 0, -1)]  # 9..1, unsorted on purpose
    assert conformal(nine, 0.8) == (2.0, 8.0)  # ceil(10 x 0.8) = 8, floor(10 x 0.2) = 2
    assert conformal(nine, 0.9) == (1.0, 9.0)  # ceil(10 x 0.9) = 9, floor(10 x 0.1) = 1
    assert conformal(nine[:8], 0.9) is None  # ceil(9 x 0.9) = 9 > 8 ratios
    assert conformal([1.0, 2.0, 3.0], 0.8) is None  # ceil(4 x 0.8) = 4 > 3
    assert conformal([1.0, 2.0, 3.0, 4.0], 0.8) == (1.0, 4.0)


def test_weighted_cut_follows_its_definition():
    # Weighted split conformal (Tibshirani et al. 2019): the top is the smallest ratio whose weight at
    # or below it, over the total weight + 1 for the new run, reaches q; the bottom mirrors it.
    sys.path.insert(0, str(ROOT / "bench"))
    from band import conformal, source_weights

    # one source with 10 ratios (1..10) and 4 single-run sources (11..14): with a cap of 5 the big
    # source weighs 0.5 a ratio, 5 in all; total 5 + 4 + 1 = 10
    sources = ["a"] * 10 + ["b", "c", "d", "e"]
    w = source_weights(sources, cap=5)
    assert w == [0.5] * 10 + [1.0] * 4
    ratios = [float(i) for i in range(1, 15)]
    # top at 0.8: cumulative weight reaches 8 (of 10) at 13 (5 through ratio 10, then 1 + 1 + 1); bottom:
    # from the top down, 14, 13, 12, 11 give 4, then 0.5 per ratio reaches 8 at ratio 3 (4 + 8 x 0.5)
    assert conformal(ratios, 0.8, w) == (3.0, 13.0)
    # unweighted, the same 14 ratios: ceil(15 x 0.8) = 12th, floor(15 x 0.2) = 3rd
    assert conformal(ratios, 0.8) == (3.0, 12.0)
    # at 0.9 the weighted top needs 9 of 10: 14, as the unweighted ceil(15 x 0.9) = 14th; at 0.95 the
    # weighted top needs 9.5 of 10, more than the 9 of the ratios: undefined
    assert conformal(ratios, 0.9, w)[1] == 14.0 == conformal(ratios, 0.9)[1]
    assert conformal(ratios, 0.95, w) is None
    # no source above the cap: weights are all 1
    assert source_weights(["a", "b", "a"], cap=5) == [1.0, 1.0, 1.0]


def test_conformal_upper_end_covers_a_new_draw_at_its_level():
    # The guarantee the band rests on: for exchangeable draws, P(new <= upper) >= level. Checked by
    # simulation with a fixed seed on a skewed distribution (log-normal, like ratios of peaks).
    import random

    conformal = _conformal()
    rng = random.Random(17)
    for level, n in ((0.8, 9), (0.8, 15), (0.9, 19)):
        trials = 4000
        covered = 0
        for _ in range(trials):
            draws = [rng.lognormvariate(0, 0.3) for _ in range(n + 1)]
            covered += draws[-1] <= conformal(draws[:-1], level)[1]
        # exact coverage is ceil((n+1) q) / (n+1) >= q; 4000 trials: standard error < 0.007
        assert covered / trials >= level - 0.02, (level, n, covered / trials)


def test_band_file_holds_every_level_from_held_out_runs_only():
    table = band_table()
    assert table["case_files"] == ["bench/heldout/cases.yaml", "bench/heldout2/cases.yaml", "bench/heldout3/cases.yaml",
                                   "bench/heldout4/cases.yaml", "bench/heldout5/cases.yaml",
                                   "bench/heldout6/cases.yaml", "bench/heldout7/cases.yaml",
                                   "bench/heldout8/cases.yaml", "bench/heldout9/cases.yaml",
                                   "bench/heldout10/cases.yaml", "bench/heldout11/cases.yaml",
                                   "bench/heldout12/cases.yaml", "bench/heldout13/cases.yaml",
                                   "bench/heldout14/cases.yaml", "bench/heldout15/cases.yaml",
                                   "bench/heldout16/cases.yaml", "bench/heldout17/cases.yaml",
                                   "bench/heldout18/cases.yaml", "bench/heldout19/cases.yaml",
                                   "bench/heldout20/cases.yaml", "bench/heldout21/cases.yaml",
                                   "bench/heldout22/cases.yaml", "bench/heldout23/cases.yaml",
                                   "bench/heldout24/cases.yaml", "bench/heldout25/cases.yaml",
                                   "bench/heldout26/cases.yaml", "bench/heldout27/cases.yaml",
                                   "bench/heldout28/cases.yaml", "bench/heldout29/cases.yaml",
                                   "bench/heldout30/cases.yaml", "bench/heldout31/cases.yaml",
                                   "bench/heldout32/cases.yaml", "bench/heldout33/cases.yaml",
                                   "bench/heldout34/cases.yaml", "bench/heldout35/cases.yaml",
                                   "bench/heldout36/cases.yaml", "bench/heldout37/cases.yaml"]
    assert set(table["levels"]) == {"0.8", "0.9"}
    for level, t in table["levels"].items():
        entries = [*t["families"].values(), *t["groups"].values(), *t["kinds"].values(), t["all"]]
        for e in entries:
            # a 1-q / q pair of order statistics: low <= high; low <= 1 <= high is not required
            assert 0 < e["low"] <= e["high"], (level, e)
    low, high = table["levels"]["0.8"], table["levels"]["0.9"]
    for fam, e in low["families"].items():
        # a band that promises more coverage is never narrower at the top
        assert high["families"][fam]["high"] >= e["high"], fam


def test_thin_family_pools_into_its_group_then_its_kind():
    table = band_table()["levels"]["0.8"]
    full_z3_offload = Strategy(method="full", zero_stage=3, offload_optimizer="cpu", offload_param="cpu")
    assert strategy_family(full_z3_offload) == "full/z3/offload"
    assert strategy_group(full_z3_offload) == "zero/offload"
    b = band_for(full_z3_offload)
    # offload runs are never pooled with resident runs alone: their GPU side is the least known part of
    # the model, so a thin offload pool falls back to every run (which includes the offload ones)
    for level in (0.8, 0.9):
        # (the pool may carry the remark ", top raised to level 0.8's": monotone tops, bench/band.py)
        assert band_for(full_z3_offload, level).pool.split(",")[0] in {"full/z3/offload", "zero/offload", "offload", "all"}
    assert table["kinds"]["offload"]["pool"] in {"offload", "all"}
    assert b.level == 0.9  # the default level, as policy.band_quantile's default
    # ZeRO-1/2 offload only the optimizer: weights and gradients stay on the GPU, a resident run's GPU side
    z2_offload = Strategy(method="full", zero_stage=2, offload_optimizer="cpu")
    assert strategy_group(z2_offload) == "zero"
    assert band_for(z2_offload, 0.8).pool == table["groups"]["zero"]["pool"]
    fsdp = Strategy(method="lora", zero_stage=3, sharding="fsdp")
    assert (strategy_family(fsdp), strategy_group(fsdp)) == ("lora/fsdp", "fsdp")
    unseen = Strategy(method="qlora", zero_stage=1, offload_optimizer="cpu")  # no qlora/z12/offload peak calibrates
    assert "qlora/z12/offload" not in table["families"]
    assert band_for(unseen, 0.8).pool == table["groups"]["zero"]["pool"]


def test_zero_1_or_2_on_one_gpu_is_a_single_gpu_run_for_the_band():
    # Nothing is sharded over one rank: its errors are a single-GPU run's, not those of the multi-GPU
    # ZeRO runs that calibrate the zero group (else ZeRO-1 on one card would look safer than no ZeRO).
    table = band_table()["levels"]["0.8"]
    z1 = Strategy(method="lora", zero_stage=1, gradient_checkpointing=True)
    z0 = Strategy(method="lora", zero_stage=0, gradient_checkpointing=True)
    assert band_for(z1, 0.8, world_size=1) == band_for(z0, 0.8, world_size=1)
    assert band_for(z1, 0.8, world_size=2).pool == table["families"].get("lora/z12", table["groups"]["zero"])["pool"]
    z3 = Strategy(method="lora", zero_stage=3, offload_optimizer="cpu", offload_param="cpu")
    assert band_for(z3, 0.8, world_size=1) == band_for(z3, 0.8, world_size=8)  # ZeRO-3 still fetches weights


@pytest.mark.slow
def test_shipped_band_equals_the_band_computed_from_the_case_files():
    # Recomputes every calibration case (bench/heldout.py score()): the shipped file cannot go stale.
    sys.path.insert(0, str(ROOT / "bench"))
    from band import around, centres, level_tables, residuals

    shipped = json.loads((ROOT / "engine" / "memory" / "band.json").read_text())
    by_family = residuals()
    centre = centres(by_family)
    assert shipped["centre"] == centre, "run bench/band.py"
    by_stack = around(residuals(by_stack=True), centre)
    assert shipped["levels"] == level_tables(around(by_family, centre), by_stack), "run bench/band.py"


def test_a_stack_with_a_thick_pool_of_its_own_takes_its_band():
    # Set 16's 26 Unsloth runs (one stack, 22 notebooks) form qlora/z0@unsloth; an HF Trainer QLoRA
    # plan reads qlora/z0@hf-trainer, a stack without a pool of its own the family over every stack.
    from memfit.engine.memory.band import band_table

    table = band_table()["levels"]["0.9"]
    s = Strategy(method="qlora", zero_stage=0, gradient_checkpointing=True)
    assert band_for(s, 0.9, framework="unsloth").pool == table["stacks"]["qlora/z0@unsloth"]["pool"] == "qlora/z0@unsloth"
    assert band_for(s, 0.9, framework="hf-trainer").pool == "qlora/z0@hf-trainer"
    assert band_for(s, 0.9, framework="torchtune").pool == table["families"]["qlora/z0"]["pool"]
    assert band_for(s, 0.9).pool == table["families"]["qlora/z0"]["pool"]
    # Each stack pool holds only its own stack's runs: together they are at most the family's.
    n_stacks = sum(e["n"] for k, e in band_table()["levels"]["0.8"]["stacks"].items() if k.startswith("qlora/z0@"))
    assert n_stacks <= band_table()["levels"]["0.8"]["families"]["qlora/z0"]["n"]


def test_weighted_median_follows_its_definition():
    # The smallest ratio whose weight at or below it reaches half the total: with weights 1 the lower
    # median; a source capped to half weight moves it.
    sys.path.insert(0, str(ROOT / "bench"))
    from band import weighted_median

    assert weighted_median([1.3, 0.9, 1.1, 1.0], [1, 1, 1, 1]) == 1.0
    assert weighted_median([1.3, 0.9, 1.1], [1, 1, 1]) == 1.1
    assert weighted_median([0.9, 1.0, 1.2, 1.2, 1.2], [1, 1, 0.25, 0.25, 0.25]) == 1.0


def test_the_estimate_is_the_modelled_terms_times_the_group_centre():
    # engine/memory/band.py centre_for: the group's centre from band.json scales every named term; one
    # GPU under ZeRO-1/2 is a single-GPU run, as for the band.
    centre = band_table()["centre"]
    for training, world, group in (({"method": "lora", "zero_stage": 0}, 1, "single"),
                                   ({"method": "lora", "zero_stage": 2}, 1, "single"),
                                   ({"method": "full", "zero_stage": 3}, 2, "zero"),
                                   ({"method": "full", "zero_stage": 3, "sharding": "fsdp2"}, 2, "fsdp")):
        plan = plan_from_dict({"model": "Qwen/Qwen2.5-0.5B", "hardware": {"gpu_memory": 80, "gpus_per_node": world, "host_memory": 512},
                               "training": {**training, "offload_optimizer": "none", "offload_param": "none",
                                            "gradient_checkpointing": True, "micro_batch_size": 1}})
        e = estimate(plan)
        c = centre["groups"].get(group, centre["all"])
        assert e.breakdown["calibration"]["centre"] == pytest.approx(c, abs=1e-4), group
        assert e.gpu_peak_gib == pytest.approx(e.breakdown["calibration"]["modelled_gib"] * c, rel=1e-3), group


def test_new_rule_fires_on_a_hand_built_fact_set():
    (rule,) = [r for r in load_rules() if r.id == "gpu-upper-over-capacity"]
    ev = PythonEvaluator([rule])
    # Point estimate 97% of the card, band top 104%: only the band says it does not fit.
    over = {"gpu_usage_upper": 1.04, "gpu_peak_gib": 77.6, "gpu_peak_upper_gib": 83.2, "gpu_capacity_gib": 80.0}
    under = {**over, "gpu_usage_upper": 0.99, "gpu_peak_upper_gib": 79.2}
    assert ev.fired(over) == ["gpu-upper-over-capacity"]
    assert ev.fired(under) == []


def _raw_plan(gpu_gib: float) -> dict:
    return {
        "model": "mistralai/Mistral-7B-v0.3",
        "hardware": {"gpu_memory": f"{gpu_gib:.4f}GiB", "gpus_per_node": 1, "host_memory": "64GB"},
        "training": {"method": "qlora", "seq_len": 2048, "micro_batch_size": 1, "precision": "fp16",
                     "gradient_checkpointing": True, "zero_stage": 0, "offload_optimizer": "none",
                     "offload_param": "none"},
        "policy": {"gpu_headroom": 0}}


def _plan(gpu_gib: float):
    return plan_from_dict(_raw_plan(gpu_gib), "band-edge.yaml")


def test_search_rejects_a_candidate_whose_band_top_exceeds_the_card():
    # Capacity between the point estimate and the band's top (estimate x the family's upper conformal
    # ratio from band.json): the point estimate fits, the band says runs like it peaked above the card.
    peak = estimate(_plan(80)).gpu_peak_gib
    high = band_for(Strategy(method="qlora", zero_stage=0, gradient_checkpointing=True), framework="hf-trainer").high
    assert high > 1.0  # held-out qlora/z0 runs measured above the estimate at the upper quantile
    tight = _plan(peak * (1 + high) / 2)
    assert estimate(tight).gpu_peak_gib < tight.hardware.gpu_memory_gib  # point estimate under capacity
    (c,) = advise(tight).candidates
    assert not c.feasible
    assert any("upper end of its error band" in r for r in c.rejected_because), c.rejected_because
    assert c.memory.gpu_band.high > tight.hardware.gpu_memory_gib > c.memory.gpu_peak_gib
    roomy = _plan(peak * high * 1.01)
    assert advise(roomy).candidates[0].feasible


def test_estimate_result_and_memory_report_carry_the_band():
    r = estimate(_plan(80))
    b = band_for(Strategy(method="qlora", zero_stage=0, gradient_checkpointing=True), framework="hf-trainer")
    assert r.gpu_band.low == pytest.approx(r.gpu_peak_gib * b.low, abs=2e-3)
    assert r.gpu_band.high == pytest.approx(r.gpu_peak_gib * b.high, abs=2e-3)
    assert (r.gpu_band.n, r.gpu_band.pool, r.gpu_band.level) == (b.n, b.pool, 0.9)  # the default level


def test_policy_band_quantile_picks_the_level():
    plan = plan_from_dict({**_raw_plan(80), "policy": {"gpu_headroom": 0, "band_quantile": 0.8}}, "narrow.yaml")
    wide = plan_from_dict({**_raw_plan(80), "policy": {"gpu_headroom": 0, "band_quantile": 0.9}}, "wide.yaml")
    s = Strategy(method="qlora", zero_stage=0, gradient_checkpointing=True)
    r80, r90 = estimate(plan), estimate(wide)
    assert r80.gpu_band.level == 0.8
    assert r90.gpu_band.level == 0.9
    assert r90.gpu_band.high == pytest.approx(r90.gpu_peak_gib * band_for(s, 0.9, framework="hf-trainer").high, abs=2e-3)
    assert r90.gpu_band.high >= r80.gpu_band.high


def test_band_quantile_outside_the_shipped_levels_is_a_plan_error():
    from memfit.engine import PlanError

    with pytest.raises(PlanError, match=r"policy.band_quantile"):
        plan_from_dict({**_raw_plan(80), "policy": {"band_quantile": 0.85}}, "bad.yaml")
