"""The data pipeline's host terms (engine/memory/data.py) from first principles, the plan keys that
drive them, the data-pipeline rules over them, and a real torch DataLoader measured on CPU."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from memfit.engine.core.errors import PlanError
from memfit.engine.core.units import GIB
from memfit.engine.memory.data import WORKER_PRIVATE_BYTES, data_host_terms
from memfit.engine.memory.estimate import estimate_memory
from memfit.engine.model.spec import resolve_model
from memfit.engine.plan.load import plan_from_dict
from memfit.engine.plan.strategy import Strategy

ROOT = Path(__file__).resolve().parents[1]


def _plan(ranks: int = 8, **data):
    return plan_from_dict({"model": "meta-llama/Llama-2-7b-hf",
                           "hardware": {"gpu_memory": 80, "gpus_per_node": ranks, "host_memory": 1024},
                           "training": {"seq_len": 2048}, "data": data}, "d.yaml")


def test_in_memory_is_one_private_copy_per_rank():
    t = data_host_terms(_plan(dataset_size=2.0, format="in_memory", dataloader_workers=0), 4)
    assert t.dataset_private == 2 * GIB * 8
    assert t.page_cache == 0.0


def test_arrow_mmap_is_page_cache_shared_by_the_node():
    t = data_host_terms(_plan(dataset_size=2.0, format="arrow_mmap", dataloader_workers=4), 4)
    assert t.dataset_private == 0.0
    assert t.page_cache == 2 * GIB  # once per node, whatever the ranks and workers


def test_python_objects_are_copied_by_every_worker():
    # 8 ranks x (1 + 2 workers) copies, each 40 bytes per 8-byte token id (PyLong 32 + list slot 8).
    t = data_host_terms(_plan(dataset_size=1.0, format="python_objects", dataloader_workers=2), 1)
    assert t.dataset_private == 1 * GIB * 5 * 8 * 3


def test_batches_in_flight_are_prefetch_times_workers():
    # 8 ranks x (3 workers x own pages + 2 prefetch x 3 workers batches x (shm + pinned copy));
    # one batch: 4 sequences x 2048 tokens x 3 int64 tensors (input_ids, attention_mask, labels).
    batch = 4 * 2048 * 3 * 8
    t = data_host_terms(_plan(format="streaming", dataloader_workers=3), 4)
    assert t.workers == 8 * (3 * WORKER_PRIVATE_BYTES + 2 * 3 * batch * 2)
    t = data_host_terms(_plan(format="streaming", dataloader_workers=3, prefetch_factor=5, pin_memory=False), 4)
    assert t.workers == 8 * (3 * WORKER_PRIVATE_BYTES + 5 * 3 * batch)


def test_defaults_keep_a_private_copy_per_rank_and_streaming_drops_it():
    assert data_host_terms(_plan(dataset_size=3.0), 1).dataset_private == 3 * GIB * 8
    assert data_host_terms(_plan(dataset_size=3.0, streaming=True), 1).dataset_private == 0.0


def test_tokenisation_workers_are_their_own_phase():
    plan = _plan(ranks=1, dataset_size=40.0, format="in_memory", preprocessing_workers=16, dataloader_workers=0)
    spec = resolve_model(plan.model)
    e = estimate_memory(plan, spec, Strategy(method="lora", zero_stage=0, gradient_checkpointing=True))
    t = data_host_terms(plan, 1)
    # 16 processes x (own pages + 1000 examples x 2048 tokens as Python ints) + the pickled shards
    assert t.preprocessing == 16 * (WORKER_PRIVATE_BYTES + 1000 * 2048 * 40) + 40 * GIB
    assert e.host_peak_phase == "data preprocessing"
    assert e.host.preprocessing_gib == pytest.approx(t.preprocessing / GIB)


def test_contradicting_data_keys_name_the_key():
    with pytest.raises(PlanError, match=r"d.yaml: data: streaming: true contradicts format: arrow_mmap"):
        _plan(streaming=True, format="arrow_mmap")
    with pytest.raises(PlanError, match=r"prefetch_factor needs dataloader_workers > 0"):
        _plan(prefetch_factor=4, dataloader_workers=0)


def test_rules_advise_memory_mapping_over_private_copies():
    from memfit.engine.advice.advise import advise

    plan = _plan(dataset_size=40.0, format="in_memory", dataloader_workers=2)
    fired = {x.rule for x in advise(plan).best.explanation}
    assert "memory-map-large-in-memory-dataset" in fired
    mapped = {x.rule for x in advise(_plan(dataset_size=40.0, format="arrow_mmap")).best.explanation}
    assert "memory-map-large-in-memory-dataset" not in mapped and "stream-large-dataset" not in mapped


@pytest.mark.slow
def test_forked_workers_copy_python_objects_but_share_arrays():
    """A real torch DataLoader with 2 forked workers over one epoch (bench/dataloader_rss.py), in a fresh
    interpreter: a long-lived test process reuses freed pages, which hides the data set's RSS growth."""
    pytest.importorskip("torch")
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "dataloader_rss.py"), "--mib", "32", "--workers", "2"],
                          capture_output=True, text=True, timeout=300, check=True)
    objects, array = (json.loads(line) for line in done.stdout.splitlines())
    # Each worker reads half the samples in one unshuffled epoch: their pages turn private.
    assert min(objects["worker_uss_mib"]) > 0.3 * objects["dataset_mib"]
    # An array's pages stay shared: a worker's private memory is its own small working set.
    assert max(array["worker_uss_mib"]) < 4 * WORKER_PRIVATE_BYTES / 2**20
    # Python objects hold ~5x the bytes of the int64 ids (40 B vs 8 B per token).
    assert 4.0 < objects["dataset_mib"] / array["dataset_mib"] < 6.0
