"""Where the benchmark tools write their tables: the full ones into docs/benchmarks.md, the
headline (cygate-full, the floor, Litestar's hello-world, stock Litestar) into the README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from benchmarks import report_micro
from benchmarks.macro.report import (
    DOC_END,
    DOC_START,
    HEADLINE,
    HEADLINE_END,
    HEADLINE_START,
    Result,
    doc_block,
    headline,
    update_doc,
)
from benchmarks.macro.rounds import Rounds
from benchmarks.macro.run import DOC, README, _parse_args, write_docs

pytestmark = pytest.mark.once

ROOT = Path(__file__).resolve().parents[3]
MACHINE = {"cpu_model": "Some CPU", "cores": 2, "kernel": "6.1", "python": "3.11.7"}
DATED = re.compile(r"[0-9]{2}:[0-9]{2}|UTC|[Ss]ession|issue [0-9]")


def _result(name: str, rps: float) -> Result:
    return Result(
        name=name,
        summary="",
        kind="http",
        requests=int(rps * 10),
        duration_s=10.0,
        rps=rps,
        p50_ms=1.0,
        p90_ms=1.5,
        p99_ms=2.5,
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


FOUR = {"cygate-full": 400, "granian-same-bytes": 500, "litestar-hello": 200, "litestar-stock": 40}


def _doc(tmp_path: Path, name: str, start: str, end: str) -> Path:
    path = tmp_path / name
    path.write_text(f"# Title\n\nbefore\n\n{start}\nold table\n{end}\n\nafter\n")
    return path


def test_update_doc_replaces_only_the_text_between_the_markers(tmp_path: Path) -> None:
    path = _doc(tmp_path, "doc.md", DOC_START, DOC_END)
    update_doc(path, "| new | table |")
    text = path.read_text()
    assert "old table" not in text
    assert f"before\n\n{DOC_START}\n| new | table |\n{DOC_END}\n\nafter\n" in text
    update_doc(path, "again")  # the markers survive for the next run
    assert f"{DOC_START}\nagain\n{DOC_END}" in path.read_text()


@pytest.mark.parametrize(
    "text",
    ["no markers at all", f"{DOC_START}\n{DOC_START}\n{DOC_END}", f"{DOC_END}\nx\n{DOC_START}"],
)
def test_update_doc_refuses_a_file_without_one_pair_of_markers(tmp_path: Path, text: str) -> None:
    path = tmp_path / "doc.md"
    path.write_text(text)
    with pytest.raises(SystemExit):
        update_doc(path, "table")
    assert path.read_text() == text


def test_the_headline_is_cygate_full_against_its_three_peers_by_median_ratio() -> None:
    rounds = _rounds(FOUR, {**FOUR, "cygate-full": 300}, {**FOUR, "cygate-full": 450})
    text = headline(rounds, "python -m benchmarks.macro.run --rounds 3", MACHINE)
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == [name for name, _ in HEADLINE]
    # the median round of cygate-full is the first (400 req/s): 0.80x the floor, 2x hello,
    # 10x stock; each ratio is the median of the rounds' own
    assert rows[0].endswith("| 400 | 2.50 | 2500.0 | - |")
    assert rows[1].endswith("| 0.80x |")
    assert rows[2].endswith("| 2.00x |")
    assert rows[3].endswith("| 10.00x |")
    assert "median of 3 rounds" in text
    assert "Command: `python -m benchmarks.macro.run --rounds 3`" in text
    assert "Some CPU, 2 cores" in text


def test_no_headline_unless_all_four_ran() -> None:
    for missing in FOUR:
        partial = {name: rps for name, rps in FOUR.items() if name != missing}
        assert headline(_rounds(partial), "cmd", MACHINE) == ""


def test_write_docs_puts_the_tables_in_the_doc_and_the_headline_in_the_readme(
    tmp_path: Path,
) -> None:
    doc = _doc(tmp_path, "benchmarks.md", DOC_START, DOC_END)
    readme = _doc(tmp_path, "README.md", HEADLINE_START, HEADLINE_END)
    write_docs(doc, readme, "FULL", "HEADLINE")
    assert "FULL" in doc.read_text() and "HEADLINE" not in doc.read_text()
    assert "HEADLINE" in readme.read_text() and "FULL" not in readme.read_text()


def test_a_run_without_the_headline_leaves_the_readme_alone(tmp_path: Path) -> None:
    doc = _doc(tmp_path, "benchmarks.md", DOC_START, DOC_END)
    readme = _doc(tmp_path, "README.md", HEADLINE_START, HEADLINE_END)
    before = readme.read_text()
    said = write_docs(doc, readme, "FULL", "")
    assert readme.read_text() == before
    assert "FULL" in doc.read_text()
    assert any("left alone" in line for line in said)


def test_the_blocks_carry_command_and_machine_and_no_time_of_day() -> None:
    block = doc_block("| t |", "python -m benchmarks.macro.run --rounds 3", MACHINE)
    assert "Command: `python -m benchmarks.macro.run --rounds 3`" in block
    assert "Machine: Some CPU, 2 cores" in block
    assert not DATED.search(block)
    assert not DATED.search(headline(_rounds(FOUR), "cmd", MACHINE))
    assert not DATED.search(report_micro.doc_block("group\n  case  1.0"))


def test_update_doc_defaults_to_docs_benchmarks_md() -> None:
    assert _parse_args([]).update_doc is None  # a run writes no document unless asked
    args = _parse_args(["--update-doc"])
    assert args.update_doc == DOC == ROOT / "docs" / "benchmarks.md"
    assert args.readme == README == ROOT / "README.md"
    assert _parse_args(["--update-doc", "x.md"]).update_doc == Path("x.md")
    assert report_micro.DOC == DOC


def test_the_micro_report_goes_between_the_micro_markers(tmp_path: Path) -> None:
    results = tmp_path / "micro.json"
    results.write_text(
        '{"machine_info": {"python_implementation": "CPython", "python_version": "3.11"},'
        ' "datetime": "2026-01-01T00:00:00",'
        ' "benchmarks": [{"name": "test_a", "group": "g", "stats": {"mean": 1e-6}}]}'
    )
    doc = _doc(tmp_path, "benchmarks.md", report_micro.MICRO_START, report_micro.MICRO_END)
    assert report_micro.main([str(results), "--update-doc", str(doc)]) == 0
    text = doc.read_text()
    assert "test_a" in text and "old table" not in text
    assert text.startswith("# Title\n\nbefore\n")


@pytest.mark.parametrize(
    ("path", "start", "end"),
    [
        ("docs/benchmarks.md", DOC_START, DOC_END),
        ("docs/benchmarks.md", report_micro.MICRO_START, report_micro.MICRO_END),
        ("README.md", HEADLINE_START, HEADLINE_END),
    ],
)
def test_the_repositorys_documents_have_the_markers_the_tools_write_between(
    path: str, start: str, end: str
) -> None:
    text = (ROOT / path).read_text()
    assert text.count(start) == 1 and text.count(end) == 1
    assert text.index(start) < text.index(end)
