"""The store's tables and queries, shared by the SQLite and PostgreSQL backends.

Schema versions are numbered migrations, applied in order inside one locked transaction, so two
processes opening a new store at once cannot both create it, and a store written by an older memfit is
brought up to date on first use. A store newer than this memfit is refused (nothing is guessed).
Every record is written in a transaction of its own: a crash loses at most the record being written.
"""
from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence, TypeVar

from ..core.errors import StoreError
from .record import MeasurementRecord

T = TypeVar("T")
_Store = TypeVar("_Store", bound="SqlStore")

# Migration N brings the schema from version N-1 to N. "{id}" is the dialect's auto-increment key.
MIGRATIONS: Sequence[Sequence[str]] = (
    (  # 1: one row per measured run; the record itself is the JSON body, a few columns are for lookups
        "CREATE TABLE memfit_records (id {id}, uid TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL, "
        "model_key TEXT NOT NULL, strategy_key TEXT NOT NULL, status TEXT NOT NULL, body TEXT NOT NULL)",
    ),
    (  # 2: `advise plan` looks records up by model on every run: keep that lookup an index probe
        "CREATE INDEX memfit_records_by_model ON memfit_records (model_key, id)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True)
class StoredRecord:
    """A record as the store holds it: its row id and when it was added."""

    id: int
    created_at: str
    record: MeasurementRecord


class SqlStore:
    """Records in a SQL database through a DB-API connection. Subclasses set the dialect."""

    url = ""
    autoincrement = "INTEGER PRIMARY KEY"
    placeholder = "?"

    def __init__(self, conn: Any) -> None:  # a DB-API 2 connection (sqlite3 or psycopg)
        self.conn = conn
        self.migrate()

    # -- dialect hooks -------------------------------------------------------------------------------
    def _begin_locked(self, cur: Any) -> None:
        """Start a transaction that excludes other writers (and migrators)."""
        raise NotImplementedError

    def _sql(self, text: str) -> str:
        return text.replace("?", self.placeholder).replace("{id}", self.autoincrement)

    def _run(self, work: Callable[[Any], T]) -> T:
        """Run work(cursor) in one locked transaction; commit, or roll back and re-raise."""
        cur = self.conn.cursor()
        try:
            self._begin_locked(cur)
            out = work(cur)
            self.conn.commit()
            return out
        except BaseException:
            self.conn.rollback()
            raise
        finally:
            cur.close()

    # -- schema --------------------------------------------------------------------------------------
    def migrate(self) -> int:
        """Apply the migrations this store lacks. Returns the schema version."""
        def work(cur: Any) -> int:
            cur.execute("CREATE TABLE IF NOT EXISTS memfit_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            cur.execute(self._sql("SELECT value FROM memfit_meta WHERE key = ?"), ("schema_version",))
            row = cur.fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.url}: store schema version {version} is newer than this memfit "
                                 f"understands ({SCHEMA_VERSION}); upgrade memfit")
            for statements in MIGRATIONS[version:]:
                for statement in statements:
                    cur.execute(self._sql(statement))
            if version < SCHEMA_VERSION:
                cur.execute(self._sql("DELETE FROM memfit_meta WHERE key = ?"), ("schema_version",))
                cur.execute(self._sql("INSERT INTO memfit_meta (key, value) VALUES (?, ?)"),
                            ("schema_version", str(SCHEMA_VERSION)))
            return SCHEMA_VERSION
        return self._run(work)

    def schema_version(self) -> int:
        """The store's schema version as recorded in memfit_meta (0: none yet)."""
        cur = self.conn.cursor()
        cur.execute(self._sql("SELECT value FROM memfit_meta WHERE key = ?"), ("schema_version",))
        row = cur.fetchone()
        self.conn.commit()
        return int(row[0]) if row else 0

    # -- records -------------------------------------------------------------------------------------
    def add(self, record: MeasurementRecord) -> tuple[int, bool]:
        """Write one record in its own transaction.

        Args:
            record: the record; one with the same content already stored is not added twice, and one
                with a run_id replaces the stored record of the same run (a checkpoint of a live run).
        Returns:
            (row id, True if it was new: for a run_id, True on its first write only).
        """
        body = json.dumps(record.model_dump(mode="json"), sort_keys=True)
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")

        # A run's checkpoint replaces the run's previous one; any other record is never overwritten.
        conflict = ("DO UPDATE SET body = excluded.body, status = excluded.status, strategy_key = excluded.strategy_key"
                    if record.run_id else "DO NOTHING")

        def work(cur: Any) -> tuple[int, bool]:
            select = self._sql("SELECT id FROM memfit_records WHERE uid = ?")
            if record.run_id:  # one process writes a run's checkpoints in turn: a look first is exact
                cur.execute(select, (record.uid,))
                existed = cur.fetchone() is not None
            cur.execute(self._sql(
                "INSERT INTO memfit_records (uid, created_at, model_key, strategy_key, status, body) "
                f"VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (uid) {conflict}"),
                (record.uid, now, record.model_key, record.strategy_key, record.status, body))
            inserted = not existed if record.run_id else cur.rowcount == 1
            cur.execute(select, (record.uid,))
            return int(cur.fetchone()[0]), inserted
        return self._run(work)

    def add_all(self, records: Iterable[MeasurementRecord]) -> list[tuple[int, bool]]:
        """Write records one transaction each (a failure keeps those already written)."""
        return [self.add(r) for r in records]

    def records(self, model_key: Optional[str] = None, limit: Optional[int] = None) -> list[StoredRecord]:
        """Stored records, newest first; only those of one model when model_key is given."""
        where, args = ("WHERE model_key = ?", (model_key,)) if model_key else ("", ())
        tail = f" LIMIT {int(limit)}" if limit else ""
        cur = self.conn.cursor()
        try:
            cur.execute(self._sql(f"SELECT id, created_at, body FROM memfit_records {where} ORDER BY id DESC{tail}"),
                        args)
            rows = cur.fetchall()
        finally:
            cur.close()
            self.conn.commit()  # end the read transaction (PostgreSQL opens one for any statement)
        return [StoredRecord(int(i), str(c), MeasurementRecord.model_validate(json.loads(b))) for i, c, b in rows]

    def close(self) -> None:
        self.conn.close()

    def __enter__(self: _Store) -> _Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
