"""Throughput of memfit.engine.evidence.logs.parse_log on a synthetic training log.

Writes a ~200 MB log (DeepSpeed/HF-style step lines, tqdm bars, some memory evidence sprinkled in) to a
temporary directory, parses it, and prints lines/s and MB/s. Usage:

    .venv/bin/python bench/log_parse.py [--mb 200] [--gzip]
"""
from __future__ import annotations

import argparse
import gzip
import random
import tempfile
import time
from pathlib import Path

from memfit.engine.evidence.logs import parse_log

_NOISE = [
    "[2025-01-24 21:0{m}:{s:02d},{ms:03d}] [INFO] [logging.py:128:log_dist] [Rank 0] step={i}, skipped=0, "
    "lr=[9.99e-06], mom=[(0.9, 0.999)]",
    "{{'loss': {loss:.4f}, 'grad_norm': 0.8{s}, 'learning_rate': 9.8e-06, 'epoch': 0.{m}{s}}}",
    " {p}%|##        | {i}/100000 [01:0{m}<2:13:0{s}, 1.{s}it/s]",
    "[INFO|trainer.py:2381] 2025-01-24 21:01:14,118 >>   Number of trainable parameters = 32,763,876,352",
]
# A line that names "memory" without being evidence: with it in the mix (--dense) every block must be
# read line by line; without it, blocks without a keyword are skipped whole.
_DENSE = "[2025-01-24 21:01:13,915] [INFO] [config.py:1003:print]   offload_param ... pin_memory=True step {i}"
_EVIDENCE = [
    "[2025-01-24 20:56:03,012] [INFO] [utils.py:781:see_memory_usage] After step {i}",
    "[2025-01-24 20:56:03,013] [INFO] [utils.py:782:see_memory_usage] MA 1.51 GB         Max_MA 3.27 GB"
    "         CA 3.32 GB         Max_CA 3 GB ",
    "[2025-01-24 20:56:03,013] [INFO] [utils.py:789:see_memory_usage] CPU Virtual Memory:  used = 98.6 GB, "
    "percent = 13.3%",
]


def write_log(path: Path, target_mb: float, compress: bool, dense: bool = False) -> int:
    """Write the synthetic log; returns its line count."""
    rng = random.Random(0)
    noise = _NOISE + [_DENSE] if dense else _NOISE
    opener = gzip.open if compress else open
    lines = written = 0
    with opener(path, "wt", encoding="utf-8") as f:  # type: ignore[operator]
        while written < target_mb * 1e6:
            block = []
            for i in range(lines, lines + 1000):
                tpl = noise[rng.randrange(len(noise))]
                block.append(tpl.format(i=i, m=i % 10, s=i % 60, ms=i % 1000, loss=rng.random(), p=i % 100))
            if (lines // 1000) % 100 == 0:
                block.extend(t.format(i=lines) for t in _EVIDENCE)
            text = "\n".join(block) + "\n"
            f.write(text)
            written += len(text.encode())
            lines += len(block)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=200.0, help="size of the uncompressed log in MB")
    parser.add_argument("--gzip", action="store_true", help="write and parse a .gz log")
    parser.add_argument("--dense", action="store_true", help="one line in six mentions 'memory' (worst case)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("bench.log.gz" if args.gzip else "bench.log")
        n_lines = write_log(path, args.mb, args.gzip, args.dense)
        start = time.perf_counter()
        facts = parse_log(path)
        seconds = time.perf_counter() - start
    print(f"{n_lines:,} lines, {args.mb:.0f} MB{' gzip' if args.gzip else ''}{' dense' if args.dense else ''}: {seconds:.2f} s, "
          f"{n_lines / seconds:,.0f} lines/s, {args.mb / seconds:.1f} MB/s, {len(facts)} facts")


if __name__ == "__main__":
    main()
