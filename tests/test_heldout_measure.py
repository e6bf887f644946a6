"""bench/heldout.py's measure-matched view: which of memfit's figures a published number is compared
with, from the case's own `measure` text (texts as the held-out files write them)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from heldout import matched, measure_kind  # noqa: E402


@pytest.mark.parametrize("text, kind", [
    ("'Peak memory' column: litgpt prints torch.cuda.max_memory_allocated() / 1e9 as 'GB'", "allocated"),
    ("torchtune peak_memory_active (column header 'Peak Memory Active (GiB)')", "allocated"),
    ("swift's logged 'memory': torch.cuda.max_memory_reserved() / 2^30 summed over visible devices", "reserved"),
    ("peak reserved, llama-recipes MemoryTrace: byte2gb(x) = int(x / 2**30)", "reserved"),
    # the source names torch counters but not which one: the whole device
    ("torchtune utils.get_memory_stats: the table does not say whether peak active, allocated or reserved", "device"),
    ("per-GPU GPU memory in the script's header comment ('GiB'); how it was read is not stated (swift logs "
     "torch.cuda.max_memory_reserved)", "device"),
    ("user report, nvidia-smi-style per-GPU figure ('G')", "device"),
    ("", "device"),
])
def test_measure_kind_reads_the_statistic_the_source_names(text, kind):
    assert measure_kind(text) == kind


def test_matched_takes_memfits_figure_of_that_kind():
    row = {"measure": "peak allocated (max_memory_allocated / 1e9)", "memfit_allocated": 10.0, "memfit_reserved": 11.0,
           "tools": {"memfit": (12.25, None)}}
    assert matched(row) == 10.0
    assert matched({**row, "measure": "torch.cuda.max_memory_reserved, rank-local"}) == 11.0
    assert matched({**row, "measure": "nvidia-smi"}) == 12.25


def test_selective_checkpointing_tag_becomes_the_plan_key():
    # bench/heldout.py as_plan_case: torchtitan's per-op selective AC, tagged by the collectors of sets
    # 9, 22 and 23, is training.checkpoint_policy selective_op where the plan checkpoints at all.
    from heldout import as_plan_case

    case = {"techniques": ["selective_activation_checkpointing"],
            "plan": {"training": {"gradient_checkpointing": True}}}
    assert as_plan_case(case)["plan"]["training"]["checkpoint_policy"] == "selective_op"
    case["plan"]["training"]["gradient_checkpointing"] = False
    assert "checkpoint_policy" not in as_plan_case(case)["plan"]["training"]


def test_torch_compile_is_training_compile():
    # Sets 22 and 25 name torch.compile `torch_compile`, sets 1 and 20 `compile`: the same technique,
    # which the plan says as training.compile since freeze-s23 (engine/memory/compiled.py), so such a
    # run is scored in the headline and joins the band.
    from heldout import as_plan_case, not_modelled

    for tag in ("torch_compile", "compile"):
        case = {"techniques": [tag, "fsdp2"], "plan": {"training": {}}}
        assert not_modelled(case) == []
        assert as_plan_case(case)["plan"]["training"]["compile"] is True
    assert "compile" not in as_plan_case({"techniques": ["fsdp2"], "plan": {"training": {}}})["plan"]["training"]
