"""The load tools' pure parts: durations, shapes as rates over time, the SLO groups and gate,
Zipf popularity, the capacity verdict and the summary (no locust, no load)."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
from charts import summary_table, write_all
from popularity import Zipf, queries_from_names
from shapes import ParamError, load_params, parse_duration
from slo import GROUPS, Limits, group_of, judge, parse_overrides
from tool import capacity_table, step_verdict

import load_helpers  # noqa: F401  (puts loadtests/ on the path)

pytestmark = pytest.mark.once


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("45s", 45), ("5m", 300), ("1h30m", 5400), ("2h", 7200)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration("LOAD_RUN_TIME", text) == seconds


@pytest.mark.parametrize("text", ["abc", "", "0", "0s", "-5", "5x", "1.5m", "m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ParamError, match="LOAD_RUN_TIME"):
        parse_duration("LOAD_RUN_TIME", text)


def _shape(name: str, **env: str):  # type: ignore[no-untyped-def]
    import shapes

    params = load_params({"LOAD_SHAPE": name, **env})
    cls = {"steady": shapes.SteadyShape, "step": shapes.StepShape,
           "spike": shapes.SpikeShape, "soak": shapes.SoakShape}[name]  # fmt: skip
    shape = cls()
    shape.params, shape.per_user = params, 5.0
    return shape


def test_steady_holds_the_rate_after_the_ramp_then_ends() -> None:
    shape = _shape("steady", LOAD_RATE="1000", LOAD_RUN_TIME="60", LOAD_RAMP="10")
    assert shape.level(0) == (200, 20.0)  # 1000 req/s / 5 per user, reached in 10 s
    assert shape.level(65) == (200, 20.0)  # the same level: the same spawn rate
    assert shape.level(70) is None


def test_a_new_step_is_ramped_from_the_previous_level() -> None:
    shape = _shape("step", LOAD_RATE="1000", LOAD_RUN_TIME="100", LOAD_STEPS="4", LOAD_RAMP="5")
    assert shape.level(0) == (50, 10.0)
    assert shape.level(25) == (100, 10.0)
    assert shape.level(50) == (150, 10.0)
    assert shape.level(99) == (200, 10.0)


def test_step_climbs_in_equal_steps() -> None:
    shape = _shape("step", LOAD_RATE="1000", LOAD_RUN_TIME="100", LOAD_STEPS="4")
    assert [shape.rate_at(t) for t in (0, 24, 25, 50, 99)] == [250, 250, 500, 750, 1000]
    assert shape.rate_at(100) is None


def test_spike_is_a_quarter_then_the_full_rate_in_the_middle_fifth() -> None:
    shape = _shape("spike", LOAD_RATE="800", LOAD_RUN_TIME="100")
    assert [shape.rate_at(t) for t in (0, 39, 40, 59, 60, 99)] == [200, 200, 800, 800, 200, 200]
    assert shape.rate_at(100) is None


def test_soak_is_a_long_steady_shape() -> None:
    assert load_params({"LOAD_SHAPE": "soak"}).run_time == 7200
    assert _shape("soak", LOAD_RATE="100").rate_at(3600) == 100


@pytest.mark.parametrize(
    ("method", "name", "group"),
    [
        ("GET", "/api/v1/products/{id}", "browse"),
        ("GET", "/api/v1/products/{id} (signed in)", "browse"),
        ("GET", "/api/v1/products?cursor={cursor}", "browse"),
        ("GET", "/api/v1/categories", "browse"),
        ("GET", "/api/v1/search?q={q}", "search"),
        ("GET", "/api/v1/users/me", "account"),
        ("GET", "/api/v1/orders", "account"),
        ("GET", "/api/v1/orders/{id}", "account"),
        ("POST", "/api/v1/auth/login", "sign_in"),
        ("POST", "/api/v1/auth/register", "sign_in"),
        ("POST", "/api/v1/auth/token (refresh_token)", "auth"),
        ("POST", "/api/v1/orders", "orders"),
        ("POST", "/api/v1/orders/{id}/cancel", "orders"),
        ("POST", "/api/v1/orders/{id}/payments", "payments"),
        ("PATCH", "/api/v1/products/{id}", "catalog_admin"),
        ("GET", "/api/v1/products/{id} (manager)", "catalog_admin"),
        ("GET", "/metrics", "other"),
    ],
)
def test_endpoint_groups(method: str, name: str, group: str) -> None:
    assert group_of(method, name) == group


def test_slo_defaults_and_overrides() -> None:
    limits = parse_overrides("", Limits())
    assert set(limits) == set(GROUPS)
    assert limits["browse"] == Limits(p95=200.0, p99=500.0, errors=0.001)
    assert (limits["sign_in"].p95, limits["sign_in"].p99) == (500.0, 1000.0)
    changed = parse_overrides("search.p95=300, orders.p99=off,sign_in.p95=150", Limits())
    assert changed["search"] == Limits(p95=300.0)
    assert changed["orders"].p99 is None
    assert changed["sign_in"].p95 == 150.0
    assert changed["browse"] == Limits()


@pytest.mark.parametrize(
    "text", ["search", "search.p95", "cart.p95=1", "search.p90=1", "search.p95=-1", "search.p95=x"]
)
def test_bad_slo_overrides(text: str) -> None:
    with pytest.raises(ValueError, match="LOAD_SLO item"):
        parse_overrides(text, Limits())


def _figures(p95: float, p99: float, fail_ratio: float = 0.0) -> dict[str, object]:
    return {"requests": 1000, "rps": 100.0, "p50_ms": 5, "p95_ms": p95, "p99_ms": p99,
            "fail_ratio": fail_ratio}  # fmt: skip


def test_the_gate_names_each_breach_per_group() -> None:
    limits = parse_overrides("", Limits())
    groups = {
        "browse": _figures(150, 400),
        "search": _figures(250, 600),
        "orders": _figures(20, 40, fail_ratio=0.002),
        "sign_in": _figures(450, 900),
    }
    assert judge(groups, limits) == [
        "search: p95 250 ms > 200 ms",
        "search: p99 600 ms > 500 ms",
        "orders: errors 0.0020 > 0.001",
    ]
    assert judge({"browse": _figures(199, 499, 0.001)}, limits) == []


def test_zipf_is_the_same_order_everywhere_and_skewed() -> None:
    items = [f"p{i}" for i in range(1000)]
    a, b = Zipf(items, 1.0, 7), Zipf(list(reversed(items)), 1.0, 7)
    assert a.items == b.items  # every load process agrees on the popular ones
    rng = random.Random(1)
    draws = [a.draw(rng) for _ in range(20_000)]
    top = a.items[0]
    harmonic = sum(1 / r for r in range(1, 1001))
    assert draws.count(top) / len(draws) == pytest.approx(1 / harmonic, rel=0.1)
    assert a.share_of_top(10) == pytest.approx(sum(1 / r for r in range(1, 11)) / harmonic)
    assert len(set(draws)) > 500  # the tail is drawn too (cache misses)
    assert Zipf(items, 0.0, 7).share_of_top(100) == pytest.approx(0.1)  # s = 0: uniform


def test_zipf_needs_items() -> None:
    with pytest.raises(ValueError):
        Zipf([], 1.0, 0)


def test_queries_come_from_product_names() -> None:
    assert queries_from_names(["Compact Steel Kettle", "Smart Lamp"]) == [
        "compact", "compact kettle", "kettle", "lamp", "smart", "smart lamp", "steel",
        "steel kettle",
    ]  # fmt: skip


def test_a_capacity_step_needs_the_slo_and_the_offered_rate() -> None:
    ok = {"problems": [], "total": {"rps": 950.0}}
    assert step_verdict(ok, 1000, 0.9) == []
    assert step_verdict({"problems": [], "total": {"rps": 850.0}}, 1000, 0.9) == [
        "achieved 850 req/s < 0.9 x 1000 offered"
    ]
    slow = {"problems": ["search: p95 250 ms > 200 ms"], "total": {"rps": 1000.0}}
    assert step_verdict(slow, 1000, 0.9) == ["search: p95 250 ms > 200 ms"]
    step = {"offered": 1000, "achieved": 990.0, "p50_ms": 4, "p95_ms": 30, "p99_ms": 80,
            "fail_ratio": 0.0, "sustainable": True, "problems": []}  # fmt: skip
    table = capacity_table({"steps": [step], "highest_sustainable": step})
    assert "highest sustainable rate: 1000 req/s offered (990 achieved)" in table
    assert "none" in capacity_table({"steps": [], "highest_sustainable": None})


def test_charts_and_the_summary_from_a_run(tmp_path: Path) -> None:
    header = ("Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,"
              "98%,99%,99.9%,99.99%,100%,Total Request Count,Total Failure Count")  # fmt: skip
    rows = [f"{1000 + t},{10},,Aggregated,{100 + t},{t % 2},5,6,7,8,9,{10 + t},11,{20 + t},"
            f"30,30,30,{100 * t},{t}" for t in range(5)]  # fmt: skip
    rows.insert(1, "1000,10,GET,/api/v1/products/{id},1,0,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,"
                   "N/A,N/A,N/A,1,0")  # fmt: skip
    (tmp_path / "locust_stats_history.csv").write_text("\n".join([header, *rows]) + "\n")
    report = {
        "passed": False,
        "problems": ["search: p95 250 ms > 200 ms"],
        "limits": {"search": {"p95": 200.0, "p99": None, "errors": 0.001}},
        "groups": {"search": _figures(250, 300)},
        "total": _figures(250, 300),
        "outcomes": {"orders_placed": 3},
    }
    (tmp_path / "slo.json").write_text(json.dumps(report))
    pngs, summary = write_all(tmp_path, "test")
    assert sorted(p.name for p in pngs) == ["errors.png", "latency.png", "rate.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert summary is not None
    assert "| search | 1000 | 100.0 | 5 | 250 | 300 | 0.00 % | 200/off/0.001 |" in summary
    assert "SLO FAIL: search: p95 250 ms > 200 ms" in summary
    assert summary == (tmp_path / "summary.md").read_text()
    assert summary_table({**report, "passed": True, "problems": []}).count("SLO PASS") == 1


def test_the_tools_import_without_locust() -> None:
    """locust patches the standard library (gevent) when imported: the tools' own modules and
    these tests must not pull it into the test process."""
    assert "locust" not in sys.modules
