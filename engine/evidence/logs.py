"""Measured facts from logs of real runs: OOM messages, kernel OOM kills, DeepSpeed and torch memory prints.

`parse_log(path)` streams one file (plain or gzip, any size, bad UTF-8 tolerated) and returns a list of
`LogRecord`; `parse_logs(paths)` does several. Lines are read as bytes, split on "\\n" only (so
"FILE:LINE" matches an editor's line numbers), and decoded only when a cheap substring test says the
line may carry evidence. Nothing read from a log is ever evaluated.

The formats read, and where their wording comes from, are listed in engine/evidence/formats.py, next to
the regexes and the per-file parser (`FileParser`) that read them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional

from pydantic import BaseModel, ConfigDict

from .formats import FileParser
from .reader import MATCH_CHARS, read_blocks
from .record import LINE_CHARS, Kind, LogRecord
from ..core.errors import LogError

__all__ = ["LogRecord", "Kind", "LINE_CHARS", "parse_log", "parse_logs", "summarize", "fragmentation_hint"]

def _has_keyword(data: bytes) -> bool:
    """Cheap test: a line (or block) without any of these cannot carry evidence (see FileParser.feed)."""
    return (b"memory" in data or b"Memory" in data or b"Killed" in data or b"Max_MA" in data
            or b"return code = -9" in data or b"exitcode" in data or b"llocated" in data or b"eserved" in data)


def _feed_line(parser: FileParser, n: int, raw: bytes) -> None:
    raw = raw[:MATCH_CHARS]  # evidence lines are short; this bounds the regexes' work per line
    if parser.csv is not None and parser.smi_row(n, raw.decode("utf-8", "replace")):
        pass
    elif _has_keyword(raw):
        text = raw.decode("utf-8", "replace")
        for segment in text.split("\r") if "\r" in text else (text,):  # tqdm's carriage returns
            if segment.strip():
                parser.feed(n, segment)
    parser.prev = raw


def parse_log(path: str | Path) -> list[LogRecord]:
    """Read one log (plain or .gz) and return its memory evidence, in line order.

    Args:
        path: the log file; `source` fields name it as given, "PATH:LINE".
    Returns:
        The facts found; [] when the file holds no memory evidence.
    Raises:
        LogError: "PATH: cannot read (reason)" when the file cannot be opened or decompressed, is not
            a regular file, or is larger than reader.LOG_MAX_BYTES.
    """
    path = Path(path)
    parser = FileParser(str(path))
    n = 0
    for block in read_blocks(path):
        lines = block.split(b"\n") if parser.csv is not None or _has_keyword(block) else None
        if lines is None:  # nothing here: count the lines, keep the last one as a possible label
            n += block.count(b"\n") + (not block.endswith(b"\n"))
            parser.prev = block.rstrip(b"\n").rsplit(b"\n", 1)[-1][:MATCH_CHARS]
            continue
        if lines[-1] == b"":
            lines.pop()
        for raw in lines:
            n += 1
            _feed_line(parser, n, raw)
    return parser.finish()


def parse_logs(paths: Iterable[str | Path]) -> list[LogRecord]:
    """Parse several logs; every unreadable one is reported at once.

    Args:
        paths: log files, plain or gzip.
    Returns:
        The facts of all files, file by file.
    Raises:
        LogError: with one problem per unreadable file.
    """
    facts: list[LogRecord] = []
    problems: list[str] = []
    for p in paths:
        try:
            facts.extend(parse_log(p))
        except LogError as exc:
            problems.extend(exc.problems)
    if problems:
        raise LogError(problems)
    return facts


def fragmentation_hint(fact: LogRecord) -> bool:
    """Whether a GPU OOM left much memory reserved but unallocated (advise expandable_segments).

    "Large" is >= 1 GiB or >= 5 % of the GPU's total capacity: the case PyTorch's own OOM message calls
    out ("If reserved but unallocated memory is large try setting
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"). Only OOMs count: cached-but-free memory in a run
    that fits (e.g. DeepSpeed's CA - MA) is the allocator doing its job, not a reason to change it.

    Args:
        fact: any fact; only gpu_oom facts with reserved_unallocated_gib can be True.
    Returns:
        True when the OOM's reserved-but-unallocated memory is large.
    """
    slack = fact.reserved_unallocated_gib
    if fact.kind != "gpu_oom" or slack is None:
        return False
    return slack >= 1.0 or (fact.total_gib is not None and fact.total_gib > 0 and slack >= 0.05 * fact.total_gib)


def _worst(facts: list[LogRecord], key: str) -> Optional[LogRecord]:
    scored = [f for f in facts if getattr(f, key) is not None]
    return max(scored, key=lambda f: getattr(f, key)) if scored else (facts[0] if facts else None)


def _max(facts: list[LogRecord], key: str) -> Optional[float]:
    values = [getattr(f, key) for f in facts if getattr(f, key) is not None]
    return max(values) if values else None


_SUMMARY_KEYS = {
    "gpu_oom": ("in_use_gib", ["requested_gib", "in_use_gib", "allocated_gib", "reserved_gib", "total_gib"]),
    "host_oom": ("anon_rss_gib", ["anon_rss_gib"]),
    "deepspeed_memory": ("max_reserved_gib", ["max_allocated_gib", "max_reserved_gib", "host_used_gib"]),
    "gpu_memory_trace": ("gpu_peak_gib", ["gpu_peak_gib", "total_gib"]),
    "torch_memory": ("max_reserved_gib", ["max_allocated_gib", "max_reserved_gib"]),
}


def summarize(facts: Iterable[LogRecord]) -> dict[str, Any]:
    """The worst evidence per kind.

    Args:
        facts: from parse_log / parse_logs.
    Returns:
        {"any_gpu_oom": bool, "any_host_oom": bool, "fragmentation": bool,
         "gpu_peak_gib": float | None (largest GPU use seen: OOM in-use or reserved, Max_CA, nvidia-smi
         peak, torch max reserved/allocated), "host_peak_gib": float | None (largest anon-rss or
         DeepSpeed host use), "kinds": {KIND: {"count": int, "worst": fact dict, "max_FIELD": float,
         ...}}}; only kinds present appear under "kinds".
    """
    facts = list(facts)
    kinds: dict[str, dict[str, Any]] = {}
    for kind, (worst_key, fields) in _SUMMARY_KEYS.items():
        group = [f for f in facts if f.kind == kind]
        if not group:
            continue
        worst = _worst(group, worst_key)
        entry: dict[str, Any] = {"count": len(group), "worst": worst.model_dump(exclude_none=True) if worst else None}
        for field in fields:
            entry["max_" + field.removeprefix("max_")] = _max(group, field)
        kinds[kind] = entry
    gpu = [v for f in facts for v in (f.in_use_gib, f.reserved_gib, f.max_reserved_gib, f.max_allocated_gib,
                                      f.gpu_peak_gib) if v is not None]
    host = [v for f in facts for v in (f.anon_rss_gib, f.host_used_gib) if v is not None]
    return {
        "any_gpu_oom": "gpu_oom" in kinds,
        "any_host_oom": "host_oom" in kinds,
        "fragmentation": any(fragmentation_hint(f) for f in facts),
        "gpu_peak_gib": max(gpu) if gpu else None,
        "host_peak_gib": max(host) if host else None,
        "kinds": kinds,
    }
