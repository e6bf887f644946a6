"""Where the store is: MEMFIT_STORE (a path, sqlite:///PATH or postgresql://...), else SQLite under the
user's data directory ($XDG_DATA_HOME/memfit/store.sqlite, default ~/.local/share/memfit/store.sqlite,
as the XDG Base Directory specification puts user data)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional, overload

from ..core.errors import StoreError

if TYPE_CHECKING:
    from .sql import SqlStore

ENV = "MEMFIT_STORE"
_PG_SCHEMES = ("postgresql://", "postgres://")


def default_path() -> Path:
    """The embedded store's file when MEMFIT_STORE is not set."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "memfit" / "store.sqlite"


def store_url(url: Optional[str] = None) -> str:
    """The store's URL: the argument, else MEMFIT_STORE, else the default SQLite file."""
    url = url or os.environ.get(ENV) or ""
    return url or f"sqlite:///{default_path()}"


def is_postgres(url: str) -> bool:
    """Whether the URL names a PostgreSQL store."""
    return url.startswith(_PG_SCHEMES)


def sqlite_path(url: str) -> Path:
    """The file of a sqlite:///PATH URL or a plain path (a directory gets store.sqlite inside it)."""
    path = Path(url[len("sqlite:///"):] if url.startswith("sqlite:///") else url).expanduser()
    return path / "store.sqlite" if path.is_dir() or url.endswith("/") else path


@overload
def open_store(url: Optional[str] = None, create: Literal[True] = True) -> SqlStore: ...
@overload
def open_store(url: Optional[str] = None, create: bool = True) -> Optional[SqlStore]: ...


def open_store(url: Optional[str] = None, create: bool = True) -> Optional[SqlStore]:
    """Open the store (creating an embedded one unless create is False).

    Args:
        url: a path, sqlite:///PATH or postgresql://...; default store_url().
        create: when False and the SQLite file does not exist yet, return None (nothing recorded yet:
            the cheap answer for `advise plan`).
    Returns:
        A SqliteStore or PostgresStore, or None (see create).
    Raises:
        StoreError: an unknown scheme, or a store that cannot be opened.
    """
    url = store_url(url)
    if is_postgres(url):
        from .postgres import PostgresStore

        return PostgresStore(url)
    if "://" in url and not url.startswith("sqlite:///"):
        raise StoreError(f"{ENV}={url}: unknown store URL (use a path, sqlite:///PATH or postgresql://...)")
    path = sqlite_path(url)
    if not create and not path.exists():
        return None
    from .sqlite import SqliteStore

    return SqliteStore(path)
