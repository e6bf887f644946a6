"""Issue 12's acceptance: published FSDP runs of the in-sample set, planned as FSDP, stay under the top of
the error band memfit states. The band (bench/band.py) is computed from the held-out sets' residuals, not from
these runs, so this is a check of the band on runs it was not computed from (the point model was built
on them); out-of-sample FSDP numbers are in docs/accuracy.md. Expected numbers are the published measured
peaks in bench/cases/published_extra.yaml (fms-acceleration's A100 benchmark CSV)."""
from __future__ import annotations

import yaml
import pytest

from memfit.engine import estimate, plan_from_dict

from conftest import ROOT

CASES = {c["name"]: c for c in yaml.safe_load((ROOT / "bench" / "cases" / "published_extra.yaml").read_text())["cases"]}


@pytest.mark.parametrize("name", ["fms-mistral7b-lora-fsdp2-b2", "fms-mixtral-lora-fsdp2-b2",
                                  "fms-llama2-70b-qlora-fsdp2-b2"])
def test_published_fsdp_run_is_within_the_band(name):
    case = CASES[name]
    assert case["plan"]["training"]["sharding"].startswith("fsdp")  # planned as FSDP, not as ZeRO-3
    result = estimate(plan_from_dict(case["plan"], name))
    assert result.strategy["sharding"] == "fsdp"
    measured = case["expect"]["gpu_peak_gib"]
    # The top covers them. The bottom need not: new runs mostly measured above the estimate, so the
    # band's low ratio is near 1, while these runs (the model was built on them) measured 4-6 % below.
    assert measured <= result.gpu_band.high
