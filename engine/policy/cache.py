"""The cache of checked rule bases: one JSON entry per distinct set of rule sources.

Checking a rule base imports jsonschema and validates every file (~0.25 s); a rule base whose exact
sources were checked before is read back instead, as Python reuses .pyc files. An entry is trusted
only if it proves what it is: its file name is the content key of the sources (with the checker's own
code, schema and facts vocabulary), the entry repeats that key, its shape is checked field by field,
and a digest over the key and the rules must match. Anything else (`[]`, a truncated file, a rule
edited by hand, an entry copied under another name) is ignored and rebuilt. The digest detects
corruption and edits; it is not a signature against someone who can write the checker's code.
At most MAX_CACHE_ENTRIES entries are kept (the oldest are removed); a failed write leaves no file.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from .limits import MAX_CACHE_ENTRIES

FORMAT = 2
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "id": str, "description": str, "when": dict, "then": dict, "because": str, "source": str, "tests": list,
    "priority": int, "file": str, "topic": str}


def cache_dir() -> Path:
    """MEMFIT_CACHE_DIR, else $XDG_CACHE_HOME/memfit, else ~/.cache/memfit."""
    root = os.environ.get("MEMFIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "memfit")
    return Path(root)


def content_key(sources: Sequence[tuple[str, str]], checker: Sequence[bytes]) -> str:
    """sha256 over the checker (code, schema, vocabulary) and every (name, text) source, in order."""
    h = hashlib.sha256()
    for part in checker:
        h.update(hashlib.sha256(part).digest())
    for name, text in sources:
        h.update(hashlib.sha256(name.encode()).digest() + hashlib.sha256(text.encode()).digest())
    return h.hexdigest()


def _digest(key: str, rules: Any) -> str:
    return hashlib.sha256(key.encode() + json.dumps(rules, sort_keys=True).encode()).hexdigest()


def _shape_ok(rules: Any) -> bool:
    if not isinstance(rules, list) or not rules:
        return False
    for r in rules:
        if not isinstance(r, dict) or set(r) != set(_FIELDS):
            return False
        if any(not isinstance(r[k], t) or isinstance(r[k], bool) != (t is bool) for k, t in _FIELDS.items()):
            return False
    return True


def read_entry(key: str) -> list[dict[str, Any]] | None:
    """The rules (as plain dicts) of a verified entry for this key, or None."""
    path = cache_dir() / f"rules-{key[:32]}.json"
    try:
        if path.stat().st_size > 64 << 20:  # far above any rule base the loader accepts
            return None
        entry = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(entry, dict) or entry.get("format") != FORMAT or entry.get("key") != key:
        return None
    rules = entry.get("rules")
    if not _shape_ok(rules) or entry.get("digest") != _digest(key, rules):
        return None
    return rules


def write_entry(key: str, rules: list[dict[str, Any]]) -> None:
    """Best effort: a read-only or full cache directory only costs the re-check next time."""
    d = cache_dir()
    tmp = None
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".rules-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"format": FORMAT, "key": key, "digest": _digest(key, rules), "rules": rules}, fh)
        os.replace(tmp, d / f"rules-{key[:32]}.json")
        tmp = None
        _evict(d)
    except (OSError, TypeError, ValueError):
        pass
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _evict(d: Path) -> None:
    """Keep the MAX_CACHE_ENTRIES most recently written entries; remove temp files older than an hour
    (a writer killed between mkstemp and rename)."""
    now = time.time()
    for p in d.glob(".rules-*.tmp"):
        try:
            if now - p.stat().st_mtime > 3600:
                p.unlink()
        except OSError:
            continue
    entries = []
    for p in d.glob("rules-*.json"):
        try:
            entries.append((p.stat().st_mtime_ns, p))
        except OSError:
            continue
    entries.sort(reverse=True)
    for _, p in entries[MAX_CACHE_ENTRIES:]:
        try:
            p.unlink()
        except OSError:
            pass
