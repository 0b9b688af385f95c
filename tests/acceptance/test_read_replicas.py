"""Read replicas against a real streaming standby: a private primary, a ``pg_basebackup -R``
copy of it on another port, and a gateway given both (``CYGATE_DATABASE_REPLICA_URLS``).

Anonymous catalog and search reads are served by the standby (the per-replica counter on
``/metrics`` proves it); a signed-in caller reads its own write at once; a standby whose replay
is paused falls behind and is skipped; a stopped standby costs no request an error; a gateway
given a replica that does not answer starts at once and serves from the primary.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from tests.acceptance.conftest import (
    Gateway,
    admin_headers,
    free_port,
    start_gateway,
    stop_gateway,
)
from tests.private_postgres import PrivatePostgres

from cygate.infra import seed as seeding

pytestmark = pytest.mark.once

_DB = "cygate_replicas"
_FAST_CHECKS = {
    "CYGATE_CACHE_ENABLED": "false",  # every read reaches the database
    "CYGATE_DATABASE_REPLICA_MAX_LAG": "1",
    "CYGATE_DATABASE_REPLICA_CHECK_INTERVAL": "0.2",
}


async def _seed(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        await seeding.seed(conn, categories=3, products=20, users=1, rng_seed=5)
        return [str(r[0]) for r in await conn.fetch("SELECT id FROM products ORDER BY id")]
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[PrivatePostgres, PrivatePostgres, list[str]]]:
    with PrivatePostgres() as primary:
        dsn = primary.create_database(_DB)
        ids = asyncio.run(_seed(dsn))
        standby = PrivatePostgres(standby_of=primary)
        try:
            standby.start()
            yield primary, standby, ids
        finally:
            standby.close()


def _replica_reads(gw: Gateway, outcome: str = "ok") -> float:
    text = httpx.get(gw.url + "/metrics", timeout=5).text
    total = 0.0
    pattern = rf'^cygate_db_replica_reads_total\{{[^}}]*outcome="{outcome}"[^}}]*\}} (\S+)$'
    for m in re.finditer(pattern, text, re.MULTILINE):
        total += float(m.group(1))
    return total


def _until(check: Callable[[], bool], within: float = 8.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def _anonymous_reads(c: httpx.Client, ids: list[str]) -> int:
    """One of each anonymous catalog read (fast product read, list, search, categories)."""
    paths = [
        *(f"/api/v1/products/{pid}" for pid in ids[:5]),
        "/api/v1/products?limit=5",
        "/api/v1/categories",
        "/api/v1/search?q=the",
    ]
    for path in paths:
        r = c.get(path)
        assert r.status_code == 200, (path, r.status_code, r.text)
    return len(paths)


def _price(c: httpx.Client, pid: str, headers: dict[str, str] | None = None) -> Any:
    r = c.get(f"/api/v1/products/{pid}", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["price_cents"]


def _ready(c: httpx.Client) -> dict[str, object]:
    """/readyz: 200 whatever the replicas' states (they are reported, never gating)."""
    r = c.get("/readyz")
    assert r.status_code == 200, r.text
    return r.json()


def test_reads_on_the_replica_own_writes_lag_and_outage(
    gateway_env: dict[str, str], cluster: tuple[PrivatePostgres, PrivatePostgres, list[str]]
) -> None:
    primary, standby, ids = cluster
    gw = start_gateway(
        gateway_env,
        workers=1,
        extra_env={
            "CYGATE_DATABASE_URL": primary.url(_DB),
            "CYGATE_DATABASE_REPLICA_URLS": json.dumps([standby.url(_DB)]),
            **_FAST_CHECKS,
        },
    )
    try:
        admin = admin_headers(gw)
        with gw.client() as c:
            # 1. anonymous reads are served by the standby (once its first check passed)
            _until(lambda: (_anonymous_reads(c, ids), _replica_reads(gw))[1] > 0)
            assert _ready(c) == {"postgres": "ok", "redis": "ok", "replicas": {"replica0": "ok"}}
            before = _replica_reads(gw)
            n = _anonymous_reads(c, ids)
            _until(lambda: _replica_reads(gw) >= before + n)

            # 2. a signed-in caller reads its own write at once, even with the standby's
            # replay paused (the write is not on the standby: only the primary has it)
            standby.sql("SELECT pg_wal_replay_pause()")
            pid = ids[0]
            old = _price(c, pid)
            r = c.patch(
                f"/api/v1/products/{pid}",
                json={"price_cents": old + 1},
                headers={**admin, "If-Match": "*"},
            )
            assert r.status_code == 200, r.text
            assert _price(c, pid, admin) == old + 1

            # 3. anonymous readers get the write at once (the writer fenced the replicas for
            # max_lag + 2 checks), and after that window too: the paused standby has fallen
            # behind the bound and is skipped; never an error
            assert _price(c, pid) == old + 1
            time.sleep(1.5)
            for _ in range(10):
                assert _price(c, pid) == old + 1
                time.sleep(0.05)
            standby.sql("SELECT pg_wal_replay_resume()")
            before = _replica_reads(gw)
            _until(lambda: (_anonymous_reads(c, ids), _replica_reads(gw))[1] > before)

            # 4. the standby stops: every read is still answered (by the primary), and the
            # gateway stays ready, reporting the replica skipped
            standby.stop()
            try:
                for _ in range(3):
                    _anonymous_reads(c, ids)
                    time.sleep(0.1)
                _until(lambda: _ready(c).get("replicas") == {"replica0": "skipped"})
            finally:
                standby.start()
            # back: the checks let it serve again
            before = _replica_reads(gw)
            _until(lambda: (_anonymous_reads(c, ids), _replica_reads(gw))[1] > before)
    finally:
        out = stop_gateway(gw)
    assert "Traceback" not in out, out


def test_a_replica_that_does_not_answer_at_start_up_costs_a_warning_not_a_hang(
    gateway_env: dict[str, str], cluster: tuple[PrivatePostgres, PrivatePostgres, list[str]]
) -> None:
    primary, _standby, ids = cluster
    nobody = f"postgresql://postgres@127.0.0.1:{free_port()}/{_DB}"
    started = time.monotonic()
    gw = start_gateway(
        gateway_env,
        workers=1,
        extra_env={
            "CYGATE_DATABASE_URL": primary.url(_DB),
            "CYGATE_DATABASE_REPLICA_URLS": json.dumps([nobody]),
            "CYGATE_LOG_LEVEL": "info",
            **_FAST_CHECKS,
        },
    )
    try:
        assert time.monotonic() - started < 15
        with gw.client() as c:
            _anonymous_reads(c, ids)
        assert _replica_reads(gw) == 0
        with gw.client() as c:
            assert _ready(c)["replicas"] == {"replica0": "skipped"}
    finally:
        out = stop_gateway(gw)
    assert "replica replica0 is not answering" in out, out
