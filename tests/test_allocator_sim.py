"""bench/allocator_sim.py's model of the CUDA caching allocator, and the allocation events it replays.

Expected values are worked by hand from the allocator's rules in c10/cuda/CUDACachingAllocator.cpp
(round_size, get_allocation_size, get_free_block, should_split, release_cached_blocks), each named
beside its case; the trace's long-lived bytes from first principles (parameter count x dtype size).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from allocator_sim import (MB, CachingAllocator, ExpandableAllocator, OutOfMemory, lengths,  # noqa: E402
                           needed_capacity, replay, requested_peaks)

from memfit.engine.probe.events import Event  # noqa: E402


def _events(*ops: tuple[str, int, int]) -> list[Event]:
    return [Event(kind, serial, nbytes, 0) for kind, serial, nbytes in ops]


def test_small_requests_share_a_2_mib_segment():
    a = CachingAllocator()
    x = a.malloc(100)   # round_size: 512 B; small pool; get_allocation_size: a 2 MiB segment
    y = a.malloc(100)   # the 2 MiB - 512 B remainder was split off (>= kMinBlockSize) and serves it
    assert (a.reserved, a.allocated, a.segments) == (2 * MB, 1024, 1)
    assert (x.segment, x.offset, y.segment, y.offset) == (1, 0, 1, 512)


def test_mid_sized_requests_get_a_20_mib_segment_and_its_remainder():
    a = CachingAllocator()
    a.malloc(5 * MB)    # 1 MiB < 5 MiB < 10 MiB: a kLargeBuffer (20 MiB) segment, 15 MiB split off
    a.malloc(5 * MB)    # served from the 15 MiB remainder
    assert (a.reserved, a.segments) == (20 * MB, 1)


def test_large_requests_round_to_2_mib_and_split_only_above_1_mib():
    a = CachingAllocator()
    a.malloc(30 * MB + 1)  # round_size: 30 MiB + 512 B; segment rounded up to 32 MiB
    assert a.reserved == 32 * MB
    # remainder 2 MiB - 512 B > 1 MiB (kSmallSize): split, and it serves a 1.5 MiB request
    a.malloc(3 * MB // 2)
    assert (a.reserved, a.segments) == (32 * MB, 1)
    b = CachingAllocator()
    b.malloc(31 * MB)      # segment 32 MiB, remainder exactly 1 MiB: not > kSmallSize, not split
    b.malloc(MB // 2 + MB)  # so a 1.5 MiB request needs a new (20 MiB) segment
    assert (b.reserved, b.segments) == (52 * MB, 2)


def test_best_fit_takes_the_smallest_cached_block_that_fits():
    a = CachingAllocator()
    big, mid = a.malloc(40 * MB), a.malloc(24 * MB)
    a.free(big)
    a.free(mid)
    c = a.malloc(22 * MB)  # the 24 MiB block, not the 40 MiB one; 2 MiB remainder split off
    assert c.segment == mid.segment and a.reserved == 64 * MB


def test_freed_neighbours_merge_and_whole_free_segments_are_released():
    a = CachingAllocator()
    x, y = a.malloc(5 * MB), a.malloc(5 * MB)  # one 20 MiB segment: x, y, 10 MiB free
    a.free(x)
    a.free(y)                                  # x + y + rest merge back into one 20 MiB block
    a.release_cached()
    assert (a.reserved, a.allocated) == (0, 0)


def test_a_split_cached_segment_cannot_be_released_so_memory_runs_out_before_the_requests_do():
    # The case of the allocator's Note [Expandable Segments]: X (30 MiB) is freed, Y (20 MiB) reuses its
    # segment and leaves a 10 MiB sliver, and Z (32 MiB) fits no cached block. In use at most
    # 20 + 32 = 52 MiB, but the split segment cannot be returned while Y lives: 30 + 32 = 62 MiB.
    ev = _events(("alloc", 1, 30 * MB), ("free", 1, 30 * MB), ("alloc", 2, 20 * MB), ("alloc", 3, 32 * MB))
    assert requested_peaks(ev) == (52 * MB, 30 * MB)  # Y and Z are never freed: long-lived; X short-lived
    assert needed_capacity(ev) == 62 * MB
    with pytest.raises(OutOfMemory):
        replay(ev, 60 * MB)
    # Without Y's reuse (Y freed first), X's segment is released for Z: 32 MiB is enough.
    ev2 = _events(("alloc", 1, 30 * MB), ("free", 1, 30 * MB), ("alloc", 3, 32 * MB))
    assert needed_capacity(ev2) == 32 * MB


def test_expandable_segments_map_pages_and_reuse_the_tail():
    # Note [Expandable Segments]: one segment per pool grows by 20 MiB pages (large pool), 2 MiB (small).
    a = ExpandableAllocator()
    a.malloc(5 * MB)
    a.malloc(5 * MB)   # the remainder of the first page (split: >= 512 B remain)
    assert a.reserved == 20 * MB
    a.malloc(100)      # the small pool maps its own 2 MiB page
    assert a.reserved == 22 * MB
    # The sliver case above: Y (20 MiB) reuses X's range, Z (32 MiB) grows the free 10 MiB tail to
    # [20, 52) MiB: pages 0-2 mapped, 60 MiB. Under a 40 MiB cap the unused page 1 is unmapped, but
    # pages 1 and 2 still need 40 MiB next to Y's page: out of memory. So 60 MiB, against 62 MiB of
    # segments without expandable segments (the 10 MiB sliver is reused instead of stranded).
    ev = _events(("alloc", 1, 30 * MB), ("free", 1, 30 * MB), ("alloc", 2, 20 * MB), ("alloc", 3, 32 * MB))
    assert needed_capacity(ev, expandable=True) == 60 * MB
    with pytest.raises(OutOfMemory):
        replay(ev, 40 * MB, expandable=True)


def test_varying_lengths_end_with_the_longest_batch():
    assert lengths("fixed", 2048, 3) == [2048] * 3
    v = lengths("varying", 2048, 6)
    assert v[-1] == 2048 and all(256 <= n <= 2048 for n in v) and len(set(v)) > 1


@pytest.mark.slow  # ~3 s: transformers on fake tensors
def test_trace_events_are_paired_and_long_lived_bytes_are_the_weights_and_adamw_states():
    from memfit.engine.probe.events import allocation_events

    config = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 256, "tie_word_embeddings": False}
    ev = allocation_events(config, [(2, 32), (2, 16)], layers=2, method="full", gradient_checkpointing=False)
    sizes = {e.serial: e.nbytes for e in ev if e.kind == "alloc"}
    assert all(sizes[e.serial] == e.nbytes for e in ev if e.kind == "free")  # every free matches its alloc
    freed = {e.serial for e in ev if e.kind == "free"}
    long_lived = sum(n for s, n in sizes.items() if s not in freed)
    # First principles: bf16 weights (2 B/param) and AdamW's two moments in the weights' dtype (4 B/param),
    # plus one fp32 `step` scalar per parameter tensor (torch/optim/adamw.py _init_group).
    # per layer q, k, v, o 4 x 64 x 64, MLP 3 x 64 x 128, two norms 2 x 64: 41088; final norm 64;
    # embed_tokens and lm_head 2 x 256 x 64
    params = 2 * 41088 + 64 + 2 * 256 * 64
    tensors = 2 * 9 + 1 + 2  # per layer: 7 Linear + 2 RMSNorm weights; final norm; embed_tokens, lm_head
    rotary = 2 * (16 // 2) * 4  # LlamaRotaryEmbedding's inv_freq and original_inv_freq: head_dim / 2 fp32 each
    assert long_lived == 6 * params + 4 * tensors + rotary
    assert {e.step for e in ev} == {-1, 0, 1}
