"""Measured facts change the advice (issue 5): logs of real runs reject, calibrate, and tune."""
from __future__ import annotations

import pytest

from memfit.engine import advise, load_plan, plan_from_dict
from memfit.engine.core.errors import LogError
from memfit.engine.evidence.match import evidence_for, infer_run
from memfit.engine.memory.estimate import estimate_memory
from memfit.engine.model.spec import resolve_model
from memfit.engine.plan.strategy import Strategy

from conftest import EXAMPLES, ROOT

LOGS = ROOT / "tests" / "fixtures" / "logs"
QWEN_LOG = LOGS / "qwen32b_host_oom.log"


def test_run_strategy_read_from_deepspeed_config_print():
    # The fixture's DeepSpeed config print: zero_config stage=3, offload_param/optimizer device='cpu',
    # pin_memory=True; the HF Trainer line "Instantaneous batch size per device = 1".
    assert infer_run(QWEN_LOG) == {"zero_stage": 3, "offload_param": "cpu", "offload_optimizer": "cpu",
                                   "pin_memory": True, "micro_batch_size": 1}


def test_motivating_host_oom_rejects_full_offload_and_recommends_what_fits():
    a = advise(EXAMPLES / "qwen32b-one-h100.yaml", measured=[QWEN_LOG])
    failed = [c for c in a.candidates if c.key.startswith("full/z3/opt=cpu/param=cpu/gc/")]
    assert failed and all(not c.feasible for c in failed)
    reasons = " ".join(failed[0].rejected_because)
    assert "qwen32b_host_oom.log:" in reasons  # the evidence is cited with its line
    best = a.best
    assert best is not None and best.feasible
    # Recommended plans stay inside the policy budget (capacity x (1 - headroom)).
    assert best.memory.gpu_peak_gib <= 96 * 0.8
    assert best.memory.host_peak_gib <= a.hardware.host_memory_gib * 0.75


def test_fragmentation_hint_sets_expandable_segments():
    a = advise(EXAMPLES / "qwen32b-one-h100.yaml", measured=[LOGS / "cuda_oom_new.log"])
    assert a.best.settings.get("pytorch_cuda_alloc_conf") == "expandable_segments:True"


def test_unreadable_log_is_a_clear_error(tmp_path):
    with pytest.raises(LogError, match="absent.log: cannot read"):
        advise(EXAMPLES / "qwen32b-one-h100.yaml", measured=[tmp_path / "absent.log"])


def _calibration_log(tmp_path, max_ca_gb: float):
    log = tmp_path / "run.log"
    log.write_text(
        "[2025-01-01 00:00:00,000] [INFO] [config.py:1003:print]   zero_config .................. stage=2 "
        "contiguous_gradients=True offload_param=None offload_optimizer=None\n"
        "Instantaneous batch size per device = 2\n"
        "[2025-01-01 00:00:01,000] [INFO] [utils.py:781:see_memory_usage] After step\n"
        f"[2025-01-01 00:00:01,000] [INFO] [utils.py:782:see_memory_usage] MA 10.0 GB         Max_MA 12.0 GB         "
        f"CA 13.0 GB         Max_CA {max_ca_gb} GB \n")
    return log


RUN = Strategy(method="full", zero_stage=2, gradient_checkpointing=True, micro_batch_size=2)


def _calibrated(tmp_path, factor: float, digits: int = 2):
    """Evidence from a log whose measured peak is `factor` x memfit's estimate for RUN."""
    plan = plan_from_dict({"model": "Qwen/Qwen2.5-1.5B", "hardware": {"gpu_memory": 80, "gpus_per_node": 2,
                           "host_memory": 256}, "training": {"method": "full", "seq_len": 2048}}, "p.yaml")
    model = resolve_model(plan.model)
    predicted = estimate_memory(plan, model, RUN).gpu_peak_gib
    measured = round(predicted * factor, digits)
    return evidence_for(plan, model, [_calibration_log(tmp_path, measured)]), measured / predicted


def test_measured_peak_calibrates_the_family(tmp_path):
    ev, ratio = _calibrated(tmp_path, 1.3)  # a run that used 30% more than predicted
    # DeepSpeed prints GiB under "GB" (runtime/utils.py see_memory_usage divides by 2**30).
    assert ev.ratio == pytest.approx(ratio)
    scale, headroom = ev.calibration(RUN, 0.2)
    assert scale == pytest.approx(ratio)
    # The headroom becomes the measured error (0.3), bounded by the policy's 0.2.
    assert headroom == pytest.approx(0.2)
    other = Strategy(method="full", zero_stage=3, gradient_checkpointing=True)
    assert ev.calibration(other, 0.2) == (1.0, 0.2)  # another family keeps the default


def test_small_measured_error_narrows_the_headroom(tmp_path):
    ev, _ = _calibrated(tmp_path, 1.08)
    _, headroom = ev.calibration(RUN, 0.2)
    assert headroom == pytest.approx(0.08, abs=0.002)  # measured error 8% replaces the default 20%


def test_plan_measured_key_is_relative_to_the_plan(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "run.log").write_text(QWEN_LOG.read_text())
    text = (EXAMPLES / "qwen32b-one-h100.yaml").read_text() + "measured: [logs/run.log]\n"
    (tmp_path / "plan.yaml").write_text(text)
    a = advise(load_plan(tmp_path / "plan.yaml"))
    assert any("logs/run.log:" in " ".join(c.rejected_because) for c in a.candidates)
