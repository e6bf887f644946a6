"""Shared by the store tests: a published measurement as a record, and child processes that write."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
MiB = 2**20


def published_record() -> dict:
    """fms-acceleration's measured A100-80GB run of Mistral-7B, full fine-tuning, batch 4, seq 4096
    (bench/cases/published_extra.yaml, case fms-mistral7b-full-1gpu-b4): torch peak allocated
    72,971,724,288 B, nvidia-smi memory.used peak 77,705 MiB."""
    cases = yaml.safe_load((ROOT / "bench" / "cases" / "published_extra.yaml").read_text())["cases"]
    case = next(c for c in cases if c["name"] == "fms-mistral7b-full-1gpu-b4")
    t = case["plan"]["training"]
    pins = ("method", "zero_stage", "offload_optimizer", "offload_param", "gradient_checkpointing", "micro_batch_size")
    return {"case": case["name"], "status": "ok", "plan": case["plan"], "strategy_key": "full/z0/gc/mb4",
            "strategy": {k: t[k] for k in pins}, "max_memory_allocated": 72_971_724_288,
            "nvml_used_bytes": 77_705 * MiB, "device_name": "A100-SXM4-80GB", "source": "published:fms-acceleration"}


# A child that writes N records, printing each id only after its transaction committed.
WRITER = r"""
import json, os, sys, time
from memfit.engine.store.open import open_store
from memfit.engine.store.record import MeasurementRecord
url, tag, n, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
base = json.loads(os.environ["MEMFIT_TEST_RECORD"])
store = open_store(url)
while time.time() < start:
    time.sleep(0.005)
for i in range(n):
    rec = MeasurementRecord.model_validate({**base, "case": f"{tag}-{i}", "host_rss_bytes": 1000 + i})
    rid, new = store.add(rec)
    print(rid, flush=True)
"""


def writer(url: str, tag: str, n: int, start: float) -> subprocess.Popen:
    import json

    record = json.dumps({**published_record(), "model_key": "test"})
    return subprocess.Popen([sys.executable, "-c", WRITER, url, tag, str(n), str(start)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "MEMFIT_TEST_RECORD": record})
