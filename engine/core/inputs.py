"""Reading files a user hands memfit: regular files only, bounded size, UTF-8, strict YAML and JSON.

Every reader here refuses, with a message naming the file, what would otherwise hang, exhaust memory
or silently change a value: FIFOs and devices (a read blocks or never ends), oversized files, text
that is not UTF-8, duplicate keys (YAML and JSON both let the last one win; DeepSpeed's own loader
refuses duplicate JSON keys), NaN and infinities, nesting deeper than `MAX_DEPTH` (Python's JSON
decoder and every recursive walk over the value would hit RecursionError) and YAML aliases that
expand beyond `MAX_YAML_NODES` nodes (a ~1 KB "billion laughs" file). The limits are documented in
docs/reference/limits.md.
"""
from __future__ import annotations

import json
import math
import os
import reprlib
import stat
from pathlib import Path
from typing import Any, BinaryIO

import yaml

from .errors import MemfitError

# Plans and hardware files are hand-written YAML of a few KB; 4 MiB leaves room for generated ones.
PLAN_MAX_BYTES = 4 * 2**20
# DeepSpeed configs and model config.json files are a few KB; the largest HF config.json files with
# embedded tokenizer maps stay well under 1 MiB.
CONFIG_MAX_BYTES = 8 * 2**20
# Nesting depth of any YAML or JSON value read (plans nest 3 deep, DeepSpeed configs 4).
MAX_DEPTH = 64
# Values a YAML document may expand to once aliases are followed, and keys per mapping. A plan has
# ~50 values and an inline model config ~60 keys; PyYAML constructs ~100k values per second, so these
# keep any accepted document well inside the 5 s a plan may take (a 100k-key plan took 124 s).
MAX_YAML_NODES = 100_000
MAX_MAPPING_KEYS = 10_000
EXCERPT_CHARS = 80

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = EXCERPT_CHARS
_REPR.maxlong = 40
_REPR.maxlevel = 3
_REPR.maxdict = _REPR.maxlist = _REPR.maxtuple = _REPR.maxset = 6


def excerpt(value: Any) -> str:
    """A bounded repr of a user value for messages: never expands a huge or aliased value."""
    text = _REPR.repr(value)
    return text if len(text) <= 2 * EXCERPT_CHARS else text[:2 * EXCERPT_CHARS] + "..."


def escape_key(key: Any) -> str:
    """A key as it should appear in a key path: control characters escaped, length bounded."""
    text = key if isinstance(key, str) else repr(key)
    if len(text) > EXCERPT_CHARS:
        text = text[:EXCERPT_CHARS] + "..."
    if text.isprintable():
        return text
    return text.encode("unicode_escape").decode("ascii")


