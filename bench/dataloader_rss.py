"""Private memory of torch DataLoader workers over one epoch: a Python-object data set vs one array.

Real torch DataLoader, forked workers, on CPU. For each data-set layout it builds about `--mib` MiB of
tokenised samples in the parent, iterates one epoch with `--workers` workers and reads each worker's
unique set size (USS: pages private to that process, what fork's copy-on-write has duplicated) from
/proc via psutil just before the epoch ends. Python objects carry reference counts in their headers,
so reading a sample writes its page and the worker gets a private copy (the copy-on-write problem of
torch/utils/data docs, "Multi-process data loading"); a numpy array's elements carry none.

Run: .venv/bin/python bench/dataloader_rss.py --mib 64 --workers 2 --epochs 3
Prints one JSON line per layout: data set MiB, worker USS MiB each, and USS / data set.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

MIB = 2**20
TOKENS_PER_SAMPLE = 512


def _uss_mib(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_full_info().uss / MIB


class _Samples:
    """A map-style data set of `n` samples of TOKENS_PER_SAMPLE token ids, as Python lists or one array."""

    def __init__(self, n: int, layout: str):
        import numpy as np

        self.layout = layout
        if layout == "python_objects":
            # One dict of int lists per sample, as a tokenised JSON data set loaded into a list.
            self.data = [{"input_ids": list(range(i, i + TOKENS_PER_SAMPLE))} for i in range(n)]
        else:
            self.data = np.arange(n * TOKENS_PER_SAMPLE, dtype=np.int64).reshape(n, TOKENS_PER_SAMPLE)
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        import torch

        row = self.data[i]["input_ids"] if self.layout == "python_objects" else self.data[i]
        return torch.as_tensor(row)


def _worker_pids(loader_iter) -> list[int]:
    return [w.pid for w in getattr(loader_iter, "_workers", [])]


def measure(layout: str, mib: float, workers: int, epochs: int = 1) -> dict[str, object]:
    """`epochs` epochs of a real DataLoader (shuffled when more than one); the peak USS of every worker.

    Args:
        layout: python_objects | array.
        mib: target data set size in MiB (its Python-object form is larger than the raw ids).
        workers: DataLoader num_workers (> 0).
        epochs: epochs to iterate; the workers persist across them (persistent_workers=True).
    Returns:
        Mapping with layout, dataset_mib (RSS growth of the parent building it), worker_uss_mib, ratio.
    """
    import psutil
    import torch

    torch.set_num_threads(1)
    before = psutil.Process().memory_info().rss / MIB
    n = int(mib * MIB / (TOKENS_PER_SAMPLE * 8))
    ds = _Samples(n, layout)
    dataset_mib = psutil.Process().memory_info().rss / MIB - before
    loader = torch.utils.data.DataLoader(ds, batch_size=64, num_workers=workers, persistent_workers=True,
                                         multiprocessing_context="fork", shuffle=epochs > 1)
    batches = len(loader)
    peak = [0.0] * workers
    for _ in range(epochs):
        it = iter(loader)
        for step in range(batches):
            next(it)
            if step >= batches - 2 * workers - 1 or step % 50 == 0:
                for k, pid in enumerate(_worker_pids(it)):
                    peak[k] = max(peak[k], _uss_mib(pid))
    del it, loader
    return {"layout": layout, "dataset_mib": round(dataset_mib, 1), "workers": workers, "epochs": epochs,
            "worker_uss_mib": [round(p, 1) for p in peak],
            "uss_over_dataset": round(max(peak) / dataset_mib, 3) if dataset_mib > 0 else None}


def main(argv: list[str] | None = None) -> int:
    """Print one JSON line per layout."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=float, default=256.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--layouts", default="python_objects,array")
    args = ap.parse_args(argv)
    if sys.platform != "linux" or not hasattr(os, "fork"):
        print("needs Linux fork", file=sys.stderr)
        return 2
    for layout in args.layouts.split(","):
        t0 = time.perf_counter()
        row = measure(layout, args.mib, args.workers, args.epochs)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
