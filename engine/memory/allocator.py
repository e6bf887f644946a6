"""The caching allocator's reserved memory over what tensors occupy: a rate on short-lived allocations.

What ends a run is reserved memory (cudaMalloc'd segments), not allocated tensors. PyTorch's caching
allocator (c10/cuda/CUDACachingAllocator.cpp; constants in c10/core/AllocatorConfig.h) rounds every
block to 512 B (kMinBlockSize), serves requests up to 1 MiB from 2 MiB segments (kSmallBuffer), gives
requests of 1-10 MiB a 20 MiB segment (kLargeBuffer) and rounds larger ones to 2 MiB (kRoundLarge); a
cached free block is split to serve a smaller request, and segments are returned only by
empty_cache or when an allocation fails. Long-lived model states are allocated once and do not
fragment; activations and logits are freed and re-allocated every step:
- fixed shapes (packed sequences, or every batch padded to seq_len): each step repeats the same sizes
  in the same order, so the blocks of one step serve the next; the slack is rounding and split
  remainders. 10 %: the rate memfit's in-sample calibration cases were fitted with (in-sample:
  bench/cases/; the published fms-acceleration pairs there, fixed 4096-token samples, show reserved
  minus allocated of 6-25 % of the whole allocated peak, an upper side this rate does not exceed);
- variable shapes (each batch padded to its longest sequence): a block cached for a shorter batch
  cannot hold a longer batch's tensor, so new segments are reserved while split old ones stay partly
  in use and cannot be released. The fixed rate plus the difference bench/allocator_sim.py measures
  by replaying traced training steps (engine/probe/events.py) through a model of the allocator's
  block policy: over 5 Llama-2-7B shapes x 3 draws of lengths (8 layers, 32 steps, the longest batch
  last), the median over shapes of the worst draw is +14.2 points over fixed shapes (draws range
  from -9 to +22; the median draw is +10.3; with 8 steps the worst draw was +7.5). A run's peak is
  its worst moment, hence the worst draw; a run of thousands of steps can be worse still;
- expandable_segments:True (PYTORCH_CUDA_ALLOC_CONF): one segment per pool grows by mapping pages,
  so freed ranges serve any later size and unused pages are unmapped under pressure; the same
  simulation measures -4.5 points against fixed shapes (median over shapes of the worst draw, at
  varying shapes), which leaves page rounding.
"""
from __future__ import annotations

FIXED_SHAPES = 0.10      # in-sample calibration (see the module docstring)
VARIABLE_SHAPES = 0.242  # FIXED_SHAPES + 0.142, simulated (bench/allocator_sim.py, see above)
EXPANDABLE = 0.055       # FIXED_SHAPES - 0.045, simulated (bench/allocator_sim.py, see above)


def fragmentation(fixed_shapes: bool, expandable_segments: bool) -> float:
    """Reserved-but-unallocated bytes per byte of short-lived allocations (activations, logits).

    Args:
        fixed_shapes: every step allocates the same sizes (packing, or padding to max_length).
        expandable_segments: PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True.
    Returns:
        The rate (0.10 means reserved = allocated + 10 % of the activations and logits).
    """
    if expandable_segments:
        return EXPANDABLE
    return FIXED_SHAPES if fixed_shapes else VARIABLE_SHAPES
