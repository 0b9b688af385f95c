"""Fault drills against real processes: a gateway under load while one of its workers is
SIGKILLed, its Redis paused and restarted, its PostgreSQL restarted. Each drill prints what the
clients saw (status -> count; 0 is no answer) and checks the database afterwards: every order a
client asked for exists once, whole, and the stock matches what was sold; every payment a client
made (through a real processor simulator, retried under its Idempotency-Key as a client does) is
settled once, whole, the order paid iff it has a captured payment, and the processor's ledger
agrees with the database (see ``PaymentBook.check``).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from tests.acceptance.conftest import admin_headers, start_gateway, stop_gateway
from tests.fault_helpers import (
    Load,
    OrderBook,
    PaymentBook,
    Shot,
    access_tokens,
    process_state,
    worker_pids,
)
from tests.payment_helpers import SimProcess, payments_env, running_simulator
from tests.private_postgres import PrivatePostgres
from tests.private_redis import PrivateRedis

from cygate.infra import seed as seeding

pytestmark = pytest.mark.acceptance


_QUICK_TAKEOVER = {"CYGATE_IDEMPOTENCY_IN_FLIGHT_TIMEOUT": "2"}


@pytest.fixture
def sim() -> Iterator[SimProcess]:
    """A processor simulator of the drill's own: its ledger holds the drill's charges only. Each
    charge takes 50 ms, so a fault is likely to find a payment between the processor's charge and
    the gateway's record of it."""
    with running_simulator("--latency", "0.05") as s:
        yield s


@pytest.fixture
def pay_env(sim: SimProcess, tmp_path: Path) -> dict[str, str]:
    """Gateway settings that send payments to ``sim``, with a quick takeover of a claim left in
    flight by a dead worker."""
    return {**payments_env(sim.url, str(tmp_path / "webhook-secret")), **_QUICK_TAKEOVER}


def _max_gap(times: list[float]) -> float:
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def _between(shots: list[Shot], start: float, end: float) -> list[Shot]:
    return [s for s in shots if start <= s.started < end]


def _server_errors(shots: list[Shot]) -> list[Shot]:
    return [s for s in shots if s.status == 0 or s.status >= 500]


