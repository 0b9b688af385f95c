"""A real Prometheus (the Debian binary) scrapes the suite's gateway and answers queries about it;
the gateway's exposition carries the families the alert rules and the dashboard read."""

from __future__ import annotations

import pathlib
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from tests.acceptance.conftest import Gateway, free_port

pytestmark = pytest.mark.once

RULES = pathlib.Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "rules.yml"


@pytest.fixture(scope="module")
def prometheus(gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not found: `scripts/services.sh up` installs it (Debian package)")
    home = tmp_path_factory.mktemp("prometheus")
    shutil.copy(RULES, home / "rules.yml")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yml"],
        "scrape_configs": [
            {
                "job_name": "cygate",
                "static_configs": [{"targets": [gateway.url.removeprefix("http://")]}],
            }
        ],
    }
    (home / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (home / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={home / 'prometheus.yml'}",
         f"--storage.tsdb.path={home / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
         "--storage.tsdb.retention.time=1h", "--log.level=warn"],
        cwd=home, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (home / "prometheus.log").read_text()
            try:
                if httpx.get(url + "/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "prometheus not ready in 30 s"
            time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def query_until(url: str, promql: str, timeout: float = 20) -> list[dict[str, Any]]:
    """The instant vector of ``promql`` once it is not empty."""
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(url + "/api/v1/query", params={"query": promql}, timeout=5)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "success", body
        if body["data"]["result"]:
            return list(body["data"]["result"])
        assert time.monotonic() < deadline, f"no result for {promql}"
        time.sleep(0.25)


def test_prometheus_scrapes_the_gateway_and_answers_a_query(
    gateway: Gateway, prometheus: str
) -> None:
    with gateway.client() as c:
        for _ in range(5):
            assert c.get("/healthz").status_code == 200
    [up] = query_until(prometheus, 'up{job="cygate"} == 1')
    assert up["value"][1] == "1"
    result = query_until(prometheus, 'cygate_http_requests_total{route="GET /healthz"}')
    assert sum(float(s["value"][1]) for s in result) >= 5
    assert {s["metric"]["job"] for s in result} == {"cygate"}
    [pg] = query_until(prometheus, "cygate_postgres_up")
    assert pg["value"][1] == "1"
    # the rules load in a real Prometheus, and none of them fires against a healthy gateway
    r = httpx.get(prometheus + "/api/v1/rules", timeout=5).json()
    rules = [rule for g in r["data"]["groups"] for rule in g["rules"]]
    assert rules and all(rule["health"] != "err" for rule in rules), rules
    assert not [rule["name"] for rule in rules if rule.get("state") == "firing"]
    states = {rule["name"]: rule.get("state") for rule in rules if rule["type"] == "alerting"}
    assert states["CygatePostgresDown"] == states["CygateRedisDown"] == "inactive", states


def test_gateway_exposes_the_families_the_alerts_read(gateway: Gateway) -> None:
    with gateway.client() as c:
        text = c.get("/metrics").text
    for name in (
        "cygate_postgres_up 1\n",
        "cygate_redis_up 1\n",
        "# TYPE cygate_events_outbox_lag_seconds gauge",
        "# TYPE cygate_events_outbox_pending gauge",
        "# TYPE cygate_process_cpu_seconds_total counter",
        "# TYPE cygate_cpu_cores gauge",
        "# TYPE cygate_db_pool_max gauge",
        "# TYPE cygate_event_loop_lag_seconds histogram",
        'cygate_event_loop_lag_seconds_bucket{le="+Inf"}',
    ):
        assert name in text, name


def test_gateway_exposition_parses_into_declared_families(gateway: Gateway) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from cygate.infra.metrics import FAMILIES, REQUEST_FAMILIES, SCRAPE_GAUGES

    declared = {
        (name.removesuffix("_total") if kind == "counter" else name): kind
        for name, (kind, _help, _labels) in {**FAMILIES, **REQUEST_FAMILIES}.items()
    } | dict.fromkeys(SCRAPE_GAUGES, "gauge")
    with gateway.client() as c:
        text = c.get("/metrics").text
    families = list(text_string_to_metric_families(text))
    assert families
    for family in families:
        assert declared.get(family.name) == family.type, (family.name, family.type)
    names = {f.name for f in families}
    assert {"cygate_http_requests", "cygate_process_cpu_seconds", "cygate_postgres_up"} <= names
