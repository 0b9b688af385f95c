"""The macro harness's rounds (``--rounds N``): ratios are paired within a round, the table
shows each contender's median round, and the goal table gives median, range and ceiling."""

from __future__ import annotations

import pytest
from benchmarks.macro.report import Failure, Result, cache_goals, markdown_table
from benchmarks.macro.rounds import Paired, Rounds
from benchmarks.macro.run import proxy_overhead

pytestmark = pytest.mark.once


def _result(name: str, rps: float, p50: float = 1.0, p99: float = 2.0) -> Result:
    return Result(
        name=name,
        summary="",
        kind="http",
        requests=int(rps * 10),
        duration_s=10.0,
        rps=rps,
        p50_ms=p50,
        p90_ms=p50,
        p99_ms=p99,
        cpu_us_per_req=1e6 / rps,
        pg_cpu_us_per_req=0.0,
        errors=0,
        rss_mib=50.0,
    )


def _rounds(*runs: dict[str, float]) -> Rounds:
    rounds = Rounds()
    for run in runs:
        rounds.start()
        for name, rps in run.items():
            rounds.add(_result(name, rps))
    return rounds


def test_one_round_reads_like_a_plain_number() -> None:
    assert Paired((0.7123,)).text(".2f", "x") == "0.71x"


def test_several_rounds_give_the_median_and_the_range() -> None:
    assert Paired((0.66, 0.74, 0.71)).text(".2f", "x") == "0.71x (0.66x to 0.74x, 3 rounds)"


def test_ratios_are_paired_within_a_round() -> None:
    # The machine was twice as fast in round 2: each round's ratio is 0.5, whereas medians of
    # req/s taken separately (2,000 / 3,000) would say 0.67.
    rounds = _rounds({"a": 1000, "b": 2000}, {"a": 2000, "b": 4000}, {"a": 3000, "b": 6000})
    ratio = rounds.ratio("a", "b")
    assert ratio is not None
    assert ratio.values == (0.5, 0.5, 0.5)


def test_a_round_where_one_side_failed_is_left_out() -> None:
    rounds = _rounds({"a": 1000, "b": 2000}, {"b": 4000}, {"a": 900, "b": 1000})
    ratio = rounds.ratio("a", "b")
    assert ratio is not None
    assert ratio.values == (0.5, 0.9)
    assert rounds.ratio("a", "missing") is None


def test_the_representative_is_the_median_round_with_every_rounds_rps() -> None:
    rounds = _rounds({"a": 300}, {"a": 100}, {"a": 200}, {"a": 400})
    (a,) = rounds.representatives(["a"])
    assert a.rps == 200  # the lower of the two middle rounds when their number is even
    assert a.rounds_rps == [300, 100, 200, 400]
    assert rounds.representatives(["nobody"]) == []


def test_the_goal_table_judges_the_median_and_shows_the_ceiling() -> None:
    rounds = _rounds(
        {"cygate-full": 700, "granian-same-bytes": 1000, "litestar-stock": 100},
        {"cygate-full": 650, "granian-same-bytes": 1000, "litestar-stock": 100},
        {"cygate-full": 1500, "granian-same-bytes": 2000, "litestar-stock": 200},
    )
    table = cache_goals(rounds)
    lines = {line.split(" | ")[0]: line for line in table.splitlines() if line.startswith("| ")}
    floor = lines["| granian-same-bytes"]
    assert "0.70x (0.65x to 0.75x, 3 rounds)" in floor
    assert "| >= 0.7x | yes | - |" in floor
    stock = lines["| litestar-stock"]
    # cygate-full is 7x, 6.5x, 7.5x stock; the floor itself only 10x: the 15x goal is out of reach
    assert "7.00x (6.50x to 7.50x, 3 rounds) | >= 15x | no | 10.00x (10.00x to 10.00x" in stock
    assert "p99 goal < 5 ms: 2.00 ms (2.00 ms to 2.00 ms, 3 rounds), met; the floor" in table


def test_no_goal_table_without_cygate_full() -> None:
    assert cache_goals(_rounds({"litestar-stock": 100})) == ""


def test_added_latency_is_the_median_of_each_rounds_difference() -> None:
    rounds = Rounds()
    for direct_p50, proxy_p50 in ((1.0, 2.5), (3.0, 4.0), (2.0, 3.2)):
        rounds.start()
        rounds.add(_result("upstream-direct", 10_000, p50=direct_p50))
        rounds.add(_result("cygate-proxy", 5_000, p50=proxy_p50))
    text = proxy_overhead(rounds)
    row = next(line for line in text.splitlines() if line.startswith("| cygate-proxy"))
    assert "+1.20 (+1.00 to +1.50, 3 rounds)" in row


def test_the_table_shows_the_range_of_req_s_only_for_several_rounds() -> None:
    one = markdown_table(_rounds({"a": 1000}).representatives(["a"]), [], "a")
    assert "range" not in one
    three = _rounds({"a": 1000}, {"a": 1200}, {"a": 900}).representatives(["a"])
    table = markdown_table(three, [Failure("b", "FAILED: boom")], "a")
    assert "req/s range" in table
    assert " 1,000 |" in table and "900 to 1,200" in table
    assert table.splitlines()[-1].count("|") == table.splitlines()[0].count("|")


def test_an_open_loop_rate_past_a_proxys_saturation_is_flagged() -> None:
    rounds = Rounds()
    rounds.start()
    for name, rps, p50 in (("upstream-direct", 60_000, 0.06), ("nginx-proxy", 24_000, 0.11),
                           ("cygate-proxy", 8_000, 800.0)):  # fmt: skip
        result = _result(name, rps)
        result.open_loop = {"rate": 10_000, "achieved_rps": 10_000, "p50_ms": p50,
                            "p99_ms": 2 * p50, "late": 0, "cpu_us_per_req": 50.0}  # fmt: skip
        rounds.add(result)
    text = proxy_overhead(rounds)
    assert "| cygate-proxy (saturated) |" in text and "| nginx-proxy |" in text
    assert "lower `--open-rate`" in text
