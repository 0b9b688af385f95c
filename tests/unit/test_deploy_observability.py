"""deploy/: the Prometheus configuration and alert rules pass promtool (syntax and the rules'
unit tests), and every PromQL expression of the rules and the Grafana dashboard names only
families the gateway exposes (cygate.infra.metrics declares them)."""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess
from collections.abc import Iterator

import pytest
import yaml

from cygate.infra.metrics import FAMILIES, REQUEST_FAMILIES, SCRAPE_GAUGES

pytestmark = pytest.mark.once

DEPLOY = pathlib.Path(__file__).resolve().parents[2] / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "cygate.json"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: `scripts/services.sh up` installs it (Debian: prometheus)")
    return path


def run_promtool(*args: str, cwd: pathlib.Path = PROMETHEUS) -> str:
    proc = subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    return out


def test_promtool_check_rules() -> None:
    out = run_promtool("check", "rules", "rules.yml")
    assert "SUCCESS" in out


def test_promtool_test_rules() -> None:
    out = run_promtool("test", "rules", "rules_test.yml")
    assert "SUCCESS" in out


def test_promtool_check_config(tmp_path: pathlib.Path) -> None:
    # The shipped config reads the metrics token from /etc/prometheus; promtool checks that the
    # file exists, so check a copy that points at a token file of its own.
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    token = tmp_path / "token"
    token.write_text("secret\n")
    for job in config["scrape_configs"]:
        job["authorization"]["credentials_file"] = str(token)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copy(PROMETHEUS / "rules.yml", tmp_path / "rules.yml")
    out = run_promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert "SUCCESS" in out


# -- family names in PromQL -------------------------------------------------------------------

_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan",
}  # fmt: skip


def exposed_names() -> set[str]:
    """Every sample name the gateway's /metrics can hold."""
    names = set(SCRAPE_GAUGES)
    for family, (kind, _help, _labels) in {**FAMILIES, **REQUEST_FAMILIES}.items():
        names.add(family)
        if kind == "histogram":
            names |= {family + "_bucket", family + "_sum", family + "_count"}
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: what is left after strings, label matchers,
    ranges, grouping clauses, function calls, keywords, variables and numbers are taken out."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\{?\w+\}?", "", expr)
    names = set()
    for m in re.finditer(r"(?<![\w.:])([A-Za-z_:][\w:]*)\s*(\()?", expr):
        if m.group(2) or m.group(1).lower() in _KEYWORDS:
            continue
        names.add(m.group(1))
    return names


def test_metric_names_are_found_in_expressions() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (route, le) (rate(x_bucket{a="b(c)"}[5m]))) / '
        "ignoring (result) group_left sum(y) > bool 0.5 and on (i) z offset 5m"
    )
    assert metric_names(expr) == {"x_bucket", "y", "z"}


def dashboard_exprs() -> Iterator[tuple[str, str]]:
    def walk(panels: list[dict[str, object]]) -> Iterator[tuple[str, str]]:
        for panel in panels:
            for target in panel.get("targets", []):  # type: ignore[attr-defined]
                yield str(panel.get("title")), target["expr"]
            yield from walk(panel.get("panels", []))  # type: ignore[arg-type]

    dash = json.loads(DASHBOARD.read_text())
    yield from walk(dash["panels"])
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", var["definition"])
            assert inner, var["definition"]
            yield f"variable {var['name']}", inner.group(1)


def test_dashboard_names_only_exposed_families() -> None:
    exposed = exposed_names()
    seen: set[str] = set()
    for title, expr in dashboard_exprs():
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr!r}"
        assert names <= exposed, f"{title}: {sorted(names - exposed)} not exposed by the gateway"
        seen |= names
    # the panels the dashboard promises
    for family in (
        "cygate_http_requests_total",
        "cygate_http_request_duration_seconds_bucket",
        "cygate_cache_requests_total",
        "cygate_ratelimit_decisions_total",
        "cygate_upstream_request_duration_seconds_bucket",
        "cygate_upstream_breaker_state",
        "cygate_db_pool_size",
        "cygate_events_outbox_lag_seconds",
        "cygate_worker_starts_total",
    ):
        assert family in seen, family


def test_rules_name_only_exposed_families() -> None:
    groups = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())["groups"]
    recorded = {r["record"] for g in groups for r in g["rules"] if "record" in r}
    allowed = exposed_names() | recorded | {"up"}  # up: Prometheus's own, per target
    alerts = set()
    for group in groups:
        for rule in group["rules"]:
            names = metric_names(rule["expr"])
            assert names and names <= allowed, (rule, sorted(names - allowed))
            alerts.add(rule.get("alert"))
    assert {
        "CygateLatencyP95High", "CygateErrorRatioHigh", "CygateCpuHigh", "CygateRedisDown",
        "CygatePostgresDown", "CygateCircuitBreakerOpen", "CygateOutboxLag",
    } <= alerts  # fmt: skip