def test_sigkill_of_one_of_two_workers_under_load(
    gateway_env: dict[str, str],
    test_db_dsn: str,
    seeded: object,
    sim: SimProcess,
    pay_env: dict[str, str],
) -> None:
    """SIGKILL (as the OOM killer sends it) of one of two workers while reads, orders and
    payments run: the other worker keeps answering, a new worker answers within seconds, and
    nothing but the requests the dead worker had in hand goes unanswered; no 5xx at all."""
    # A claim left in flight by the dead worker is taken over by a retry after 2 s.
    gw = start_gateway(gateway_env, workers=2, extra_env=pay_env)
    try:
        admin = admin_headers(gw)
        book = OrderBook.create(gw.url, test_db_dsn)
        payer = PaymentBook(book, sim.url)

        def read(c: httpx.Client) -> tuple[httpx.Response, object]:
            r = c.get("/admin/routes", headers=admin)
            return r, (r.json()["worker_pid"] if r.status_code == 200 else None)

        before = worker_pids(gw.proc.pid)
        assert len(before) == 2, before
        with (
            Load(gw.url, read, threads=4) as reads,
            Load(gw.url, book.place, threads=2) as orders,
            Load(gw.url, payer.pay, threads=3) as pays,  # most likely one is on the victim
        ):
            deadline = time.monotonic() + 15
            while {s.info for s in reads.shots if s.status == 200} < set(before):
                assert time.monotonic() < deadline, "both workers did not answer"
                time.sleep(0.05)
            time.sleep(0.5)
            victim, survivor = before
            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            deadline = killed_at + 10
            while process_state(victim) and time.monotonic() < deadline:
                time.sleep(0.005)  # gone: every thread ended, its sockets closed, reaped
            dead_at = time.monotonic()
            back_at = None
            deadline = killed_at + 20
            while time.monotonic() < deadline and gw.proc.poll() is None:
                fresh = [s for s in reads.since(killed_at) if s.status == 200
                         and s.info not in (victim, survivor)]  # fmt: skip
                if fresh:
                    back_at = min(s.ended for s in fresh)
                    break
                time.sleep(0.05)
            time.sleep(1.0)  # both workers serving again
            read_shots = reads.stop()
            order_shots = orders.stop()
            pay_shots = pays.stop()
        assert gw.proc.poll() is None, "the server exited after one worker died"
        assert back_at is not None, "no new worker answered within 20 s of the SIGKILL"

        drill = [s for s in read_shots + order_shots + pay_shots if s.started >= killed_at - 1.0]
        failed = [s for s in drill if s.status == 0 or s.status >= 500]
        survivor_ok = sorted(
            s.ended for s in read_shots if s.status == 200 and s.info == survivor
            and killed_at - 1.0 <= s.ended <= back_at + 1.0
        )  # fmt: skip
        gap = _max_gap(survivor_ok)
        settled = book.settle(gw.url)
        pays_settled = payer.settle(gw.url)
        state = book.check()
        paid = payer.check()
        print(
            f"\nSIGKILL drill: reads {Load.statuses([s for s in read_shots if s in drill])}, "
            f"orders {Load.statuses([s for s in order_shots if s in drill])}, payments "
            f"{Load.statuses([s for s in pay_shots if s in drill])} in the drill window; "
            f"error rate {len(failed)}/{len(drill)} = {len(failed) / max(1, len(drill)):.2%}; "
            f"worker dead after {dead_at - killed_at:.3f} s; new worker answered "
            f"{back_at - killed_at:.2f} s after the kill; survivor answered "
            f"{len(survivor_ok)} reads, longest gap {gap:.3f} s; orders settled by retry "
            f"{settled}; payment requests sent again after the load {pays_settled}; database "
            f"{state}; payments {paid}; failures (started, ended after the kill): "
            f"{[(round(s.started - killed_at, 3), round(s.ended - killed_at, 3)) for s in failed]}"
        )
        # Nothing but the requests in the dead worker's hands failed (sent before it was gone),
        # and none of them with a 5xx: a reset connection is all they saw. Each of the 9 client
        # threads has one request in flight at a time (and may land on the dying worker's
        # socket once more while its threads end): 18 at most.
        assert all(s.status == 0 and s.started <= dead_at + 0.05 for s in failed), failed[:5]
        assert len(failed) <= 18, f"{len(failed)} requests failed"
        assert len(survivor_ok) >= 10
        assert gap < 2.0, f"the surviving worker stopped answering for {gap:.2f} s"
        assert back_at - killed_at < 15
        assert len(worker_pids(gw.proc.pid)) == 2
        time.sleep(1.2)  # metric snapshots are written once a second
        metrics = httpx.get(gw.url + "/metrics").text
        starts = [line for line in metrics.splitlines() if line.startswith("cygate_worker_starts")]
        assert starts == ["cygate_worker_starts_total 3"], starts
    finally:
        output = stop_gateway(gw)
    assert "Unexpected exit from worker" in output, output[-2000:]


def test_a_worker_crash_loop_stops_the_server_instead_of_spinning(
    gateway_env: dict[str, str], seeded: object
) -> None:
    """A worker that dies again right after its respawn is a crash loop: the server logs it and
    exits (status 1), for the service manager to restart or alert, rather than respawn forever."""
    gw = start_gateway(gateway_env, workers=1)
    try:
        (first,) = worker_pids(gw.proc.pid)
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            fresh = [p for p in worker_pids(gw.proc.pid) if p != first]
            if fresh:
                break
            time.sleep(0.02)
        assert fresh, "the worker was not respawned"
        os.kill(fresh[0], signal.SIGKILL)  # again, within seconds of its respawn
        assert gw.proc.wait(timeout=20) == 1
    finally:
        output = stop_gateway(gw)
    assert "Worker crash loop detected" in output, output[-2000:]


