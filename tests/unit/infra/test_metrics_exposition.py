"""/metrics read back with the reference parser (prometheus_client.parser): every declared family
has the declared type and labels, histograms are cumulative and end in +Inf == _count, and label
values survive escaping."""

from __future__ import annotations

import pathlib

from prometheus_client.parser import text_string_to_metric_families

from cygate.infra.metrics import FAMILIES, REQUEST_FAMILIES, SCRAPE_GAUGES, Metrics


def family_name(name: str, kind: str) -> str:
    """The parser's name of a family: a counter's without ``_total``."""
    return name.removesuffix("_total") if kind == "counter" else name


def populated(directory: pathlib.Path | None = None) -> Metrics:
    m = Metrics(directory)
    m.observe("GET /api/v1/products/{product_id:uuid}", "GET", 200, 0.004)
    m.observe("GET /api/v1/products/{product_id:uuid}", "GET", 200, 0.3)
    m.observe("<unmatched>", "GET", 404, 0.0001)
    for family, (kind, _help, labels) in FAMILIES.items():
        values = tuple(f"{n}-value" for n in labels)
        if kind == "counter":
            m.inc(family, values, 2)
        elif kind == "histogram":
            m.observe_family(family, values, 0.02)
            m.observe_family(family, values, 7.0)
    m.add_gauge_source(
        lambda: [("cygate_upstream_breaker_state", ("svc", s), float(s == "open")) for s in
                 ("closed", "open", "half_open")]
    )  # fmt: skip
    others = [
        (family, tuple(f"{n}-value" for n in labels), 3.0)
        for family, (kind, _help, labels) in FAMILIES.items()
        if kind == "gauge" and family != "cygate_upstream_breaker_state"
    ]
    m.add_gauge_source(lambda: others)
    return m


def parse(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_every_declared_family_parses_with_its_type_and_labels(tmp_path: pathlib.Path) -> None:
    m = populated(tmp_path)
    text = m.render({name: 1 for name in SCRAPE_GAUGES})
    families = parse(text)
    declared = {
        family_name(name, kind): (kind, labels)
        for name, (kind, _help, labels) in {**FAMILIES, **REQUEST_FAMILIES}.items()
    } | {name: ("gauge", ()) for name in SCRAPE_GAUGES}
    assert set(families) == set(declared)
    for name, family in families.items():
        kind, labels = declared[name]
        assert family.type == kind, name  # type: ignore[attr-defined]
        assert family.documentation, name  # type: ignore[attr-defined]
        samples = family.samples  # type: ignore[attr-defined]
        assert samples, name
        for sample in samples:
            assert set(sample.labels) - {"le"} == set(labels), (name, sample)
            if kind == "counter":
                assert sample.name == name + "_total"
        if kind == "histogram":
            check_histogram(name, samples)


def check_histogram(name: str, samples: list) -> None:  # type: ignore[type-arg]
    series: dict[tuple[tuple[str, str], ...], dict[str, list[tuple[str, float]] | float]] = {}
    for s in samples:
        key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
        entry = series.setdefault(key, {"buckets": []})
        if s.name == name + "_bucket":
            entry["buckets"].append((s.labels["le"], s.value))  # type: ignore[union-attr]
        else:
            entry[s.name.removeprefix(name)] = s.value
    for key, entry in series.items():
        buckets = entry["buckets"]
        assert isinstance(buckets, list)
        bounds = [float(le) for le, _ in buckets]
        counts = [v for _, v in buckets]
        assert bounds == sorted(bounds) and bounds[-1] == float("inf"), (name, key)
        assert counts == sorted(counts), (name, key)  # cumulative
        assert counts[-1] == entry["_count"], (name, key)
        assert isinstance(entry["_sum"], float)


def test_request_series_values_read_back() -> None:
    families = parse(populated().render())
    requests = families["cygate_http_requests"]
    by_labels = {
        (s.labels["route"], s.labels["status"]): s.value
        for s in requests.samples  # type: ignore[attr-defined]
    }
    assert by_labels == {
        ("GET /api/v1/products/{product_id:uuid}", "200"): 2,
        ("<unmatched>", "404"): 1,
    }
    hist = families["cygate_http_request_duration_seconds"]
    sums = [s.value for s in hist.samples if s.name.endswith("_sum")]  # type: ignore[attr-defined]
    assert round(sum(sums), 4) == 0.3041


def test_label_values_survive_escaping() -> None:
    m = Metrics()
    odd = 'GET /a"b\\c\nd'
    m.observe(odd, "GET", 200, 0.001)
    families = parse(m.render())
    [sample] = families["cygate_http_requests"].samples  # type: ignore[attr-defined]
    assert sample.labels["route"] == odd
