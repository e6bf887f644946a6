"""The embedded store: one SQLite file in WAL mode.

WAL lets readers (`advise plan`) run while a training run writes; `BEGIN IMMEDIATE` takes the write
lock at the start of each transaction, so concurrent writers queue (up to the busy timeout) instead of
failing half-way; `synchronous=FULL` syncs every commit, so a committed record survives a crash of the
process, and of the machine (sqlite.org/wal.html, sqlite.org/pragma.html#pragma_synchronous).
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from ..core.errors import StoreError
from .sql import SqlStore

# Seconds a writer waits for another's lock before giving up: a record is a few kB, a commit a few ms.
BUSY_TIMEOUT_S = 60


class SqliteStore(SqlStore):
    """Records in a SQLite file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: no implicit transactions; _begin_locked opens each one explicitly.
            conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"{self.path}: cannot open the store ({exc})") from None
        try:
            super().__init__(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"{self.path}: not a usable memfit store ({exc})") from None

    def _begin_locked(self, cur: Any) -> None:
        cur.execute("BEGIN IMMEDIATE")
