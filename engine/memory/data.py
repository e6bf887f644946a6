"""Host memory of the data pipeline per node: what the OOM killer counts, and what it does not.

The OOM killer (and a cgroup's limit) counts a process's private pages and its shared-memory pages;
the page cache of memory-mapped files is shared across processes and reclaimable, so it is not
charged as private RSS. The terms, with their sources (docs/explanation/memory-model.md):

- `arrow_mmap` (HF datasets' default: `load_dataset` / `map` / `load_from_disk` read Arrow cache files
  through `pa.memory_map`, datasets/table.py MemoryMappedTable): the data set lives in the page cache,
  once per node whatever the ranks and workers; reclaimable, so no private bytes.
- `in_memory` (`keep_in_memory=True`, datasets' InMemoryTable, or tokenised arrays/tensors): a private
  copy per rank; forked dataloader workers read the buffers without writing, so they stay shared.
- `python_objects` (a list of dicts of Python ints, e.g. a custom torch Dataset): a private copy per
  rank, about 5x the token bytes (a small int is a 32-byte PyLong plus an 8-byte list slot, 40 B for an
  8-byte id; bench/dataloader_rss.py measured 324 MiB for 64 MiB of int64 ids), and each forked
  worker's reads write reference counts, so the pages it touches become private: over shuffled epochs
  a whole copy per worker (torch/utils/data docs, "Multi-process data loading"; bench/dataloader_rss.py:
  worker USS 0.44x the data set after one epoch with 2 workers, 0.76x after three shuffled epochs).
- `streaming` (an IterableDataset): no copy of the data set.
- dataloader workers: each forked worker's own private pages (11.3 MiB measured here per worker over
  an array data set, bench/dataloader_rss.py), plus the batches in flight: the iterator keeps
  `prefetch_factor x workers` batches outstanding (torch/utils/data/dataloader.py
  _MultiProcessingDataLoaderIter._reset: `for _ in range(self._prefetch_factor * self._num_workers)`,
  prefetch_factor 2 by default), each in a shared-memory segment and, with pin_memory, a page-locked copy.
- tokenisation workers (`preprocessing_workers`, datasets `map(num_proc=N)`): each processes
  `writer_batch_size = 1000` examples at a time (datasets/arrow_dataset.py Dataset.map) as Python
  objects; an in-memory data set is also split into N shards pickled to the workers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..core.units import GIB

if TYPE_CHECKING:
    from ..plan.schema import Plan

# Bytes per token id held as Python objects vs as int64: (32-byte small-int PyLong + 8-byte list slot) / 8.
PYTHON_OBJECT_INFLATION = (32 + 8) / 8
# A forked DataLoader worker's own private pages over an array data set (bench/dataloader_rss.py,
# torch 2.13 CPU, 2 workers: 11.2-11.3 MiB each).
WORKER_PRIVATE_BYTES = 11.3 * 2**20
# One collated causal-LM batch: input_ids, attention_mask and labels as int64 per token (transformers
# DataCollatorForSeq2Seq / DataCollatorForLanguageModeling return int64 tensors).
BATCH_BYTES_PER_TOKEN = 3 * 8
# datasets Dataset.map processes and writes this many examples at a time (batch_size, writer_batch_size).
MAP_BATCH_EXAMPLES = 1000


@dataclass(frozen=True)
class DataHostTerms:
    """Bytes per node of the data pipeline, by term."""

    format: str             # the resolved data.format
    dataset_private: float  # private copies of the data set (ranks, and workers for python_objects)
    workers: float          # dataloader workers' own pages plus the batches in flight (shm + pinned)
    preprocessing: float    # tokenisation workers during map(num_proc=...), a phase of its own
    page_cache: float       # memory-mapped Arrow files in the page cache: shared, reclaimable, not counted

    @property
    def training(self) -> float:
        """What the OOM killer counts during training."""
        return self.dataset_private + self.workers


def resolved_format(plan: Plan) -> str:
    """data.format with `auto` resolved: streaming when data.streaming is true, else in_memory (a
    private copy per rank, the model before data.format existed)."""
    d = plan.data
    if d.format != "auto":
        return d.format
    return "streaming" if d.streaming is True else "in_memory"


def data_host_terms(plan: Plan, micro_batch_size: int) -> DataHostTerms:
    """The data pipeline's host bytes per node for a plan and micro-batch size.

    Args:
        plan: the checked Plan (data:, hardware.gpus_per_node, training.seq_len).
        micro_batch_size: sequences per batch each rank's dataloader collates.
    Returns:
        DataHostTerms in bytes per node.
    """
    d, ranks = plan.data, plan.hardware.gpus_per_node
    fmt = resolved_format(plan)
    size = d.dataset_gib * GIB
    workers = d.dataloader_workers
    if fmt == "in_memory":
        private = size * ranks
    elif fmt == "python_objects":
        private = size * PYTHON_OBJECT_INFLATION * ranks * (1 + workers)
    else:
        private = 0.0
    batch = micro_batch_size * plan.training.seq_len * BATCH_BYTES_PER_TOKEN
    in_flight = (d.effective_prefetch_factor * workers if workers else 1) * batch
    loader = ranks * (workers * WORKER_PRIVATE_BYTES + in_flight * (2 if d.pin_memory else 1))
    procs = d.preprocessing_workers
    map_batch = MAP_BATCH_EXAMPLES * plan.training.seq_len * 8 * PYTHON_OBJECT_INFLATION
    shards = size if fmt in ("in_memory", "python_objects") else 0.0
    # num_proc=1 maps in the main process, inside its baseline; streaming maps lazily, batch by batch.
    preprocessing = procs * (WORKER_PRIVATE_BYTES + map_batch) + shards if procs > 1 and fmt != "streaming" else 0.0
    return DataHostTerms(format=fmt, dataset_private=private, workers=loader, preprocessing=preprocessing,
                         page_cache=size if fmt == "arrow_mmap" else 0.0)
