"""A log record: one piece of memory evidence read from a log of a real run."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict

# Characters of the raw line kept in a record (and in messages quoting it).
LINE_CHARS = 300

Kind = Literal["gpu_oom", "host_oom", "deepspeed_memory", "gpu_memory_trace", "torch_memory"]


class LogRecord(BaseModel):
    """One piece of memory evidence from a log. Every *_gib field is GiB (2**30 bytes)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Kind
    source: str  # "FILE:LINE"
    line: str  # the raw text, trimmed to LINE_CHARS
    requested_gib: Optional[float] = None
    total_gib: Optional[float] = None
    free_gib: Optional[float] = None
    in_use_gib: Optional[float] = None
    allocated_gib: Optional[float] = None
    reserved_gib: Optional[float] = None
    reserved_unallocated_gib: Optional[float] = None
    max_allocated_gib: Optional[float] = None
    max_reserved_gib: Optional[float] = None
    gpu_index: Optional[int] = None
    gpu_peak_gib: Optional[float] = None
    anon_rss_gib: Optional[float] = None
    host_used_gib: Optional[float] = None
    pid: Optional[int] = None
    process: Optional[str] = None
    label: Optional[str] = None
