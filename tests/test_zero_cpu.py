"""memfit's ZeRO terms against the buffers real DeepSpeed allocates (bench/zero_cpu.py), on the
smallest model (2-layer Llama, 9.7M parameters), CPU/gloo, one and two ranks.

Tolerance 1 %: DeepSpeed pads each rank's partition to an alignment of a few elements
(zero/stage_1_and_2.py nccl_start_alignment_factor, partition_parameters.py _partition_param's
aligned numel) and the model's tensors are not all divisible by the world size; on 9.7M parameters
that is far below 1 %. A term memfit got wrong by mechanism (the first version's fp32 buffer held
through forward/backward, a missing second bucket, a gathered window of 4*L) is off by 2x or more.
The reuse-window case and reduce_scatter_coalesced's bucket copy are upper bounds, checked as such;
z3-dsdefaults-w2 runs DeepSpeed's own 5e8 bucket and 1e5 persistence threshold, under which the
small model's attention weights (256 x 256) stay persistent; z1-fp32accum-w2 sets
data_types.grad_accum_dtype fp32, under which DeepSpeed runs BF16_Optimizer (its whole-model fp32
gradient flat is compared). `step_transient` is what ZeRO-1/2's step allocates before its inner
optimizer runs, live at once: on one rank the flat 16-bit gradient copy and its fp32 conversion
(2 + 4 B x 9.7M), on two the grad norm's fp64 copy of the embedding's gradient (8 B x 16000 x 256),
larger than the 6 B x 4.85M of the half partition.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "zero_cpu.py"


def _bench():
    # Imported by name from bench/ so that the spawned ranks can import it too (multiprocessing's
    # spawn start method hands the children the parent's sys.path).
    if str(BENCH.parent) not in sys.path:
        sys.path.insert(0, str(BENCH.parent))
    return importlib.import_module("zero_cpu")


@pytest.mark.slow
@pytest.mark.parametrize("run", ["z2-w1", "z2-w2", "z3-w2", "z3-window-w2", "z3-dsdefaults-w2", "z1-fp32accum-w2"])
def test_memfit_terms_match_deepspeeds_buffers(run):
    row = _bench().run_case(run, "small")
    assert row["losses"][-1] == row["losses"][-1]  # a real step ran (not NaN)
    for term, got in row["measured"].items():
        want = row["memfit"].get(term)
        if want is None:
            continue
        if term == "gathered_params" and run == "z3-window-w2":
            # An upper bound by mechanism: kept for reuse <= max_reuse_distance (1e6 here), plus the
            # module in use; never below what DeepSpeed gathered, at most the window above it.
            assert got <= want <= got + 1_000_000 * 2, f"{run}: {term}"
            continue
        if term == "grad_partition" and run == "z2-w2":
            # grads_in_partition is sized from the whole parameters that fall in the rank's
            # partition (copy_grads_in_partition sums their numel), so a parameter straddling the
            # rank boundary counts in full: +1.3 % here (65,408 bf16 elements over 4.89M; docs/accuracy.md
            # "padded to whole parameters"), memfit's P/N below.
            assert want <= got <= want * 1.02, f"{run}: {term}"
            continue
        if term == "reduce_scatter_copy":
            # An upper bound by mechanism: memfit counts a full bucket; stage3.py reduces a bucket
            # when the next gradient would overflow it, so DeepSpeed's copy is short of the bucket by
            # less than the largest gradient that goes through it (the MLP's 256 x 688 here).
            assert got <= want <= got + 256 * 688 * 2, f"{run}: {term}"
            continue
        assert want == pytest.approx(got, rel=0.01, abs=64 * 1024), f"{run}: {term}"


@pytest.mark.slow
def test_zero1_step_allocates_no_more_than_zero2_with_or_without_overlap_comm():
    # engine.backward reduces ZeRO-1's gradients before it returns and points each param.grad at its
    # copy in the ipg bucket, so the optimizer step holds no full 16-bit gradients, whether the hook
    # does it during backward (overlap_comm, memfit's config) or reduce_gradients after it (DeepSpeed's
    # default). Traced bytes allocated in the last step's optimizer phase: identical for the three
    # runs; full gradients would add 2 B x 9.7M = 19.5 MB to ZeRO-1's ~62 MB. memfit's side (no full
    # gradients at the step; what is live at the end of backward) is tests/test_zero_runtime.py.
    rows = {run: _bench().run_case(run, "small") for run in ("z1-w2", "z1-nooverlap-w2", "z2-w2")}
    step = {run: row["live_by_phase"]["optimizer step"] for run, row in rows.items()}
    assert step["z1-w2"] == pytest.approx(step["z2-w2"], rel=0.01)
    assert step["z1-nooverlap-w2"] == pytest.approx(step["z2-w2"], rel=0.01)
    assert 2 * 9_700_000 > 0.2 * step["z2-w2"]  # the 1 % tolerance is far below the 19.5 MB it must see