def open_regular(path: str | Path, what: str, error: type[MemfitError]) -> BinaryIO:
    """Open a regular file for binary reading, refusing FIFOs, devices and directories at once.

    Args:
        path: the file.
        what: what the file is, for messages ("the plan", "the log").
        error: the MemfitError subclass to raise.
    Returns:
        A binary file object (the caller closes it).
    Raises:
        error: the file is missing, unreadable, or not a regular file.
    """
    p = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO without a writer would otherwise block before fstat can refuse it.
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise error(f"{p}: cannot read {what} ({exc.strerror or exc})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else \
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file"
        raise error(f"{p}: cannot read {what}: it is {kind}; give a regular file")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def decode_utf8(data: bytes, where: str, error: type[MemfitError]) -> str:
    """Decode file bytes as UTF-8 (a UTF-8 BOM is dropped) with a message that says how to fix it."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise error(f"{where}: the file is UTF-16; memfit reads UTF-8 only: save it as UTF-8")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise error(f"{where}: not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}; Latin-1 or "
                    "another encoding?): save the file as UTF-8") from None


def read_text(path: str | Path, what: str, error: type[MemfitError], max_bytes: int = PLAN_MAX_BYTES) -> str:
    """Read a small text file (plan, config) whole: regular file, at most max_bytes, UTF-8.

    Raises:
        error: unreadable, not a regular file, larger than max_bytes, or not UTF-8.
    """
    with open_regular(path, what, error) as fh:
        try:
            data = fh.read(max_bytes + 1)
        except OSError as exc:
            raise error(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise error(f"{path}: {what} is larger than {max_bytes // 2**20} MiB (the limit for this kind of file)")
    return decode_utf8(data, str(path), error)


# ---- YAML ---------------------------------------------------------------------------------------

_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Refused(Exception):
    """A value the strict loader refuses, with its key path and position."""

    def __init__(self, path: str, problem: str, mark: yaml.Mark | None):
        super().__init__(problem)
        self.path, self.problem, self.mark = path, problem, mark


def _non_finite(node: yaml.ScalarNode) -> bool:
    try:
        return not math.isfinite(float(node.value.replace("_", "")))
    except ValueError:  # ".nan", ".inf" and their spellings, which float() reads too, or a sexagesimal
        return node.value.lower().lstrip("+-") in (".nan", ".inf")


def _check_tree(root: yaml.Node) -> None:
    """Duplicate keys and non-finite floats, with the key path, before anything is constructed.

    Walks the composed node graph once per node (aliases are shared nodes; `_yaml_shape` already
    bounded their expansion).
    """
    seen_nodes: set[int] = set()
    todo = [(root, "")]
    while todo:
        node, path = todo.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, Any], yaml.Mark] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    todo.append((value_node, path))
                    continue
                name = escape_key(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
                child = f"{path}.{name}" if path else name
                if isinstance(key_node, yaml.ScalarNode):
                    ident = (key_node.tag, key_node.value)
                    if ident in first:
                        raise _Refused(child, f"duplicate key (first at line {first[ident].line + 1}); keep one",
                                       key_node.start_mark)
                    first[ident] = key_node.start_mark
                todo.append((value_node, child))
        elif isinstance(node, yaml.SequenceNode):
            todo.extend((v, f"{path}[{i}]") for i, v in enumerate(node.value))
        elif node.tag == "tag:yaml.org,2002:float" and _non_finite(node):
            raise _Refused(path or "(top level)", f"{node.value[:40]!r} is not a finite number", node.start_mark)


class _StrictLoader(_BaseLoader):  # type: ignore[misc, valid-type]
    """Safe loading, plus: duplicate keys and non-finite floats are errors (see _check_tree)."""

    def construct_document(self, node: yaml.Node) -> Any:
        _check_tree(node)
        return super().construct_document(node)


def _yaml_shape(text: str) -> str | None:
    """Nesting depth and alias-expanded size from the event stream (linear); a problem or None."""
    sizes: dict[str, int] = {}
    stack: list[list[Any]] = [[None, 0, 0, False]]  # [anchor, expanded nodes so far, children, is a mapping]
    for event in yaml.parse(text, Loader=_BaseLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent, yaml.ScalarEvent, yaml.AliasEvent)):
            top = stack[-1]
            top[2] += 1
            if top[3] and top[2] > 2 * MAX_MAPPING_KEYS:
                return (f"a mapping has more than {MAX_MAPPING_KEYS:,} keys (near line {event.start_mark.line + 1})")
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            stack.append([event.anchor, 1, 0, isinstance(event, yaml.MappingStartEvent)])
            if len(stack) - 1 > MAX_DEPTH:
                return f"nested deeper than {MAX_DEPTH} levels at line {event.start_mark.line + 1}"
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            anchor, n, _, _ = stack.pop()
            if anchor is not None:
                sizes[anchor] = n
            stack[-1][1] += n
        elif isinstance(event, yaml.ScalarEvent):
            if event.anchor is not None:
                sizes[event.anchor] = 1
            stack[-1][1] += 1
        elif isinstance(event, yaml.AliasEvent):
            stack[-1][1] += sizes.get(event.anchor, 1)
        else:
            continue
        if stack[-1][1] > MAX_YAML_NODES:
            return (f"expands to more than {MAX_YAML_NODES:,} values once aliases (*name) are followed "
                    f"(near line {event.start_mark.line + 1}); write the values out or use fewer aliases")
    return None


def load_yaml(text: str, where: str, error: type[MemfitError]) -> Any:
    """Parse YAML strictly (see the module docstring).

    Raises:
        error: "WHERE: not valid YAML at line L, column C: problem".
    """
    try:
        problem = _yaml_shape(text)
        if problem is None:
            return yaml.load(text, Loader=_StrictLoader)
    except _Refused as exc:
        at = f" (line {exc.mark.line + 1}, column {exc.mark.column + 1})" if exc.mark else ""
        raise error(f"{where}: {exc.path}: {exc.problem}{at}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise error(f"{where}: not valid YAML{at}: {getattr(exc, 'problem', None) or exc}") from None
    except RecursionError:
        problem = f"nested deeper than {MAX_DEPTH} levels"
    raise error(f"{where}: not accepted: {problem}")


# ---- JSON ---------------------------------------------------------------------------------------

def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {excerpt(k)} in one object; keep one (DeepSpeed refuses it too)")
        out[k] = v
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number (JSON has no NaN or Infinity)")


def _depth(value: Any) -> int:
    """Nesting depth, iteratively (a recursive walk is what fails on deep input)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        node, d = todo.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, d)
            if deepest > MAX_DEPTH:
                return deepest
            todo.extend((v, d + 1) for v in (node.values() if isinstance(node, dict) else node))
    return deepest


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is out of range for a number")
    return value


def load_json(text: str, where: str, error: type[MemfitError]) -> Any:
    """Parse JSON strictly: no duplicate keys, no NaN/Infinity, nesting at most MAX_DEPTH.

    Raises:
        error: "WHERE: not valid JSON at line L, column C: problem" or the limit broken.
    """
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant,
                          parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise error(f"{where}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except ValueError as exc:  # from the hooks, or an integer beyond Python's digit limit
        raise error(f"{where}: not accepted JSON: {str(exc)[:200]}") from None
    except RecursionError:
        raise error(f"{where}: not accepted JSON: nested deeper than {MAX_DEPTH} levels") from None
    if _depth(data) > MAX_DEPTH:
        raise error(f"{where}: not accepted JSON: nested deeper than {MAX_DEPTH} levels")
    return data
