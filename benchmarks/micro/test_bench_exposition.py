"""One scrape's exposition: ``Metrics.render`` beside ``prometheus_client``'s ``generate_latest``.

Why ``/metrics`` writes its text itself: the same request series (counters and latency
histograms) rendered through ``prometheus_client``, as a custom collector over the worker's
collected series (the way its documentation adds values it does not count itself), then
``generate_latest``. Both run on the event loop of the worker answering the scrape. The series:
40 routes x (GET, HEAD) x (200, 304, 404, 429) = 320 request series, each a counter and a
16-bucket histogram. Both texts are read back with ``prometheus_client``'s parser and must hold
the same samples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from cygate.infra.metrics import BUCKETS, REQUEST_FAMILIES, Metrics

GROUP = "metrics: one scrape's exposition (320 request series)"
ROUTES = [f"GET /api/v1/r{i}/{{item_id:uuid}}" for i in range(40)]
LABELS = ["route", "method", "status"]


def _filled() -> Metrics:
    metrics = Metrics()
    for n, route in enumerate(ROUTES):
        for method in ("GET", "HEAD"):
            for status in (200, 304, 404, 429):
                for k in range(5):
                    metrics.observe(route, method, status, 0.0004 * (n + k + 1))
    return metrics


class _RequestCollector:
    """The worker's request series as ``prometheus_client`` metric families."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        series = sorted(self.metrics.collect().items())
        total = CounterMetricFamily(
            "cygate_http_requests_total",
            REQUEST_FAMILIES["cygate_http_requests_total"][1],
            labels=LABELS,
        )
        duration = HistogramMetricFamily(
            "cygate_http_request_duration_seconds",
            REQUEST_FAMILIES["cygate_http_request_duration_seconds"][1],
            labels=LABELS,
        )
        for (route, method, status), v in series:
            labels = [route, method, str(status)]
            total.add_metric(labels, v[0])
            cumulative = 0.0
            buckets: list[tuple[str, float]] = []
            for i, bound in enumerate(BUCKETS):
                cumulative += v[2 + i]
                buckets.append((str(bound), cumulative))
            buckets.append(("+Inf", v[0]))
            duration.add_metric(labels, buckets, sum_value=v[1])
        yield total
        yield duration


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The request families' samples of an exposition, by name and labels."""
    wanted = {"cygate_http_requests", "cygate_http_request_duration_seconds"}
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        if family.name in wanted
        for s in family.samples
    }


def _renderers(metrics: Metrics) -> dict[str, Callable[[], str]]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_RequestCollector(metrics))  # type: ignore[arg-type]
    return {
        "cygate": metrics.render,
        "prometheus_client": lambda: generate_latest(registry).decode(),
    }


def test_both_renderers_expose_the_same_samples() -> None:
    renderers = _renderers(_filled())
    ours = _samples(renderers["cygate"]())
    theirs = _samples(renderers["prometheus_client"]())
    assert len(ours) == 320 * (1 + len(BUCKETS) + 3)  # a counter; buckets, +Inf, sum, count
    assert ours.keys() == theirs.keys()
    for key, value in ours.items():
        assert theirs[key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.parametrize("renderer", ["cygate", "prometheus_client"])
def test_exposition(renderer: str, micro: Callable[..., Any]) -> None:
    render = _renderers(_filled())[renderer]
    assert "cygate_http_request_duration_seconds_bucket" in render()
    micro(render, group=GROUP, ops=1)
