"""The one log reader: regular files only, gzip by magic bytes, bounded lines, bounded size.

Both the fact parser (engine/evidence/logs.py) and the run-strategy reader (engine/evidence/match.py)
read logs through `read_blocks`, so a gzipped log is read the same way whatever its name (detecting
gzip by suffix in one and by magic bytes in the other gave facts but no inferred run for a gzipped
`crash.log`). Memory stays bounded whatever the input: a file without line breaks, a gzip bomb or a
sparse file is read in blocks of at most BLOCK_BYTES + LINE_MAX_BYTES, and a line longer than that is
cut (its rest is skipped). Limits: docs/reference/limits.md.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import BinaryIO, Iterator

from ..core.errors import LogError
from ..core.inputs import open_regular

BLOCK_BYTES = 1 << 20  # bytes read at a time; a block without any keyword is skipped whole
# Longest line kept whole; the evidence lines memfit reads are < 2 KB (a torch OOM message ~700 chars).
LINE_MAX_BYTES = 1 << 16
# Characters of a line the format regexes look at (all of them are linear, this bounds the constant).
MATCH_CHARS = 16 * 1024
# Bytes read per log, after decompression: a larger log is refused (a gzip bomb stops here).
LOG_MAX_BYTES = 1 << 30
_GZIP_MAGIC = b"\x1f\x8b"
# A gzip log that has grown past BOMB_AFTER_BYTES at more than MAX_RATIO x its compressed size is a
# decompression bomb: training logs compress 5-50x (tqdm bars being the most repetitive), zeros ~1000x.
BOMB_AFTER_BYTES = 64 << 20
MAX_RATIO = 200


def _too_big(path: Path, gz: bool) -> LogError:
    after = " after decompression" if gz else ""
    return LogError(f"{path}: larger than {LOG_MAX_BYTES >> 30} GiB{after}; give the part "
                    "of the log around the run's start and its failure (e.g. `head -c 200M` and `tail -c 200M`)")


def _open(path: Path) -> BinaryIO:
    raw = open_regular(path, "the log", LogError)
    try:
        if raw.read(2) == _GZIP_MAGIC:
            raw.seek(0)
            return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
        raw.seek(0, 2)
        if raw.tell() > LOG_MAX_BYTES:
            raise _too_big(path, gz=False)
        raw.seek(0)
        return raw
    except BaseException:
        raw.close()
        raise


def read_blocks(path: str | Path) -> Iterator[bytes]:
    """The log in blocks of about BLOCK_BYTES, each ending at a line break (or the end of the file).

    Args:
        path: a plain or gzip-compressed log (detected by its first two bytes, not its name).
    Yields:
        Blocks of bytes. A line longer than LINE_MAX_BYTES is yielded cut, as a block of its own
        without a line break, and the rest of it is skipped.
    Raises:
        LogError: not a regular file, unreadable, corrupt gzip, or larger than LOG_MAX_BYTES.
    """
    path = Path(path)
    total, buf, skipping = 0, b"", False
    try:
        with _open(path) as f:
            raw = getattr(f, "fileobj", None)  # the compressed stream, for a gzip log
            while data := f.read(BLOCK_BYTES):  # whole blocks only: readline() on gzip reads 8 KiB at a time
                total += len(data)
                if total > LOG_MAX_BYTES:
                    raise _too_big(path, gz=raw is not None)
                if raw is not None and total > BOMB_AFTER_BYTES and total > MAX_RATIO * max(raw.tell(), 1):
                    raise LogError(f"{path}: decompresses to more than {MAX_RATIO}x its size (a gzip bomb?); "
                                   "give the log uncompressed or its relevant part")
                if skipping:  # inside an overlong line: drop up to its line break
                    nl = data.find(b"\n")
                    if nl < 0:
                        continue
                    data, skipping = data[nl + 1:], False
                buf += data
                cut = buf.rfind(b"\n")
                if cut >= 0:
                    yield buf[:cut + 1]
                    buf = buf[cut + 1:]
                if len(buf) > LINE_MAX_BYTES:
                    yield buf[:LINE_MAX_BYTES]
                    buf, skipping = b"", True
            if buf:
                yield buf
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError; EOFError: truncated gzip
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        raise LogError(f"{path}: cannot read ({reason})") from None


def read_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line without its line break) for every line, lines cut as in read_blocks."""
    n = 0
    for block in read_blocks(path):
        lines = block.split(b"\n")
        if lines[-1] == b"":
            lines.pop()
        for raw in lines:
            n += 1
            yield n, raw
