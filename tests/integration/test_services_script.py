"""scripts/services.sh for real: private PostgreSQL and Redis on free ports, reuse, stop.

Needs the server binaries already on the machine (the script would install them with apt-get;
a test must not): skipped when initdb/pg_ctl or redis-server cannot be found.
"""

from __future__ import annotations

import glob
import os
import pathlib
import shutil
import socket
import subprocess

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.once]

REPO = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "services.sh"


def _have_postgres_server() -> bool:
    if shutil.which("initdb") and shutil.which("pg_ctl"):
        return True
    return bool(glob.glob("/usr/lib/postgresql/*/bin/initdb"))


if not (shutil.which("bash") and _have_postgres_server() and shutil.which("redis-server")):
    pytest.skip("PostgreSQL server binaries or redis-server not installed", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _run(services_dir: pathlib.Path, db_url: str, redis_url: str, *args: str) -> str:
    env = {
        **os.environ,
        "CYGATE_SERVICES_DIR": str(services_dir),
        "DATABASE_URL": db_url,
        "REDIS_URL": redis_url,
    }
    proc = subprocess.run(
        ["bash", str(SCRIPT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, f"services.sh {args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_private_instances_start_are_reused_and_stop(tmp_path: pathlib.Path) -> None:
    pg_port, redis_port = _free_port(), _free_port()
    db_url = f"postgresql://postgres@127.0.0.1:{pg_port}/cygate_services_test"
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    mine, other = tmp_path / "mine", tmp_path / "other"
    try:
        out = _run(mine, db_url, redis_url, "up")
        assert f"postgres: started private instance at {db_url}" in out
        assert f"redis: started private instance at {redis_url}" in out
        assert _answers(pg_port)
        assert _answers(redis_port)
        env_file = (mine / "env").read_text()
        assert f"export DATABASE_URL='{db_url}'" in env_file
        assert f"export REDIS_URL='{redis_url}'" in env_file
        assert _run(mine, db_url, redis_url, "env") == env_file

        # The database in the URL was created, and the contrib extensions are there.
        psql = shutil.which("psql")
        if psql:
            got = subprocess.run(
                [
                    psql,
                    "-XAtc",
                    "CREATE EXTENSION IF NOT EXISTS pg_trgm; "
                    "CREATE EXTENSION IF NOT EXISTS citext; SELECT current_database()",
                    db_url,
                ],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout
            assert got.strip().splitlines()[-1] == "cygate_services_test"

        out = _run(mine, db_url, redis_url, "up")
        assert "postgres: private instance already running" in out
        assert "redis: private instance already running" in out

        # Seen from another checkout, these are existing servers: used as they are, and its
        # `down` leaves them alone.
        out = _run(other, db_url, redis_url, "up")
        assert f"postgres: using existing at {db_url}" in out
        assert f"redis: using existing at {redis_url}" in out
        out = _run(other, db_url, redis_url, "down")
        assert "postgres: no private instance running" in out
        assert "redis: no private instance running" in out
        assert _answers(pg_port)
        assert _answers(redis_port)
    finally:
        out = _run(mine, db_url, redis_url, "down")
        base = mine / "pg.base"
        if base.exists():  # the cluster was put under /tmp (tmp_path is not the postgres user's)
            shutil.rmtree(base.read_text().strip(), ignore_errors=True)
    assert "postgres: stopped private instance" in out
    assert "redis: stopped private instance" in out
    assert not _answers(pg_port)
    assert not _answers(redis_port)
