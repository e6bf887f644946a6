"""All-or-nothing output folders: `advise --out DIR` writes every file or changes nothing.

How (docs/reference/limits.md, "Outputs"):
- an exclusive lock (`fcntl.flock` on `.DIR.lock` beside DIR) serialises concurrent writers, so the
  check "does a file exist?" and the write happen as one step (without it, 2 of 10 parallel runs
  without --force both succeeded);
- every file is written and fsync'ed in a staging folder beside DIR (same file system), so a full
  disk or a permission error part-way leaves DIR as it was; a new DIR is the staging folder renamed,
  an existing one gets each file moved in with os.replace (a rename needs no free space);
- a symlink anywhere on a target's path inside DIR is refused (a planted DIR/plans link would send
  writes elsewhere);
- with force, files a previous memfit run wrote (listed in DIR/.memfit-files.json) that this run does
  not write are removed, so "Nothing fits" is never left beside an old ds_config.json.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

from ..core.errors import OutputError, OutputExistsError

MANIFEST = ".memfit-files.json"
LOCK_WAIT_S = 10.0
# What memfit writes under --out; a folder written before the manifest existed is cleaned by these.
_KNOWN = ("advice.json", "ds_config.json", "ds_config.hf.json", "launch.sh", "hostfile", "lf.yaml")


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    import fcntl  # POSIX only; memfit's launchers (DeepSpeed, torchrun) are too

    lock = root.parent / f".{root.name}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise OutputError(f"{root}: another memfit run is writing here (lock {lock} held for "
                                      f"{LOCK_WAIT_S:.0f} s); try again when it has finished") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _check_targets(root: Path, names: list[str]) -> None:
    for name in names:
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts:
            raise OutputError(f"{root}: refusing to write {name!r} outside the folder")
        path = root
        for part in rel.parts:
            path = path / part
            if path.is_symlink():
                raise OutputError(f"{path}: is a symbolic link; memfit writes only inside {root}: remove it")
            if path != root / rel and path.exists() and not path.is_dir():
                raise OutputError(f"{path}: exists and is not a folder")


def _previous(root: Path) -> set[str]:
    """Files a previous memfit run wrote into root (manifest, else the known names beside advice.json)."""
    try:
        listed = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
        return {n for n in listed if isinstance(n, str)} if isinstance(listed, list) else set()
    except (OSError, ValueError):
        pass
    if not (root / "advice.json").is_file():
        return set()
    return {n for n in _KNOWN if (root / n).is_file()} | {
        str(p.relative_to(root)) for p in root.glob("plans/*/ds_config.json") if p.is_file()}


def _stage(staging: Path, files: Mapping[str, str]) -> None:
    for name, text in {**files, MANIFEST: json.dumps(sorted(files), indent=1) + "\n"}.items():
        path = staging / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(path, 0o755 if path.suffix == ".sh" else 0o644)


def _move_in(staging: Path, root: Path, names: list[str], stale: set[str]) -> None:
    for name in [*names, MANIFEST]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / name, root / name)
    for name in sorted(stale):
        (root / name).unlink(missing_ok=True)
        parent = (root / name).parent
        while parent != root and not any(parent.iterdir()):  # empty plans/NN-key/ folders
            parent.rmdir()
            parent = parent.parent


def write_files(out_dir: str | Path, files: Mapping[str, str], force: bool = False) -> list[Path]:
    """Write files under out_dir, all or nothing.

    Args:
        out_dir: the folder (created if missing).
        files: relative name -> text.
        force: overwrite existing files, and remove those a previous memfit run left that this one
            does not write.
    Returns:
        The paths written.
    Raises:
        OutputExistsError: some files exist and force is False (nothing is written then).
        OutputError: a symlinked target, a lock held by another run, or the folder cannot be
            written (permissions, full disk); nothing is changed then.
    """
    root = Path(os.path.abspath(out_dir))
    names = list(files)
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        with _locked(root):
            if root.exists() and not root.is_dir():
                raise OutputError(f"{root}: exists and is not a folder")
            _check_targets(root, [*names, MANIFEST])
            existing = [str(root / n) for n in names if (root / n).exists()]
            if existing and not force:
                raise OutputExistsError([f"{p}: exists; use --force to overwrite" for p in existing])
            stale = (_previous(root) - set(names)) if force else set()
            staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.staging-", dir=root.parent))
            try:
                _stage(staging, files)
                if not root.exists():
                    os.rename(staging, root)
                else:
                    _move_in(staging, root, names, stale)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        full = " (the disk is full)" if exc.errno == errno.ENOSPC else ""
        raise OutputError(f"{out_dir}: cannot write the output ({exc.strerror or exc}){full}; "
                          "nothing was changed") from None
    return [Path(out_dir) / n for n in names]
