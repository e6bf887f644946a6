"""Reserved over allocated memory without a GPU: training steps' allocation events replayed through a
model of PyTorch's CUDA caching allocator.

    .venv/bin/python bench/allocator_sim.py [--layers 8] [--steps 32] [--seeds 3] [--json OUT]   # ~30 min on 2 cores

memfit's allocator term (engine/memory/allocator.py) is a rate on short-lived bytes: 10 % for fixed
shapes (fitted in-sample) and, for batches padded to their longest sequence, what was an assumed
20 % until this bench measured the difference between the two (and expandable segments' rate):

1. engine/probe/events.py traces the allocation events (size and lifetime of every tensor storage)
   of real training steps of a transformers model on fake tensors, at fixed shapes (every step at
   seq_len) and at varying shapes (each step's length drawn uniformly from seq_len/8 to seq_len with a
   fixed seed, as batches padded to their longest sample vary, the last step at seq_len).
2. `CachingAllocator` replays them with the policy of c10/cuda/CUDACachingAllocator.cpp
   (DeviceCachingAllocator): sizes rounded up to 512 B (round_size, kMinBlockSize); requests up to
   1 MiB (kSmallSize) from the small pool, whose segments are 2 MiB (kSmallBuffer); larger ones from
   the large pool, in 20 MiB segments (kLargeBuffer) below 10 MiB (kMinLargeAlloc), else a segment of
   the size rounded up to 2 MiB (kRoundLarge; get_allocation_size); the smallest cached free block
   that fits is taken (get_free_block: best fit by size, then address) and split when the remainder
   is at least 512 B in the small pool or more than 1 MiB in the large one (should_split), the
   request at the block's start; a freed block merges with free neighbours of its segment
   (free_block, try_merge_blocks); when a new segment would pass the capacity, every cached segment
   with no block in use is released first (release_cached_blocks), and only then is it out of
   memory. One stream; max_split_size unlimited and no expandable segments (the defaults).
3. The smallest capacity (in 2 MiB steps) at which the replay does not run out of memory is the
   memory the run needs; over the peak of requested bytes it is what the allocator adds. The rate
   divides that by the peak of short-lived bytes (everything but storages that live through the
   whole trace: weights and optimizer states).

What carries to a GPU: the events are the ops' own (sizes and lifetimes do not depend on the device),
and the policy is the allocator's. What does not: other streams (NCCL, FSDP's all-gather stream),
the CUDA context, cuBLAS workspaces, and kernels' internal scratch (flash attention's), which fake
tensors do not allocate.
"""
from __future__ import annotations

import argparse
import bisect
import json
import random
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

KB, MB = 1024, 1024 * 1024
MIN_BLOCK = 512            # kMinBlockSize
SMALL_SIZE = 1 * MB        # kSmallSize: largest small-pool request
SMALL_BUFFER = 2 * MB      # kSmallBuffer: small-pool segment
MIN_LARGE_ALLOC = 10 * MB  # kMinLargeAlloc
LARGE_BUFFER = 20 * MB     # kLargeBuffer
ROUND_LARGE = 2 * MB       # kRoundLarge


class OutOfMemory(Exception):
    """A segment was needed beyond the capacity, after the cached free segments were released."""