def test_redis_paused_then_restarted_under_load(
    gateway_env: dict[str, str],
    test_db_dsn: str,
    seeded: object,
    sim: SimProcess,
    pay_env: dict[str, str],
) -> None:
    """Redis SIGSTOPped for 3 s (it accepts connections and never answers), resumed, then
    restarted empty, while callers with 24 tokens read and a customer places and pays orders: nobody
    gets a 5xx, and while Redis hangs the revocation check does not make every request wait
    for it (its circuit); afterwards a revoked token is refused again on every worker."""
    with PrivateRedis() as redis_server:
        gw = start_gateway(
            gateway_env, workers=2, extra_env={"CYGATE_REDIS_URL": redis_server.url,
                                               **pay_env},
        )  # fmt: skip
        try:
            book = OrderBook.create(gw.url, test_db_dsn)
            payer = PaymentBook(book, sim.url)
            tokens = access_tokens(gw.url, 24)
            turn = itertools.count()

            def read(c: httpx.Client) -> tuple[httpx.Response, object]:
                return c.get("/api/v1/orders?limit=1", headers=tokens[next(turn) % 24]), None

            with (
                Load(gw.url, read, threads=4) as reads,
                Load(gw.url, book.place, threads=2) as orders,
                Load(gw.url, payer.pay, threads=2) as pays,
            ):
                time.sleep(1.0)
                paused_at = time.monotonic()
                redis_server.pause()
                time.sleep(3.0)
                redis_server.resume()
                resumed_at = time.monotonic()
                time.sleep(1.0)
                redis_server.stop()
                stopped_at = time.monotonic()
                time.sleep(1.0)
                redis_server.start()
                restarted_at = time.monotonic()
                time.sleep(2.0)
                read_shots = reads.stop()
                order_shots = orders.stop()
                pay_shots = pays.stop()
            phases = {
                "before": (0.0, paused_at),
                "paused": (paused_at, resumed_at),
                "resumed": (resumed_at, stopped_at),
                "stopped": (stopped_at, restarted_at),
                "restarted": (restarted_at, time.monotonic()),
            }
            seen = {
                name: (Load.statuses(_between(read_shots, a, b)),
                       Load.statuses(_between(order_shots, a, b)),
                       Load.statuses(_between(pay_shots, a, b)))
                for name, (a, b) in phases.items()
            }  # fmt: skip
            paused = _between(read_shots, paused_at + 0.1, resumed_at)
            slow = [s for s in paused if s.ended - s.started >= 0.45]  # waited out 0.5 s
            settled = book.settle(gw.url)
            pays_settled = payer.settle(gw.url)
            state = book.check()
            paid = payer.check()
            # After the restart (an empty Redis): a token revoked now is refused everywhere.
            victim = tokens[0]
            revoke = httpx.post(gw.url + "/api/v1/auth/revoke",
                                data={"token": victim["authorization"][7:]})  # fmt: skip
            assert revoke.status_code == 200
            refused = _refused_everywhere(gw.url, victim, deadline=time.monotonic() + 8)
            print(
                f"\nRedis drill (reads, orders, payments by phase): {seen}; slow reads while "
                f"paused {len(slow)}/{len(paused)}; orders settled by retry {settled}; payment "
                f"requests sent again after the load {pays_settled}; database {state}; "
                f"payments {paid}; revoked token refused everywhere after {refused:.2f} s"
            )
            for shots in (read_shots, order_shots, pay_shots):
                assert not _server_errors(shots), _server_errors(shots)[:5]
            # A worker waits for the hung Redis with the reads in flight when it stopped, then
            # with one probe per backoff (1 s): a handful of slow reads in 3 s, not every read
            # whose token is due a check (each token's answer is trusted for 1 s).
            assert len(slow) <= 0.25 * len(paused), (len(slow), len(paused))
        finally:
            stop_gateway(gw)


def _refused_everywhere(url: str, headers: dict[str, str], *, deadline: float) -> float:
    """Seconds until 20 requests in a row (new connections: both workers) are 401."""
    started = time.monotonic()
    limits = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=url, timeout=5, limits=limits) as c:
        streak = 0
        while streak < 20:
            assert time.monotonic() < deadline, "a revoked token is still accepted"
            status = c.get("/api/v1/orders?limit=1", headers=headers).status_code
            streak = streak + 1 if status == 401 else 0
            if not streak:
                time.sleep(0.05)
    return time.monotonic() - started


