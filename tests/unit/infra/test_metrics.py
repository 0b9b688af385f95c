"""Metrics: counting, histogram buckets, and summing snapshots of several workers."""

from __future__ import annotations

import pathlib

from cygate.infra.metrics import BUCKETS, Metrics


def test_observe_and_render() -> None:
    m = Metrics()
    m.observe("GET /x", "GET", 200, 0.0003)
    m.observe("GET /x", "GET", 200, 0.2)
    m.observe("GET /x", "GET", 404, 99.0)
    text = m.render()
    assert 'cygate_http_requests_total{route="GET /x",method="GET",status="200"} 2' in text
    assert 'cygate_http_requests_total{route="GET /x",method="GET",status="404"} 1' in text
    # cumulative buckets: 0.0003 in the first, 0.2 from 0.25 on, 99 only in +Inf
    assert f'route="GET /x",method="GET",status="200",le="{BUCKETS[0]}"}} 1' in text
    assert 'route="GET /x",method="GET",status="200",le="0.25"} 2' in text
    assert 'route="GET /x",method="GET",status="404",le="10.0"} 0' in text
    assert 'route="GET /x",method="GET",status="404",le="+Inf"} 1' in text


def test_label_values_are_escaped() -> None:
    m = Metrics()
    m.observe('GET /a"b\\c', "GET", 200, 0.001)
    assert 'route="GET /a\\"b\\\\c"' in m.render()


def test_workers_are_summed(tmp_path: pathlib.Path) -> None:
    a, b = Metrics(tmp_path), Metrics(tmp_path)
    # Two "workers" in one process: give the second its own file name.
    b._path = tmp_path / "worker-other.json"
    for _ in range(3):
        a.observe("GET /x", "GET", 200, 0.001)
    for _ in range(4):
        b.observe("GET /x", "GET", 200, 0.001)
    b.flush()
    series = a.collect()
    assert series[("GET /x", "GET", 200)][0] == 7


def test_unreadable_snapshot_is_skipped(tmp_path: pathlib.Path) -> None:
    (tmp_path / "worker-broken.json").write_text("{not json")
    m = Metrics(tmp_path)
    m.observe("GET /x", "GET", 200, 0.001)
    assert m.collect()[("GET /x", "GET", 200)][0] == 1


def test_counters_are_summed_over_workers(tmp_path: pathlib.Path) -> None:
    a, b = Metrics(tmp_path), Metrics(tmp_path)
    b._path = tmp_path / "worker-other.json"
    a.counter("cygate_cache_requests_total", result="hit-l1").value += 3
    b.counter("cygate_cache_requests_total", result="hit-l1").value += 1234567
    b.counter("cygate_cache_loads_total").value += 1
    b.inc("cygate_upstream_retries_total", ("orders", "GET /x"))
    b.flush()
    text = a.render()
    assert "# TYPE cygate_cache_requests_total counter" in text
    assert 'cygate_cache_requests_total{result="hit-l1"} 1234570' in text
    assert "cygate_cache_loads_total 1" in text
    assert text.count("# TYPE cygate_cache_requests_total counter") == 1
    assert 'cygate_upstream_retries_total{upstream="orders",route="GET /x"} 1' in text
    assert a.counter("cygate_cache_loads_total").value == 0  # this worker's own value
    assert a.collect() == {}  # counters are not request series


def test_bound_counters_refuse_unknown_labels() -> None:
    import pytest

    with pytest.raises(ValueError, match="takes labels"):
        Metrics().counter("cygate_cache_requests_total", outcome="x")


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_gauges_are_summed_over_live_workers_only(tmp_path: pathlib.Path) -> None:
    a, b, dead = Metrics(tmp_path), Metrics(tmp_path), Metrics(tmp_path)
    b._path = tmp_path / "worker-other.json"  # no pid in the name: taken as alive
    dead._path = tmp_path / f"worker-{_dead_pid()}.json"
    for m, state in ((a, "open"), (b, "closed"), (dead, "open")):
        m.add_gauge_source(
            lambda state=state: [
                ("cygate_upstream_breaker_state", ("pay", s), 1.0 if s == state else 0.0)
                for s in ("closed", "open", "half_open")
            ]
        )
        m.inc("cygate_upstream_retries_total", ("pay", "GET /x"))
    b.flush()
    dead.flush()
    text = a.render()
    assert "# TYPE cygate_upstream_breaker_state gauge" in text
    # the dead worker's breaker no longer counts; its counters do
    assert 'cygate_upstream_breaker_state{upstream="pay",state="open"} 1' in text
    assert 'cygate_upstream_breaker_state{upstream="pay",state="closed"} 1' in text
    assert 'cygate_upstream_retries_total{upstream="pay",route="GET /x"} 3' in text


def test_cpu_time_and_scrape_gauges_are_exposed() -> None:
    m = Metrics()
    sum(i * i for i in range(200_000))  # some CPU time of this process
    text = m.render({"cygate_postgres_up": 1, "cygate_events_outbox_lag_seconds": 0.25})
    assert "# TYPE cygate_process_cpu_seconds_total counter" in text
    line = next(x for x in text.splitlines() if x.startswith("cygate_process_cpu_seconds_total "))
    assert float(line.split()[1]) > 0
    assert "# HELP cygate_postgres_up 1 when PostgreSQL answered" in text
    assert "cygate_postgres_up 1\n" in text
    assert "cygate_events_outbox_lag_seconds 0.25\n" in text


async def test_event_loop_lag_is_observed_without_labels(tmp_path: pathlib.Path) -> None:
    import asyncio
    import time

    m = Metrics(tmp_path)
    m.start(interval=0.02)
    try:
        await asyncio.sleep(0.03)
        time.sleep(0.06)  # noqa: ASYNC251 - the loop blocked on purpose: the next tick is late
        await asyncio.sleep(0.05)
    finally:
        await m.stop()
    text = m.render()
    assert "# TYPE cygate_event_loop_lag_seconds histogram" in text
    assert 'cygate_event_loop_lag_seconds_bucket{le="+Inf"} ' in text
    assert "cygate_event_loop_lag_seconds_count " in text
    # the blocked tick lands above 25 ms
    buckets = {
        x.split('le="')[1].split('"')[0]: int(x.rsplit(" ", 1)[1])
        for x in text.splitlines()
        if x.startswith("cygate_event_loop_lag_seconds_bucket")
    }
    assert buckets["+Inf"] > buckets["0.025"]
