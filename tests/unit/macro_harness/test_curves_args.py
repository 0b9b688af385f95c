"""The curves tool refuses bad input with one line on stderr and a non-zero exit (no gateway,
no database needed)."""

from __future__ import annotations

import pytest
from benchmarks.macro.curves import UsageError, main, median_row, parse_counts, parse_sizes
from benchmarks.macro.procs import free_port

pytestmark = pytest.mark.once


def test_sizes_take_k_and_m_and_come_out_ascending_and_distinct() -> None:
    assert parse_sizes("1m,10k, 100K,10000,2500") == [2500, 10_000, 100_000, 1_000_000]


def test_connection_counts_come_out_ascending_and_distinct() -> None:
    assert parse_counts("64,1,2,2,16") == [1, 2, 16, 64]


@pytest.mark.parametrize("bad", ["abc", "0", "-5", "10k,", "1.5m", "0k"])
def test_a_size_that_is_not_a_positive_count_is_refused(bad: str) -> None:
    with pytest.raises(UsageError, match="--sizes"):
        parse_sizes(bad)


@pytest.mark.parametrize("bad", ["abc", "0", "-1", "1,x", "513"])
def test_a_connection_count_outside_1_to_512_is_refused(bad: str) -> None:
    with pytest.raises(UsageError, match="--connections"):
        parse_counts(bad)


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("curves: "), err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["sideways"], "invalid choice: 'sideways'"),
        ([], "required"),
        (["catalog", "--sizes", "abc"], "'abc' is not a count"),
        (["catalog", "--sizes", "0"], "must be at least 1"),
        (["catalog", "--sizes=-10k"], "'-10k' is not a count"),
        (["catalog", "--sizes", "-10k"], "expected one argument"),
        (["catalog", "--rate", "0"], "must be above 0"),
        (["catalog", "--duration", "abc"], "'abc' is not a number"),
        (["catalog", "--search-rate", "-3"], "must be above 0"),
        (["buyers", "--connections", "0,4"], "must be 1 to 512"),
        (["buyers", "--duration", "-1"], "must be above 0"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    assert says in _one_line_error(capsys, argv)


@pytest.mark.parametrize("curve", ["catalog", "buyers"])
def test_an_unreachable_database_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, curve: str
) -> None:
    # NOTE: a port nothing listens on (just freed): the connection is refused at once.
    monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres@127.0.0.1:{free_port()}/postgres")
    assert "cannot reach PostgreSQL at DATABASE_URL" in _one_line_error(capsys, [curve])


def test_rounds_of_one_size_become_one_row_of_medians() -> None:
    runs = [
        {"products": 10, "read": {"p99_ms": p99, "rate": 400.0, "note": "x"}, "load": f"r{n}"}
        for n, p99 in enumerate([9.0, 1.0, 4.0])
    ]
    row = median_row(runs)
    assert row["read"] == {"p99_ms": 4.0, "rate": 400.0, "note": "x"}
    assert row["products"] == 10 and row["rounds"] == runs
    assert median_row(runs[:1])["rounds"] == []