def round_size(n: int) -> int:
    return MIN_BLOCK if n < MIN_BLOCK else MIN_BLOCK * -(-n // MIN_BLOCK)


def allocation_size(size: int) -> int:
    """The segment cudaMalloc is asked for when no cached block fits (get_allocation_size)."""
    if size <= SMALL_SIZE:
        return SMALL_BUFFER
    if size < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return ROUND_LARGE * -(-size // ROUND_LARGE)


@dataclass(eq=False)
class Block:
    segment: int
    offset: int
    size: int
    small: bool
    allocated: bool = False
    prev: "Block | None" = None
    next: "Block | None" = None

    def key(self) -> tuple[int, int, int]:
        return (self.size, self.segment, self.offset)


@dataclass
class CachingAllocator:
    """The block policy of DeviceCachingAllocator on one stream (see the module docstring)."""

    capacity: float = float("inf")
    reserved: int = 0
    peak_reserved: int = 0
    allocated: int = 0
    segments: int = 0
    _free: dict[bool, list[tuple[int, int, int]]] = field(default_factory=lambda: {True: [], False: []})
    _by_key: dict[tuple[int, int, int], Block] = field(default_factory=dict)
    _segment_sizes: dict[int, int] = field(default_factory=dict)

    def _insert(self, b: Block) -> None:
        bisect.insort(self._free[b.small], b.key())
        self._by_key[b.key()] = b

    def _remove(self, b: Block) -> None:
        pool = self._free[b.small]
        i = bisect.bisect_left(pool, b.key())
        del pool[i]
        del self._by_key[b.key()]

    def _new_segment(self, size: int, small: bool) -> Block:
        alloc = allocation_size(size)
        if self.reserved + alloc > self.capacity:
            self.release_cached()
            if self.reserved + alloc > self.capacity:
                raise OutOfMemory(f"{alloc} B segment beyond {self.capacity:.0f} B")
        self.segments += 1
        self._segment_sizes[self.segments] = alloc
        self.reserved += alloc
        self.peak_reserved = max(self.peak_reserved, self.reserved)
        return Block(self.segments, 0, alloc, small)

    def release_cached(self) -> None:
        """Return every cached segment that holds no block in use (release_cached_blocks)."""
        for small in (True, False):
            for key in [k for k in self._free[small] if self._by_key[k].prev is None and self._by_key[k].next is None]:
                b = self._by_key[key]
                self._remove(b)
                self.reserved -= self._segment_sizes.pop(b.segment)

    def malloc(self, nbytes: int) -> Block:
        size = round_size(nbytes)
        small = size <= SMALL_SIZE
        pool = self._free[small]
        i = bisect.bisect_left(pool, (size, -1, -1))
        if i < len(pool):
            block = self._by_key[pool[i]]
            self._remove(block)
        else:
            block = self._new_segment(size, small)
        remaining = block.size - size
        if (remaining >= MIN_BLOCK) if small else (remaining > SMALL_SIZE):
            rest = Block(block.segment, block.offset + size, remaining, small, prev=block, next=block.next)
            if block.next is not None:
                block.next.prev = rest
            block.next, block.size = rest, size
            self._insert(rest)
        block.allocated = True
        self.allocated += block.size
        return block

    def free(self, block: Block) -> None:
        block.allocated = False
        self.allocated -= block.size
        for neighbour in (block.prev, block.next):
            if neighbour is not None and not neighbour.allocated:
                self._remove(neighbour)
                if neighbour is block.prev:
                    block.offset, block.prev = neighbour.offset, neighbour.prev
                    if neighbour.prev is not None:
                        neighbour.prev.next = block
                else:
                    block.next = neighbour.next
                    if neighbour.next is not None:
                        neighbour.next.prev = block
                block.size += neighbour.size
        self._insert(block)


@dataclass(eq=False)
class Range:
    """A block of an expandable segment: [offset, offset + size), in use or free."""

    offset: int
    size: int
    used: bool = False


@dataclass
class ExpandableAllocator:
    """expandable_segments:True (Note [Expandable Segments] in CUDACachingAllocator.cpp): one segment
    per pool whose address space grows by mapping pages (2 MiB in the small pool, 20 MiB in the large);
    the smallest free mapped block that fits is taken and split when 512 B or more remain
    (should_split with expandable segments); when none fits, pages are mapped at the lowest address
    where the request fits; when that would pass the capacity, every page with no block in use is
    unmapped (release_cached_blocks) and the mapping is retried."""

    capacity: float = float("inf")
    peak_reserved: int = 0
    _ranges: dict[bool, list[Range]] = field(default_factory=lambda: {True: [], False: []})
    _mapped: dict[bool, set[int]] = field(default_factory=lambda: {True: set(), False: set()})

    @property
    def reserved(self) -> int:
        return len(self._mapped[True]) * SMALL_BUFFER + len(self._mapped[False]) * LARGE_BUFFER

    @staticmethod
    def _pages(r: Range, page: int) -> range:
        return range(r.offset // page, -(-(r.offset + r.size) // page))

    def _fits_mapped(self, r: Range, size: int, small: bool) -> bool:
        page, mapped = SMALL_BUFFER if small else LARGE_BUFFER, self._mapped[small]
        return all(p in mapped for p in self._pages(Range(r.offset, size), page))

    def malloc(self, nbytes: int) -> Range:
        size = round_size(nbytes)
        small = size <= SMALL_SIZE
        ranges, page = self._ranges[small], SMALL_BUFFER if small else LARGE_BUFFER
        free = [r for r in ranges if not r.used and r.size >= size]
        mapped = [r for r in free if self._fits_mapped(r, size, small)]
        if mapped:
            chosen = min(mapped, key=lambda r: (r.size, r.offset))
        else:
            if free:
                chosen = min(free, key=lambda r: r.offset)
            elif ranges and not ranges[-1].used:  # grow the free tail block to the request
                chosen = ranges[-1]
                chosen.size = size
            else:
                chosen = Range(ranges[-1].offset + ranges[-1].size if ranges else 0, size)
                ranges.append(chosen)
            need = [p for p in self._pages(Range(chosen.offset, size), page) if p not in self._mapped[small]]
            if self.reserved + len(need) * page > self.capacity:
                self.release_cached()
                need = [p for p in self._pages(Range(chosen.offset, size), page) if p not in self._mapped[small]]
                if self.reserved + len(need) * page > self.capacity:
                    raise OutOfMemory(f"{len(need)} page(s) beyond {self.capacity:.0f} B")
            self._mapped[small].update(need)
            self.peak_reserved = max(self.peak_reserved, self.reserved)
        if chosen.size - size >= MIN_BLOCK:
            i = ranges.index(chosen)
            ranges.insert(i + 1, Range(chosen.offset + size, chosen.size - size))
            chosen.size = size
        chosen.used = True
        return chosen

    def free(self, r: Range) -> None:
        r.used = False
        ranges = next(rs for rs in self._ranges.values() if any(x is r for x in rs))
        i = next(k for k, x in enumerate(ranges) if x is r)
        if i + 1 < len(ranges) and not ranges[i + 1].used:
            r.size += ranges.pop(i + 1).size
        if i > 0 and not ranges[i - 1].used:
            ranges[i - 1].size += ranges.pop(i).size

    def release_cached(self) -> None:
        for small in (True, False):
            page = SMALL_BUFFER if small else LARGE_BUFFER
            busy = {p for r in self._ranges[small] if r.used for p in self._pages(r, page)}
            self._mapped[small] &= busy


def replay(events, capacity: float = float("inf"), expandable: bool = False):
    """Serve every event in order; raises OutOfMemory when the capacity is too small."""
    a = ExpandableAllocator(capacity=capacity) if expandable else CachingAllocator(capacity=capacity)
    live: dict = {}
    for e in events:
        if e.kind == "alloc":
            if e.nbytes:
                live[e.serial] = a.malloc(e.nbytes)
        elif e.serial in live:
            a.free(live.pop(e.serial))
    return a


def requested_peaks(events) -> tuple[int, int]:
    """(peak of requested bytes, peak of short-lived requested bytes): storages never freed in the
    trace (weights, optimizer states) are long-lived, every other one short-lived."""
    freed = {e.serial for e in events if e.kind == "free"}
    live = short = peak = peak_short = 0
    for e in events:
        sign = 1 if e.kind == "alloc" else -1
        live += sign * e.nbytes
        if e.serial in freed:
            short += sign * e.nbytes
        peak, peak_short = max(peak, live), max(peak_short, short)
    return peak, peak_short


def needed_capacity(events, expandable: bool = False) -> int:
    """The smallest capacity, in 2 MiB steps, at which the replay does not run out of memory."""
    lo = -(-requested_peaks(events)[0] // ROUND_LARGE)                 # below the requests it cannot run
    hi = -(-replay(events, expandable=expandable).peak_reserved // ROUND_LARGE)  # unlimited: always runs
    while lo < hi:
        mid = (lo + hi) // 2
        try:
            replay(events, mid * ROUND_LARGE, expandable)
            hi = mid
        except OutOfMemory:
            lo = mid + 1
    return hi * ROUND_LARGE


def lengths(kind: str, seq_len: int, steps: int, seed: int = 0) -> list[int]:
    """Per-step sequence lengths: all seq_len (fixed), or uniform in [seq_len/8, seq_len] with the last
    step at seq_len (varying): the longest batch comes after the cache was shaped by shorter ones, and
    both traces have the same requested peak, so the difference is the allocator's."""
    if kind == "fixed":
        return [seq_len] * steps
    rng = random.Random(seed)
    return [rng.randint(seq_len // 8, seq_len) for _ in range(steps - 1)] + [seq_len]


def _rates(events, expandable: bool) -> dict:
    peak, short = requested_peaks(events)
    need = needed_capacity(events)
    row = {"requested_peak_gib": round(peak / 2**30, 3), "short_lived_peak_gib": round(short / 2**30, 3),
           "needed_gib": round(need / 2**30, 3), "rate": round((need - peak) / short, 4)}
    if expandable:  # the slow replay: only where it is reported (varying shapes)
        row["expandable_rate"] = round((needed_capacity(events, expandable=True) - peak) / short, 4)
    return row


def measure(config: dict, *, method: str, seq_len: int, micro_batch: int, checkpointing: bool, layers: int,
            steps: int, seeds: int = 1) -> list[dict]:
    """Allocator overhead at fixed shapes and at varying shapes (one row per seed of the lengths)."""
    from memfit.engine.probe.events import allocation_events

    def trace(kind: str, seed: int) -> dict:
        shapes = [(micro_batch, n) for n in lengths(kind, seq_len, steps, seed)]
        return _rates(allocation_events(config, shapes, layers=layers, method=method,
                                        gradient_checkpointing=checkpointing), expandable=kind == "varying")

    fixed = trace("fixed", 0)
    rows = []
    for seed in range(seeds):
        varying = trace("varying", seed)
        rows.append({"method": method, "seq_len": seq_len, "micro_batch": micro_batch, "checkpointing": checkpointing,
                     "seed": seed, "fixed": fixed, "varying": varying,
                     "varying_minus_fixed": round(varying["rate"] - fixed["rate"], 4),
                     "expandable_minus_fixed": round(varying["expandable_rate"] - fixed["rate"], 4)})
    return rows


def worst_draws(rows: list[dict]) -> dict[str, float]:
    """Per difference, the median over cases of its largest draw: a run's peak is its worst moment, so
    engine/memory/allocator.py adds these (not the median draw) to the fixed-shape rate."""
    cases = sorted({_case(r) for r in rows})
    return {key: statistics.median(max(r[key] for r in rows if _case(r) == c) for c in cases)
            for key in ("varying_minus_fixed", "expandable_minus_fixed")}


def _case(row: dict) -> tuple:
    return row["method"], row["seq_len"], row["micro_batch"], row["checkpointing"]


CASES = [  # (method, seq_len, micro_batch, checkpointing): single-GPU shapes of the held-out LoRA runs
    ("lora", 2048, 1, True), ("lora", 2048, 4, True), ("lora", 4096, 2, True), ("lora", 1024, 4, False),
    ("full", 2048, 1, True),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="meta-llama/Llama-2-7b-hf", help="catalogue id whose shapes are traced")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--seeds", type=int, default=3, help="draws of the varying lengths per case")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    from memfit.engine.model.spec import resolve_model

    config = dict(resolve_model(args.model).config)
    rows = [r for m, s, b, c in CASES for r in measure(config, method=m, seq_len=s, micro_batch=b, checkpointing=c,
                                                       layers=args.layers, steps=args.steps, seeds=args.seeds)]
    print(f"{args.model}, {args.layers} layers, {args.steps} steps, {args.seeds} draw(s) of varying lengths per case;"
          " rate = (needed - requested peak) / short-lived peak")
    print("method  seq   mb  ckpt   fixed: need GiB  rate   varying: need GiB  rate  expandable (varying): rate"
          "   varying - fixed  expandable - fixed")
    for r in rows:
        f, v = r["fixed"], r["varying"]
        print(f"{r['method']:6s} {r['seq_len']:5d} {r['micro_batch']:3d}  {str(r['checkpointing']):5s}"
              f"  {f['needed_gib']:14.2f}  {f['rate']:5.3f}  {v['needed_gib']:16.2f}  {v['rate']:5.3f}"
              f"  {v['expandable_rate']:25.3f}  {r['varying_minus_fixed']:+16.3f}  {r['expandable_minus_fixed']:+18.3f}")
    for key in ("varying_minus_fixed", "expandable_minus_fixed"):
        print(f"median {key.replace('_', ' ')}: {statistics.median(r[key] for r in rows):+.3f}")
    for key, value in worst_draws(rows).items():
        print(f"median over cases of the worst draw, {key.replace('_', ' ')}: {value:+.3f}")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "layers": args.layers, "steps": args.steps, "seeds": args.seeds, "rows": rows},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
