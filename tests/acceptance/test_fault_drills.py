"""Fault drills against real processes: a gateway under load while one of its workers is
SIGKILLed, its Redis paused and restarted, its PostgreSQL restarted. Each drill prints what the
clients saw (status -> count; 0 is no answer) and checks the database afterwards: every order a
client asked for exists once, whole, and the stock matches what was sold.
"""

from __future__ import annotations

import itertools
import os
import signal
import time

import httpx
import pytest
from tests.acceptance.conftest import admin_headers, start_gateway, stop_gateway
from tests.fault_helpers import Load, OrderBook, process_state, worker_pids

pytestmark = pytest.mark.acceptance


_QUICK_TAKEOVER = {"CYGATE_IDEMPOTENCY_IN_FLIGHT_TIMEOUT": "2"}


def _max_gap(times: list[float]) -> float:
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def test_sigkill_of_one_of_two_workers_under_load(
    gateway_env: dict[str, str], test_db_dsn: str, seeded: object
) -> None:
    """SIGKILL (as the OOM killer sends it) of one of two workers while reads and orders run:
    the other worker keeps answering, a new worker answers within seconds, and nothing but the
    requests the dead worker had in hand goes unanswered; no 5xx at all."""
    # A claim left in flight by the dead worker is taken over by a retry after this.
    gw = start_gateway(gateway_env, workers=2, extra_env=_QUICK_TAKEOVER)
    try:
        admin = admin_headers(gw)
        book = OrderBook.create(gw.url, test_db_dsn)

        def read(c: httpx.Client) -> tuple[httpx.Response, object]:
            r = c.get("/admin/routes", headers=admin)
            return r, (r.json()["worker_pid"] if r.status_code == 200 else None)

        before = worker_pids(gw.proc.pid)
        assert len(before) == 2, before
        with Load(gw.url, read, threads=4) as reads, Load(gw.url, book.place, threads=2) as orders:
            deadline = time.monotonic() + 15
            while {s.info for s in reads.shots if s.status == 200} < set(before):
                assert time.monotonic() < deadline, "both workers did not answer"
                time.sleep(0.05)
            time.sleep(0.5)
            victim, survivor = before
            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            while process_state(victim) not in ("", "Z"):
                time.sleep(0.005)
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
        assert gw.proc.poll() is None, "the server exited after one worker died"
        assert back_at is not None, "no new worker answered within 20 s of the SIGKILL"

        drill = [s for s in read_shots + order_shots if s.started >= killed_at - 1.0]
        failed = [s for s in drill if s.status == 0 or s.status >= 500]
        survivor_ok = sorted(
            s.ended for s in read_shots if s.status == 200 and s.info == survivor
            and killed_at - 1.0 <= s.ended <= back_at + 1.0
        )  # fmt: skip
        gap = _max_gap(survivor_ok)
        settled = book.settle(gw.url)
        state = book.check()
        print(
            f"\nSIGKILL drill: reads {Load.statuses([s for s in read_shots if s in drill])}, "
            f"orders {Load.statuses([s for s in order_shots if s in drill])} in the drill window; "
            f"error rate {len(failed)}/{len(drill)} = {len(failed) / max(1, len(drill)):.2%}; "
            f"worker dead after {dead_at - killed_at:.3f} s; new worker answered "
            f"{back_at - killed_at:.2f} s after the kill; survivor answered "
            f"{len(survivor_ok)} reads, longest gap {gap:.3f} s; orders settled by retry "
            f"{settled}; database {state}; failures (started, ended after the kill): "
            f"{[(round(s.started - killed_at, 3), round(s.ended - killed_at, 3)) for s in failed]}"
        )
        # Nothing but the requests in the dead worker's hands failed (sent before it was gone:
        # its threads and sockets go within milliseconds of the signal; 0.25 s is a margin for
        # a loaded machine), and none of them with a 5xx: a reset connection is all they saw.
        gone = max(dead_at, killed_at + 0.25)
        assert all(s.status == 0 and s.started <= gone for s in failed), failed[:5]
        assert len(failed) <= 16, f"{len(failed)} requests failed"
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
