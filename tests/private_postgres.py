"""A private PostgreSQL cluster a test may stop and restart, never the shared server.

``initdb`` into a temporary folder, a free port on 127.0.0.1, durability off (a throwaway test
server); run as the ``postgres`` OS user when the tests run as root (initdb and postgres refuse
root). Removed when the test ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile

import pytest
from tests.store_helpers import create_migrated

__all__ = ["PrivatePostgres"]


def _bindir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version, reverse=True)
    if found:
        return os.path.dirname(found[0])
    initdb = shutil.which("initdb")
    return os.path.dirname(os.path.realpath(initdb)) if initdb else None


def _version(path: str) -> int:
    part = path.split("/")[-3]
    return int(part) if part.isdigit() else 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivatePostgres:
    """One cluster; :meth:`stop` and :meth:`start` again keep its data and port."""

    def __init__(self, *, standby_of: PrivatePostgres | None = None) -> None:
        bindir = _bindir()
        if bindir is None or not os.path.exists(os.path.join(bindir, "pg_ctl")):
            pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
        self.bindir = bindir
        self.port = _free_port()
        self.dir = tempfile.mkdtemp(prefix="cygate-pg-")
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "server.log")
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            os.chmod(self.dir, 0o755)
            shutil.chown(self.dir, "postgres", "postgres")
        if standby_of is None:
            self._initdb()
        else:
            self._basebackup(standby_of)

    def _run(self, *args: str, timeout: float = 60) -> None:
        cmd = [os.path.join(self.bindir, args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=timeout, cwd="/")

    def _initdb(self) -> None:
        self._run("initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-locale", "--no-sync")  # fmt: skip
        with open(os.path.join(self.data, "postgresql.conf"), "a") as fh:
            fh.write(
                "\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.dir}'\nmax_connections = 100\n"
                # a standby may be made of it (pg_basebackup; trust for replication from
                # 127.0.0.1 is in initdb's pg_hba.conf)
                "wal_level = replica\nmax_wal_senders = 5\n"
            )

    def _basebackup(self, primary: PrivatePostgres) -> None:
        """A streaming standby of ``primary`` (which must be running): ``pg_basebackup -R``
        copies its data and writes the connection to follow; this server gets its own port."""
        self._run("pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
                  "-D", self.data, "-R", "-X", "stream", "-c", "fast", "--no-sync")  # fmt: skip
        # (-c fast: a spread checkpoint would keep pg_basebackup waiting for minutes)
        with open(os.path.join(self.data, "postgresql.conf"), "a") as fh:
            fh.write(
                f"\nport = {self.port}\nunix_socket_directories = '{self.dir}'\n"
                "hot_standby = on\nhot_standby_feedback = on\n"
            )

    def sql(self, statement: str, database: str = "postgres") -> object:
        """Run one statement on this server (a short connection of its own); its value."""

        async def run() -> object:
            import asyncpg

            conn = await asyncpg.connect(self.url(database), timeout=10)
            try:
                return await conn.fetchval(statement)
            finally:
                await conn.close()

        return asyncio.run(run())

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> PrivatePostgres:
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        """``fast``: clients are disconnected, the server shuts down cleanly."""
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def create_database(self, name: str) -> str:
        """A migrated database of that name; its DSN."""
        dsn = self.url(name)
        asyncio.run(create_migrated(dsn))
        return dsn

    def close(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):  # not running
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
