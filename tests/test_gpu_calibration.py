"""bench/gpu_calibration.py must not rot: its cpu --tiny run produces valid rows."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_calibration.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_calibration", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_cpu_tiny_run_writes_valid_rows(tmp_path):
    out = tmp_path / "tiny.json"
    assert _load().main(["--device", "cpu", "--tiny", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["device"] == "cpu" and data["torch"] and data["transformers"] and data["date"]
    rows = data["rows"]
    assert len(rows) == 4
    for row in rows:
        assert row["status"] == "ok", row["error"]
        # No CUDA on cpu: the GPU fields are null, host RSS and step time are measured.
        assert row["max_memory_allocated"] is None and row["nvml_used_bytes"] is None
        assert row["host_rss_bytes"] > 0 and row["step_seconds"] > 0
        # memfit's estimate for the same plan sits beside the measurement.
        assert row["estimate"] is None or "gpu_peak_gib" in row["estimate"] or "error" in row["estimate"]


@pytest.mark.slow
def test_case_filter_and_time_budget(tmp_path):
    out = tmp_path / "f.json"
    assert _load().main(["--device", "cpu", "--tiny", "--cases", "lora", "--max-seconds", "0",
                         "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    # One case matches 'lora'; with a zero budget it is recorded as skipped, not silently dropped.
    assert [r["status"] for r in rows] == ["skipped"] and "lora" in rows[0]["case"]


def test_gpu_matrix_is_planned_under_eight_minutes():
    """The brief: the whole H100 run fits one call of < 8 min; the plan's own estimate says so."""
    mod = _load()
    cases = mod.gpu_matrix()
    assert len({c.name for c in cases}) == len(cases)
    sizes = {"0.5B": 0.5e9, "1.5B": 1.5e9, "1B": 1.2e9, "3B": 3.1e9, "7B": 7.6e9}
    total = sum(mod.estimate_seconds(c, sizes[c.model.split("-")[-1]]) for c in cases)
    assert total < 8 * 60


def test_cuda_without_gpu_is_an_error_not_a_crash(capsys):
    pytest.importorskip("torch")
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert _load().main(["--device", "cuda", "--out", "/dev/null"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_measured_rows_feed_the_accuracy_benchmark(tmp_path):
    # A results file as the GPU run writes it: the accuracy benchmark re-estimates each row's plan and
    # compares it with NVML's used memory (CUDA context included), or counts an OOM row as "does not fit".
    spec = importlib.util.spec_from_file_location("accuracy", SCRIPT.parent / "accuracy.py")
    accuracy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(accuracy)

    plan = {"model": "Qwen/Qwen2.5-0.5B", "hardware": {"gpu_memory": 80, "host_memory": 256},
            "training": {"method": "full", "seq_len": 512, "micro_batch_size": 1, "precision": "pure_bf16",
                         "gradient_checkpointing": False, "attention": "sdpa", "zero_stage": 0,
                         "offload_optimizer": "none", "offload_param": "none"}}
    rows = [{"case": "a", "status": "ok", "nvml_used_bytes": 6 * 2**30, "plan": plan},
            {"case": "b", "status": "oom", "plan": plan}, {"case": "c", "status": "skipped", "plan": plan}]
    path = tmp_path / "h100.json"
    path.write_text(json.dumps({"device_name": "H100", "rows": rows}))
    cases = accuracy.load_cases([path])
    assert [c["expect"] for c in cases] == [{"gpu_peak_gib": 6.0}, {"gpu_fits": False}]
    assert accuracy.evaluate(cases[0])["measured"] == 6.0
