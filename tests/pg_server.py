"""A real, private PostgreSQL server for the store tests, from Debian's postgresql package.

initdb + pg_ctl on a temporary data directory, listening only on a unix socket in that directory (no
TCP port to collide with), trust authentication, stopped when the test session ends. As root it runs
as the `postgres` user (initdb refuses root). Where the server or psycopg is missing the tests skip and
say why, except under CI=true, where they fail instead: CI must run them (`make test` installs the
package when it runs as root).
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile

import pytest


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def unavailable() -> str | None:
    """Why a PostgreSQL store cannot be tested here, or None."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]')"
    if not (_bin("initdb") and _bin("pg_ctl")):
        return "no PostgreSQL server binaries (apt-get install -y postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
    return None


def skip_or_fail(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true: the PostgreSQL store tests must run, but {reason}")
    pytest.skip(reason)


class Server:
    """initdb, start, URL, stop."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="memfit-pg-")
        self.data = os.path.join(self.dir, "data")
        self.user = None
        if os.geteuid() == 0:
            self.user = "postgres"
            entry = pwd.getpwnam("postgres")
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        os.chmod(self.dir, 0o700)

    def _run(self, *cmd: str) -> None:
        full = ["runuser", "-u", self.user, "--", *cmd] if self.user else list(cmd)
        proc = subprocess.run(full, capture_output=True, text=True, timeout=120)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")

    def start(self) -> str:
        self._run(_bin("initdb"), "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        opts = f"-c listen_addresses='' -c unix_socket_directories={self.dir} -c fsync=off"
        self._run(_bin("pg_ctl"), "-D", self.data, "-o", opts, "-l", os.path.join(self.dir, "log"), "-w", "start")
        return f"postgresql://postgres@/postgres?host={self.dir}"

    def stop(self) -> None:
        try:
            self._run(_bin("pg_ctl"), "-D", self.data, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
