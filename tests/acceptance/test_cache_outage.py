"""Staleness across a Redis outage, through three real gateway processes (Granian, one worker
each) on one PostgreSQL and a private redis-server the tests stop, pause and bring back.

While an instance is not subscribed to the invalidation channel it serves an L1 entry only
until it is ``cache_unsubscribed_max_age`` old (here ``BOUND``), so a product renamed through
A while Redis is down is seen on B and C within the bound; after Redis returns no reader on
any instance sees an older name once one has seen the newer (docs/caching.md, "Staleness").
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from tests.acceptance.conftest import Gateway, admin_headers, start_gateway, stop_gateway
from tests.acceptance.test_cache_gateways import _env, metric, product_ids, sql, wait_for
from tests.private_redis import PrivateRedis

pytestmark = pytest.mark.acceptance

__all__ = ["product_ids"]  # (the fixture, shared with test_cache_gateways)

BOUND = 1.0
"""cache_unsubscribed_max_age of the three gateways, seconds."""
MARGIN = 0.75
"""What a loaded CI machine may add to a measured delay (polling, scheduling), seconds."""

Record = tuple[float, float, str, str, str]
"""(sent, received, gateway, product name, X-Cache), monotonic seconds."""


@pytest.fixture(scope="module")
def trio(
    gateway_env: dict[str, str], redis_prefix: str, seeded: object
) -> Iterator[tuple[PrivateRedis, list[Gateway]]]:
    server = PrivateRedis()
    server.start()
    gws: list[Gateway] = []
    try:
        prefix = f"{redis_prefix}cache-outage-{secrets.token_hex(3)}:"
        env = _env(
            gateway_env,
            prefix,
            CYGATE_REDIS_URL=server.url,
            CYGATE_CACHE_UNSUBSCRIBED_MAX_AGE=str(BOUND),
        )
        gws.extend(start_gateway(env, workers=1) for _ in range(3))
        wait_for(lambda: all(metric(g, "cygate_cache_subscribed") == 1 for g in gws))
        yield server, gws
    finally:
        for gw in gws:
            stop_gateway(gw)
        server.close()


class Readers:
    """One thread per gateway reading ``path`` in a loop until stopped."""

    def __init__(self, gws: dict[str, Gateway], path: str) -> None:
        self.gws = gws
        self.path = path
        self.records: list[Record] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._read, args=(label, gw), daemon=True)
            for label, gw in gws.items()
        ]

    def _read(self, label: str, gw: Gateway) -> None:
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            while not self._stop.is_set():
                sent = time.monotonic()
                r = c.get(self.path)
                got = time.monotonic()
                assert r.status_code == 200, r.text
                self.records.append((sent, got, label, r.json()["name"], r.headers["x-cache"]))
                time.sleep(0.003)

    def __enter__(self) -> Readers:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=15)


def older_after_newer(records: list[Record], names: list[str]) -> list[tuple[Record, Record]]:
    """Each read that returned an older name than one some reader had already received (sent
    after that answer arrived), with that earlier answer. ``names``: oldest first."""
    rank = {name: i for i, name in enumerate(names)}
    found = []
    newest: Record | None = None
    # Walk the answers by arrival; for each read, the newest name received before it was sent.
    arrivals = sorted(records, key=lambda r: r[1])
    for read in sorted(records, key=lambda r: r[0]):
        while arrivals and arrivals[0][1] < read[0]:
            done = arrivals.pop(0)
            if newest is None or rank[done[3]] > rank[newest[3]]:
                newest = done
        if newest is not None and rank[read[3]] < rank[newest[3]]:
            found.append((read, newest))
    return found


def patch_name(c: httpx.Client, path: str, name: str) -> None:
    r = c.patch(path, json={"name": name}, headers={"If-Match": "*"})
    assert r.status_code == 200, r.text


def test_a_write_during_an_outage_is_seen_everywhere_within_the_bound(
    trio: tuple[PrivateRedis, list[Gateway]], product_ids: list[str], test_db_dsn: str
) -> None:
    server, (a, b, c) = trio
    pid = product_ids[12]
    path = f"/api/v1/products/{pid}"
    tag = secrets.token_hex(3)
    with (
        httpx.Client(base_url=a.url, timeout=10, headers=admin_headers(a)) as ca,
        httpx.Client(base_url=b.url, timeout=10) as cb,
        httpx.Client(base_url=c.url, timeout=10) as cc,
    ):
        original = cb.get(path).json()["name"]
        names = [original]
        try:
            assert cc.get(path).json()["name"] == original
            assert cb.get(path).headers["x-cache"] == "hit-l1"
            server.stop()
            wait_for(lambda: all(metric(g, "cygate_cache_subscribed") == 0 for g in trio[1]))

            # 20 writes through A while Redis is down; each polled on B and C until seen.
            # B and C have just loaded the previous name each time: their entries are as
            # young as they can be, so each delay is close to the worst case.
            delays: dict[str, list[float]] = {"B": [], "C": []}
            hits = 0
            for i in range(20):
                name = f"outage-{tag}-{i}"
                names.append(name)
                patch_name(ca, path, name)
                written = time.monotonic()
                pending = {"B": cb, "C": cc}
                while pending:
                    for label, client in list(pending.items()):
                        r = client.get(path)
                        assert r.status_code == 200
                        got = r.json()["name"]
                        if got == name:
                            delays[label].append(time.monotonic() - written)
                            del pending[label]
                        else:
                            assert got == names[-2], "an older name than the one before"
                            hits += r.headers["x-cache"] == "hit-l1"
                    assert time.monotonic() - written < BOUND + 10, "never seen"
                    time.sleep(0.005)
            worst = max(delays["B"] + delays["C"])
            print(
                f"\nRedis down, bound {BOUND} s: a write through A seen on B after at most "
                f"{max(delays['B']):.3f} s, on C {max(delays['C']):.3f} s (20 writes; "
                f"median B {sorted(delays['B'])[10]:.3f} s); {hits} old answers from L1 "
                "meanwhile"
            )
            assert worst <= BOUND + MARGIN
            assert hits > 0  # (L1 did serve within the bound: availability first)

            # Redis returns; readers on every instance throughout. One write 0.1 s after it
            # answers (an instance may not have resubscribed yet), one once all have.
            early, late = f"returned-{tag}", f"after-{tag}"
            with Readers({"A": a, "B": b, "C": c}, path) as readers:
                time.sleep(0.3)
                server.start()
                returned = time.monotonic()
                time.sleep(0.1)
                names.append(early)
                patch_name(ca, path, early)
                wait_for(lambda: all(metric(g, "cygate_cache_subscribed") == 1 for g in trio[1]))
                resubscribed = time.monotonic()
                time.sleep(0.3)
                names.append(late)
                patch_name(ca, path, late)
                time.sleep(1.0)
            records = readers.records
            assert {r[2] for r in records} == {"A", "B", "C"}
            assert any(r[3] == late for r in records)
            bad = older_after_newer(records, names)
            # The one window by design: an instance that has not resubscribed yet may serve
            # the name before ``early`` (its entry younger than the bound) until it does.
            window = [
                (read, seen) for read, seen in bad if seen[3] == early and read[3] == names[-3]
            ]
            assert bad == window, [x for x in bad if x not in window][:5]
            first_early = min(r[1] for r in records if r[3] == early)
            lag = max((read[1] - first_early for read, _ in window), default=0.0)
            assert lag <= BOUND + MARGIN
            print(
                f"Redis back: every instance resubscribed within {resubscribed - returned:.3f} s "
                f"(as polled); {len(records)} reads on A, B, C. A write 0.1 s after the return: "
                f"{len(window)} reads of the name before it after one had seen it, for "
                f"{lag * 1000:.0f} ms; a write once all had resubscribed: none, and no read "
                "ever older than one already seen otherwise"
            )
        finally:
            if server.proc is None:
                server.start()
            sql(test_db_dsn, "UPDATE products SET name = $2 WHERE id = $1::uuid", pid, original)
            ca.post("/admin/cache/purge", json={"tags": [f"product:{pid}"]})


def test_after_redis_returns_with_its_data_no_reader_sees_an_older_name(
    trio: tuple[PrivateRedis, list[Gateway]], product_ids: list[str], test_db_dsn: str
) -> None:
    """Redis is restarted with its data (saved before it stops): the L2 entry of the old name,
    which the invalidation that failed during the outage never deleted, comes back with it and
    must not be served when the instances resubscribe."""
    server, (a, b, c) = trio
    pid = product_ids[13]
    path = f"/api/v1/products/{pid}"
    tag = secrets.token_hex(3)
    with (
        httpx.Client(base_url=a.url, timeout=10, headers=admin_headers(a)) as ca,
        httpx.Client(base_url=b.url, timeout=10) as cb,
        httpx.Client(base_url=c.url, timeout=10) as cc,
    ):
        original = ca.get(path).json()["name"]
        try:
            wait_for(lambda: cb.get(path).headers["x-cache"] == "hit-l2")  # stored in L2
            assert cc.get(path).json()["name"] == original
            with server.client() as r:
                r.save()  # the restart below loads this dump: L2 as it is now,
                assert r.keys("*{cache}:e:*")  # the old name's entry in it
            server.stop()
            wait_for(lambda: all(metric(g, "cygate_cache_subscribed") == 0 for g in trio[1]))
            name = f"restarted-{tag}"
            patch_name(ca, path, name)
            written = time.monotonic()
            wait_for(lambda: cb.get(path).json()["name"] == name, BOUND + MARGIN)
            wait_for(lambda: cc.get(path).json()["name"] == name, BOUND + MARGIN)
            seen = time.monotonic() - written
            with Readers({"A": a, "B": b, "C": c}, path) as readers:
                time.sleep(0.2)
                # The old entry is back in L2, until A's resend of its missed invalidation
                # deletes it (not asserted here: on a loaded machine that resend can come
                # before a look from this thread; the dump above was checked instead).
                server.start()
                wait_for(lambda: all(metric(g, "cygate_cache_subscribed") == 1 for g in trio[1]))
                time.sleep(1.5)  # (past A's resend of its missed invalidation)
            records = readers.records
            assert {r[2] for r in records} == {"A", "B", "C"}
            old = [r for r in records if r[3] != name]
            assert not old, old[:5]
            print(
                f"\nRedis restarted with its data: the write seen on B and C within {seen:.3f} s "
                f"of A's answer; after the restart {len(records)} reads on A, B, C, none with "
                "the old name"
            )
        finally:
            if server.proc is None:
                server.start()
            sql(test_db_dsn, "UPDATE products SET name = $2 WHERE id = $1::uuid", pid, original)
            ca.post("/admin/cache/purge", json={"tags": [f"product:{pid}"]})
