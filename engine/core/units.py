"""Sizes with units, and the one table of bytes per dtype.

Plain numbers are GiB (2**30 bytes). Strings carry their unit, "80 GiB" binary and "1.5TB" SI, with
one deliberate exception: GPU makers' "80GB" is 80 GiB (an A100 80GB reports 81,920 MiB), so GPU
memory reads "GB" as GiB, while host RAM and NVMe read "GB" as SI (744GB = 692.9 GiB), the direction
that never overstates capacity. Every reading is reported back to the user (`describe_size`).
"""
from __future__ import annotations

import math
import re

GIB = 2**30

_UNITS = {
    "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
}
# Matched against the stripped text, so one `\s*` remains and no two quantifiers compete for the
# same characters: linear time (the unstripped form with `\s*` on both sides of an empty-able unit
# took 22 s on "1" + 60k spaces + "!"). Longer strings are refused before matching.
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)")
_SIZE_MAX_CHARS = 64

# Bytes per element of each storage dtype. int4 is 0.5: two values per byte (bitsandbytes nf4/fp4).
BYTES_PER_DTYPE = {
    "fp32": 4.0,
    "tf32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "int8": 1.0,
    "fp8": 1.0,
    "int4": 0.5,
    "nf4": 0.5,
}


def parse_size_gib(value: object, gb_means_gib: bool = False) -> float:
    """Read a size as GiB.

    Args:
        value: a number (already GiB) or a string such as "96GB", "80 GiB", "1.5TB".
        gb_means_gib: read "GB"/"TB" as binary units (GPU vendors' convention).
    Returns:
        The size in GiB.
    Raises:
        ValueError: with a message naming the accepted forms.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as 80, \"96GB\" or \"80 GiB\" (got {value!r})")
    if isinstance(value, (int, float)):
        return _finite(value, value)
    if isinstance(value, str):
        text = value.strip()
        if text[:1] == "-" and text[1:2].isdigit():
            raise ValueError("must not be negative")
        m = _SIZE.fullmatch(text) if len(text) <= _SIZE_MAX_CHARS else None
        if m:
            number, unit = float(m.group(1)), m.group(2).lower()
            if unit == "":
                return _finite(number, value)
            if gb_means_gib and unit in ("gb", "tb", "g", "t"):
                unit = unit[0] + "ib"
            if unit in _UNITS:
                return _finite(number * _UNITS[unit] / GIB, value)
        shown = repr(value[:_SIZE_MAX_CHARS])[:2 * _SIZE_MAX_CHARS]  # escapes can make a repr 10x longer
        shown += f"... ({len(value)} chars)" if len(value) > _SIZE_MAX_CHARS else ""
        raise ValueError(f"expected a size such as 80, \"96GB\" or \"80 GiB\" (got {shown})")
    raise ValueError(f"expected a size such as 80, \"96GB\" or \"80 GiB\" (got a {type(value).__name__})")


def _finite(size: float | int, value: object) -> float:
    """The size as a finite float; NaN, infinities and numbers beyond float range are refused."""
    try:
        out = float(size)
    except OverflowError:
        out = math.inf
    if not math.isfinite(out):
        raise ValueError("must be a finite number")
    if out < 0:
        raise ValueError("must not be negative")
    return out


def describe_size(value: object, gb_means_gib: bool = False) -> str:
    """How a size was read, for the explanation: '744GB read as 692.9 GiB'."""
    size = parse_size_gib(value, gb_means_gib)
    if isinstance(value, str) and not value.strip().lower().endswith("gib"):
        return f"{value.strip()} read as {size:.1f} GiB"
    return f"{size:g} GiB"


def gib(n_bytes: float) -> float:
    """Bytes to GiB."""
    return n_bytes / GIB
