"""Golden files: tests/golden/<case>/plan.yaml -> advice.json (the reviewed projection of the advice)
and deepspeed.json (the top plan's config).

Golden files are regression pins, not oracles: they make every change to rankings, verdicts and
numbers show up as a reviewed diff. They are regenerated only with `pytest --update-golden`. The
numbers inside them are checked independently elsewhere (test_memory.py from first principles,
test_ds_parity.py against DeepSpeed, test_model_facts.py against meta-device counts).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from memfit.engine import advise

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "plan.yaml").exists())


def projection(advice) -> dict:
    """What a reviewer checks: summary, verdicts, and the first candidates with their numbers."""
    def cand(c):
        return {"key": c.key, "feasible": c.feasible, "score": c.score,
                "gpu_peak_gib": round(c.memory.gpu_peak_gib, 1), "host_peak_gib": round(c.memory.host_peak_gib, 1),
                "rules": [e.rule for e in c.explanation], "rejected_because": c.rejected_because}
    return {"summary": advice.summary, "model_total_params": advice.model.total_params,
            "feasible": sum(c.feasible for c in advice.candidates), "candidates": len(advice.candidates),
            "top": [cand(c) for c in advice.candidates[:6]], "what_it_would_take": advice.what_it_would_take}


@pytest.mark.parametrize("case", CASES)
def test_golden(case, request):
    folder = GOLDEN / case
    advice = advise(folder / "plan.yaml")
    got = {"advice.json": projection(advice),
           "deepspeed.json": advice.best.deepspeed_config if advice.best else {}}
    for name, data in got.items():
        text = json.dumps(data, indent=2, sort_keys=True) + "\n"
        path = folder / name
        if request.config.getoption("--update-golden"):
            path.write_text(text)
        assert path.exists(), f"{path} missing: run pytest --update-golden and review the diff"
        assert json.loads(path.read_text()) == json.loads(text), f"{path} differs: review, then --update-golden"


def test_at_least_five_golden_plans():
    assert len(CASES) >= 5


def test_every_example_has_a_golden_copy():
    # Each shipped example is pinned by a golden case whose plan.yaml is the example itself.
    examples = Path(__file__).parent.parent / "examples"
    for f in sorted(examples.glob("*.yaml")):
        golden = GOLDEN / f.stem / "plan.yaml"
        assert golden.exists(), f"{f.name}: add tests/golden/{f.stem}/plan.yaml (a copy) and --update-golden"
        assert golden.read_text() == f.read_text(), f"{golden} differs from examples/{f.name}"
    assert len(list(examples.glob("*.yaml"))) >= 8
