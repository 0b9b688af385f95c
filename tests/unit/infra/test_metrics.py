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