def test_postgres_restart_under_load(
    gateway_env: dict[str, str], sim: SimProcess, pay_env: dict[str, str]
) -> None:
    """A private PostgreSQL restarted (fast shutdown: every connection dropped) while orders are
    placed, after a burst of product reads made each worker's read lease hold several
    connections (uncached reads: each goes to the database on a held connection), and no read
    ran during the restart (so none found those connections dead then). Orders and payments
    during the restart may get a 503; once the server is back no request does, not even when the
    next burst of reads takes the held connections; the orders and payments are whole and counted
    once, and the processor charged each order at most once."""
    with PrivatePostgres() as pg:
        dsn = pg.create_database("cygate_drill")
        product_ids = asyncio.run(_seed(dsn))
        gw = start_gateway(
            gateway_env, workers=2, extra_env={"CYGATE_DATABASE_URL": dsn,
                                               "CYGATE_CACHE_ENABLED": "false",
                                               **pay_env},
        )  # fmt: skip
        try:
            book = OrderBook.create(gw.url, dsn)
            payer = PaymentBook(book, sim.url)
            turn = itertools.count()

            def read(c: httpx.Client) -> tuple[httpx.Response, object]:
                pid = product_ids[next(turn) % len(product_ids)]
                return c.get(f"/api/v1/products/{pid}"), None

            with (
                Load(gw.url, book.place, threads=2) as orders,
                Load(gw.url, payer.pay, threads=2) as pays,
            ):
                with Load(gw.url, read, threads=8) as burst:
                    time.sleep(1.5)  # each lease now holds several connections
                burst_shots = burst.stop()
                time.sleep(0.3)
                stopping_at = time.monotonic()
                pg.restart()
                back_at = time.monotonic()
                time.sleep(0.5)
                with Load(gw.url, read, threads=8) as burst_after:
                    time.sleep(2.0)
                after_burst = burst_after.stop()
                order_shots = orders.stop()
                pay_shots = pays.stop()
            during = Load.statuses(_between(order_shots, stopping_at, back_at))
            pays_during = Load.statuses(_between(pay_shots, stopping_at, back_at))
            # NOTE: a request sent just before the server was back may still be answered from
            # the failed attempt; 0.2 s of grace.
            after_reads = after_burst
            after_orders = _between(order_shots, back_at + 0.2, float("inf"))
            after_pays = _between(pay_shots, back_at + 0.2, float("inf"))
            settled = book.settle(gw.url)
            pays_settled = payer.settle(gw.url)
            state = book.check()
            paid = payer.check()
            print(
                f"\nPostgreSQL drill: before: reads {Load.statuses(burst_shots)}, orders "
                f"{Load.statuses(_between(order_shots, 0, stopping_at))}; during the "
                f"{back_at - stopping_at:.2f} s restart: orders {during}, payments {pays_during}; "
                f"after: reads {Load.statuses(after_reads)}, orders "
                f"{Load.statuses(after_orders)}, payments {Load.statuses(after_pays)}; orders "
                f"settled by retry {settled}; payment requests sent again after the load "
                f"{pays_settled}; database {state}; payments {paid}"
            )
            assert not _server_errors(after_reads), _server_errors(after_reads)[:5]
            assert not _server_errors(after_orders), _server_errors(after_orders)[:5]
            assert not _server_errors(after_pays), _server_errors(after_pays)[:5]
            assert len(after_burst) >= 20
            everything = burst_shots + after_burst + order_shots
            assert not [s for s in everything if s.status not in (0, 200, 201, 503)]
            # 409: the key, or the order's last attempt, is still in flight (retry after)
            assert not [s for s in pay_shots if s.status not in (0, 201, 409, 503)]
        finally:
            output = stop_gateway(gw)
            if "Traceback" in output:
                print(output)


async def _seed(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        await seeding.seed(conn, categories=3, products=40, users=1, rng_seed=3)
        return [str(r[0]) for r in await conn.fetch("SELECT id FROM products")]
    finally:
        await conn.close()
