"""The team store: the same tables on PostgreSQL, through psycopg 3 (imported only here).

Each transaction first takes one transaction-scoped advisory lock, so migrations never race; record
writes are single INSERTs, which PostgreSQL already serialises per unique key, so they run in parallel.
"""
from __future__ import annotations

from typing import Any

from ..core.errors import StoreError
from .sql import SqlStore

# pg_advisory_xact_lock key for migrations: any fixed 64-bit number unique to memfit.
_MIGRATION_LOCK = 0x6D656D666974  # "memfit"


class PostgresStore(SqlStore):
    """Records in a PostgreSQL database given by a postgresql:// URL."""

    autoincrement = "BIGSERIAL PRIMARY KEY"
    placeholder = "%s"

    def __init__(self, url: str):
        self.url = _redact(url)
        try:
            import psycopg
        except ImportError:
            raise StoreError(f"{self.url}: a PostgreSQL store needs psycopg 3 (pip install 'psycopg[binary]')") from None
        self._errors = psycopg.Error
        try:
            conn = psycopg.connect(url, connect_timeout=10)
        except psycopg.Error as exc:
            raise StoreError(f"{self.url}: cannot connect ({str(exc).strip().splitlines()[0]})") from None
        self._migrating = False
        try:
            super().__init__(conn)
        except psycopg.Error as exc:
            conn.close()
            raise StoreError(f"{self.url}: not a usable memfit store ({exc})") from None

    def migrate(self) -> int:
        self._migrating = True
        try:
            return super().migrate()
        finally:
            self._migrating = False

    def _begin_locked(self, cur: Any) -> None:
        # psycopg opens the transaction with the first statement; only migrations need to exclude others.
        if self._migrating:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    head, sep, tail = url.partition("://")
    if "@" in tail and ":" in tail.split("@", 1)[0]:
        user = tail.split("@", 1)[0].split(":", 1)[0]
        tail = f"{user}:***@{tail.split('@', 1)[1]}"
    return head + sep + tail
