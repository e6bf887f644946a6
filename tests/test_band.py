"""The honest error band: engine/memory/band.json (bench/band.py over the in-sample calibration cases),
its lookup, the advice fields that carry it, and the gpu-upper-over-capacity rule."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from memfit.engine import advise, estimate, plan_from_dict
from memfit.engine.memory.band import band_for, band_table, strategy_family
from memfit.engine.plan.strategy import Strategy
from memfit.engine.policy.oracle import PythonEvaluator
from memfit.engine.policy.rules import load_rules

ROOT = Path(__file__).resolve().parent.parent


def test_band_file_loads_and_every_entry_is_ordered():
    table = band_table()
    entries = [*table["families"].values(), *table["methods"].values(), table["all"]]
    assert entries
    for e in entries:
        # low <= high by construction of a 10th/90th percentile; low <= 1 <= high is not required
        # (a family the model over-estimates throughout has both ratios below 1).
        assert 0 < e["low"] <= e["high"], e
        assert e["n"] >= table["min_cases"] or e["pool"] == "all", e
    assert table["case_files"] == ["bench/cases/seed.yaml", "bench/cases/published_extra.yaml"]


def test_thin_family_uses_its_method_and_an_unseen_one_falls_back():
    table = band_table()
    full_z3_offload = Strategy(method="full", zero_stage=3, offload_optimizer="cpu", offload_param="cpu")
    assert strategy_family(full_z3_offload) == "full/z3/offload"
    assert "full/z3/offload" not in table["families"]  # no in-sample case of this family
    assert band_for(full_z3_offload).pool == table["methods"]["full"]["pool"]
    fsdp = Strategy(method="lora", zero_stage=3, sharding="fsdp")
    assert strategy_family(fsdp) == "lora/fsdp"


@pytest.mark.slow
def test_shipped_band_equals_the_band_computed_from_the_case_files():
    # Recomputes every in-sample case (bench/accuracy.py evaluate()): the shipped file cannot go stale.
    sys.path.insert(0, str(ROOT / "bench"))
    from band import bands, residuals

    shipped = json.loads((ROOT / "engine" / "memory" / "band.json").read_text())
    computed = bands(residuals())
    assert {k: shipped[k] for k in ("families", "methods", "all")} == computed, "run bench/band.py"


def test_new_rule_fires_on_a_hand_built_fact_set():
    (rule,) = [r for r in load_rules() if r.id == "gpu-upper-over-capacity"]
    ev = PythonEvaluator([rule])
    # Point estimate 97% of the card, band top 104%: only the band says it does not fit.
    over = {"gpu_usage_upper": 1.04, "gpu_peak_gib": 77.6, "gpu_peak_upper_gib": 83.2, "gpu_capacity_gib": 80.0}
    under = {**over, "gpu_usage_upper": 0.99, "gpu_peak_upper_gib": 79.2}
    assert ev.fired(over) == ["gpu-upper-over-capacity"]
    assert ev.fired(under) == []


def _plan(gpu_gib: float):
    return plan_from_dict({
        "model": "mistralai/Mistral-7B-v0.3",
        "hardware": {"gpu_memory": f"{gpu_gib:.4f}GiB", "gpus_per_node": 1, "host_memory": "64GB"},
        "training": {"method": "qlora", "seq_len": 2048, "micro_batch_size": 1, "precision": "fp16",
                     "gradient_checkpointing": True, "zero_stage": 0, "offload_optimizer": "none",
                     "offload_param": "none"},
        "policy": {"gpu_headroom": 0}}, "band-edge.yaml")


def test_search_rejects_a_candidate_whose_band_top_exceeds_the_card():
    # Capacity between the point estimate and the band's top (estimate x the family's 90th-percentile
    # ratio from band.json): the point estimate fits, the band says runs like it exceeded the card.
    peak = estimate(_plan(80)).gpu_peak_gib
    high = band_for(Strategy(method="qlora", zero_stage=0, gradient_checkpointing=True)).high
    assert high > 1.0  # the qlora/z0 calibration runs measured above the estimate at the 90th percentile
    tight = _plan(peak * (1 + high) / 2)
    assert estimate(tight).gpu_peak_gib < tight.hardware.gpu_memory_gib  # point estimate under capacity
    (c,) = advise(tight).candidates
    assert not c.feasible
    assert any("exceeded the card" in r for r in c.rejected_because), c.rejected_because
    assert c.memory.gpu_band.high > tight.hardware.gpu_memory_gib > c.memory.gpu_peak_gib
    roomy = _plan(peak * high * 1.01)
    assert advise(roomy).candidates[0].feasible


def test_estimate_result_and_memory_report_carry_the_band():
    r = estimate(_plan(80))
    b = band_for(Strategy(method="qlora", zero_stage=0, gradient_checkpointing=True))
    assert r.gpu_band.low == pytest.approx(r.gpu_peak_gib * b.low, abs=2e-3)
    assert r.gpu_band.high == pytest.approx(r.gpu_peak_gib * b.high, abs=2e-3)
    assert (r.gpu_band.n, r.gpu_band.pool) == (b.n, b.pool)
