"""Coverage-guided fuzzing of the compiled parsers against their pure twins (atheris).

    python tests/fuzz/fuzz_run.py [--seconds N] [--targets jwt,path,...] [--corpus DIR]
                                  [--artifacts DIR] [--seed N]

runs each target of :mod:`fuzz_targets` for ``--seconds`` (default 60; ``make fuzz`` passes
``FUZZ_SECONDS``) in a process of its own, since ``atheris.Fuzz()`` never returns: libFuzzer
ends the process when its time is up, or at the first crash or disagreement, after writing the
input that caused it to ``--artifacts`` (``crash-<sha1>``). Each target starts from its seeds
(``tests/fuzz/seeds/<target>``, kept small in the repository; ``tests/fuzz/dicts/<target>.dict``
is its libFuzzer dictionary, when there is one) and the inputs found by earlier
runs (``--corpus``/<target>, default ``.fuzz/corpus``: outside git, grows from run to run), and
adds what it finds to the latter. A summary gives each target's executions, time and corpus.
Exit status: 0 when every target ran its time with no finding, 1 otherwise (the child's log and
the input are printed), 2 for bad options.

    python tests/fuzz/fuzz_run.py --child TARGET [libFuzzer flags...] [corpus dirs or files]

is one atheris process (what the above starts); given files instead of directories it runs just
those inputs, which is how a finding is replayed.

Coverage: the pure twins (and the targets) are instrumented as they are imported, regular
expressions included; the compiled twins are not (that needs clang's libFuzzer instrumentation).
The pure twin applies the same rules step by step, so its branches guide the search into the
compiled twin's as well, and every input is checked on both.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

HERE = Path(__file__).resolve().parent
SEEDS = HERE / "seeds"
DICTS = HERE / "dicts"
NAMES = ("jwt", "path", "router", "cachekey", "httpresp", "ids")
"""The targets, in the order they run (the keys of ``fuzz_targets.TARGETS``)."""
LIBFUZZER_FLAGS = ("-print_final_stats=1", "-timeout=20", "-rss_limit_mb=2048", "-max_len=4096")
_EXECUTED = re.compile(r"stat::number_of_executed_units:\s*(\d+)")
_COVERAGE = re.compile(r"cov: (\d+) ft: (\d+)")


@dataclass(frozen=True)
class Result:
    """One target's run."""

    target: str
    returncode: int
    seconds: float
    executions: int
    coverage: int
    corpus: int
    findings: list[Path]
    log: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.findings


def child(target: str, args: Sequence[str]) -> None:
    """Fuzz one target in this process (never returns)."""
    import atheris

    atheris.enabled_hooks.add("RegEx")
    sys.path.insert(0, str(HERE))
    with atheris.instrument_imports(include=["cygate", "fuzz_targets"]):
        import fuzz_targets
    if not fuzz_targets.compiled_available():
        sys.exit("fuzz_run: the compiled core is not built (make build), nothing to compare")
    # libFuzzer runs argv[0] through the shell for -merge=1 and the like: the whole command.
    again = shlex.join([sys.executable, str(Path(__file__).resolve()), "--child", target])
    atheris.Setup([again, *args], fuzz_targets.TARGETS[target])
    atheris.Fuzz()


def run_target(
    target: str, seconds: int, corpus: Path, artifacts: Path, seed: int | None = None
) -> Result:
    """Fuzz ``target`` for ``seconds`` in a child process; ``corpus`` gains what it finds."""
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        target,
        f"-max_total_time={seconds}",
        f"-artifact_prefix={artifacts}/{target}-",
        *LIBFUZZER_FLAGS,
        *([f"-seed={seed}"] if seed is not None else []),
        str(corpus),
    ]
    dictionary = DICTS / f"{target}.dict"
    if dictionary.is_file():
        cmd.insert(4, f"-dict={dictionary}")
    seeds = SEEDS / target
    if seeds.is_dir():
        cmd.append(str(seeds))
    before = set(artifacts.glob(f"{target}-*"))
    started = time.monotonic()
    proc = subprocess.run(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        timeout=seconds * 3 + 120,
        check=False,
    )
    elapsed = time.monotonic() - started
    executed = _EXECUTED.findall(proc.stdout)
    coverage = _COVERAGE.findall(proc.stdout)
    return Result(
        target=target,
        returncode=proc.returncode,
        seconds=elapsed,
        executions=int(executed[-1]) if executed else 0,
        coverage=int(coverage[-1][0]) if coverage else 0,
        corpus=sum(1 for _ in corpus.iterdir()),
        findings=sorted(set(artifacts.glob(f"{target}-*")) - before),
        log=proc.stdout,
    )


def run_all(
    targets: Sequence[str],
    seconds: int,
    corpus_root: Path,
    artifacts: Path,
    seed: int | None = None,
    out: TextIO = sys.stdout,
) -> list[Result]:
    """Every target in turn; prints one line per target as it finishes."""
    results = []
    for target in targets:
        result = run_target(target, seconds, corpus_root / target, artifacts, seed)
        results.append(result)
        verdict = "ok" if result.ok else f"FAILED (exit {result.returncode})"
        rate = result.executions / max(result.seconds, 1e-9)
        print(
            f"fuzz {target:<9} {result.executions:>9} executions in {result.seconds:5.1f} s "
            f"({rate:7.0f}/s), coverage {result.coverage:>5}, "
            f"corpus {result.corpus:>4}: {verdict}",
            file=out,
            flush=True,
        )
    return results


def report_failures(results: Sequence[Result], out: TextIO = sys.stderr) -> None:
    for result in results:
        if result.ok:
            continue
        tail = "\n".join(result.log.splitlines()[-40:])
        print(f"\n--- {result.target}: exit {result.returncode}; last lines:\n{tail}", file=out)
        for finding in result.findings:
            print(
                f"--- input: {finding} (replay: python {Path(__file__).name} --child "
                f"{result.target} {finding}; keep it in tests/fuzz/regressions/{result.target}/)",
                file=out,
            )


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"fuzz_run: {message} (see --help)\n")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 1 second")
    return value


def _targets(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown target {', '.join(unknown) or text!r}; the targets: {', '.join(NAMES)}"
        )
    return names


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        if len(argv) < 2 or argv[1] not in NAMES:
            print(f"fuzz_run: --child needs a target: {', '.join(NAMES)}", file=sys.stderr)
            return 2
        child(argv[1], argv[2:])
    parser = _Parser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=_positive, default=60, help="per target (default 60)")
    parser.add_argument("--targets", type=_targets, default=list(NAMES), help=",".join(NAMES))
    parser.add_argument("--corpus", type=Path, default=Path(".fuzz/corpus"))
    parser.add_argument(
        "--artifacts", type=Path, default=None, help="where findings go (default: a temp dir)"
    )
    parser.add_argument("--seed", type=int, default=None, help="libFuzzer's -seed")
    options = parser.parse_args(argv)
    artifacts = options.artifacts or Path(tempfile.mkdtemp(prefix="cygate-fuzz-"))
    total = time.monotonic()
    results = run_all(options.targets, options.seconds, options.corpus, artifacts, options.seed)
    failed = [r for r in results if not r.ok]
    report_failures(failed)
    executions = sum(r.executions for r in results)
    print(
        f"fuzz: {len(results)} targets, {executions} executions in "
        f"{time.monotonic() - total:.0f} s; "
        + (f"FAILED: {', '.join(r.target for r in failed)}" if failed else "no finding")
    )
    if not failed and options.artifacts is None:
        shutil.rmtree(artifacts, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
