"""Instructions and new objects per request of the edge's hit path, counted by callgrind.

    python -m benchmarks.micro.instructions                      # this checkout
    python -m benchmarks.micro.instructions --tree /tmp/base     # and another one, side by side

Why: on the shared 2-core machines req/s moves +-10 % between two runs a minute apart, so a
change worth 3 % cannot be seen in the server, even with ``--rounds``; timings in process move
a few % too. ``valgrind --tool=callgrind`` counts executed instructions instead of time: the same
count for the same code and inputs, whatever else the machine does (with ``PYTHONHASHSEED=0``;
dict probing depends on the hash seed). Each case runs twice in a child process, once with one
request and once with ``--requests`` more, and the difference divided by that number is the cost
of one request, with start-up, imports and the warm-up cancelled out. ``objects`` counts
``_Py_NewReference`` calls: Python objects created per request.

The cases are those of ``test_bench_edge.py`` (the same drivers): ``full`` (route, token,
rate limit, L1 hit: cygate-full's request), ``cache-only`` (route and L1 hit) and ``floor`` (an
ASGI app sending the same two messages); and the miss path (``--misses``): ``uncached`` (the
edge with the cache off: the fast handler and the validators, as ``CYGATE_CACHE_ENABLED=false``),
``miss`` (every request a product id never seen: key, L1 miss, load through the fast handler,
entry, L1 fill; no L2) and ``miss-l2`` (the same with L2 in Redis, ``CYGATE_REDIS_URL``: the
lookup script and the batched store, one request at a time, so nothing is shared by a batch).
The fast handler returns a fixed body: the database read is the same on both paths and is left
out. What it does not show: memory and cache effects, which
the server amplifies (docs/benchmarks.md); a change must still show in the macro benchmark.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Count", "main", "parse_callgrind"]

ROOT = Path(__file__).resolve().parents[2]
CASES = ("full", "cache-only", "floor")
MISS_CASES = ("uncached", "miss", "miss-l2")
ACCESS_CASES = ("full", "logged-1pct", "logged", "logged-loop", "general", "general-logged")
"""``--access``: the ``full`` request with the access log (``cygate.infra.accesslog``) at
sample 1 % and 1 (``logged``: the fused hit path hands each record over, and the records are
formatted, as its thread does; ``logged-loop``: the hand-over alone, the event loop's share),
against the alternative of leaving sampled requests to the general path (``general-logged``:
no fused hit path, every request logged; ``general``: the same without the log). This tree
only: another checkout may have no access log."""
TRACED_CASES = ("full", "full-traced")
"""``--traced``: ``full`` beside ``full-traced``, the same request to the edge built with tracing
on (``TracedEdge``) and a sampler that keeps nothing (``parentbased_always_off``): what every
unsampled request pays for the decision (docs/observability.md)."""
NEW_OBJECT = "_Py_NewReference"
_FN = re.compile(r"(c?fn)=\((\d+)\)(?: (.*))?")
_CALLS = re.compile(r"calls=(\d+)")


@dataclass(frozen=True, slots=True)
class Count:
    """What one callgrind run counted."""

    instructions: int
    objects: int
    """Calls of :data:`NEW_OBJECT`."""


def parse_callgrind(text: str) -> Count:
    """The total instructions (``summary:``/``totals:``) and the calls of :data:`NEW_OBJECT`
    of a callgrind output file (names are compressed: ``cfn=(12) name`` once, ``(12)`` after)."""
    names: dict[str, str] = {}
    callee = ""
    objects = 0
    total = 0
    for line in text.splitlines():
        m = _FN.match(line)
        if m:
            kind, ref, name = m.groups()
            if name:
                names[ref] = name.strip()
            if kind == "cfn":
                callee = names.get(ref, "")
            continue
        m = _CALLS.match(line)
        if m:
            if callee == NEW_OBJECT:
                objects += int(m.group(1))
            continue
        if line.startswith(("summary:", "totals:")):
            total = max(total, int(line.split()[1]))
    return Count(total, objects)


def _child(case: str, requests: int) -> None:
    """Run ``requests`` requests of ``case`` after a warm-up (inside valgrind)."""
    sys.path.insert(0, str(ROOT / "benchmarks" / "micro"))
    from test_bench_edge import Driver, make_edge, same_bytes_app

    if case in MISS_CASES:
        _miss_child(case, requests)
        return
    if case in ACCESS_CASES[1:]:
        _access_child(case, requests)
        return
    traced = None
    if case == "full-traced":
        from cygate.infra import tracing

        traced = tracing.configure(
            {
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:9/v1/traces",
                "OTEL_TRACES_SAMPLER": "parentbased_always_off",
            }
        )
    edge, headers = make_edge(stages=case.startswith("full"), tracing=traced)
    driver = Driver(edge, headers)
    driver.run(200)  # fills L1, verifies the token, warms every cache
    if case == "floor":
        driver.run(1)
        driver = Driver(same_bytes_app(dict(driver.sent[0]), driver.sent[1]), headers)
        driver.run(200)
    driver.run(requests)
    status = driver.sent[0]["status"] if driver.sent else 0
    if status != 200:
        raise SystemExit(f"{case}: the last answer was {status}, not 200")


def _access_child(case: str, requests: int) -> None:
    """The ``full`` request with an access log (or without the fused hit path): see
    :data:`ACCESS_CASES`."""
    from test_bench_edge import Driver, make_edge

    from cygate.infra.accesslog import AccessLog

    access = None
    if case != "general":
        sample = 0.01 if case == "logged-1pct" else 1.0
        access = AccessLog(sample=sample, fmt="json", capacity=1 << 30, write=lambda data: None)
    edge, headers = make_edge(stages=True, hit_path=case.startswith("logged"), access=access)
    driver = Driver(edge, headers)
    driver.run(200)
    if access is not None:
        access.flush()
    driver.run(requests)
    if access is not None and case != "logged-loop":
        access.flush()  # what the writing thread does with them (off the loop, same CPU)
    status = driver.sent[0]["status"] if driver.sent else 0
    if status != 200:
        raise SystemExit(f"{case}: the last answer was {status}, not 200")


def _miss_child(case: str, requests: int) -> None:
    """``uncached``, ``miss``, ``miss-l2``: each request a product id not asked before."""
    import uuid

    from test_bench_edge import Driver, make_edge

    edge, headers = make_edge(stages=False, cache=case != "uncached", l2=case == "miss-l2")
    seen = iter(range(1 << 62))

    class Cold(Driver):
        def scope(self) -> dict[str, object]:
            scope = super().scope()
            path = f"/api/v1/products/{uuid.UUID(int=next(seen) + 1)}"
            scope["path"], scope["raw_path"] = path, path.encode()
            return scope

    driver = Cold(edge, headers)
    if edge.cache is not None and edge.cache.l2 is not None:
        driver.loop.run_until_complete(_subscribed(edge.cache))
    driver.run(200)
    driver.run(requests)
    drain = getattr(edge.cache.l2, "drain", None) if edge.cache is not None else None
    if drain is not None:  # (a tree whose L2 writes are not batched has none)
        driver.loop.run_until_complete(drain())
    if edge.cache is not None and edge.cache.l2 is not None:
        errors = edge.cache.metrics.counter("cygate_cache_l2_errors_total").value
        if errors:
            raise SystemExit(f"{case}: {errors:.0f} Redis errors (misses went without L2)")
    label = dict(driver.sent[0]["headers"]).get(b"x-cache") if driver.sent else None
    status = driver.sent[0]["status"] if driver.sent else 0
    if status != 200 or label != (None if case == "uncached" else b"miss"):
        raise SystemExit(f"{case}: the last answer was {status} {label!r}, not a 200 miss")


async def _subscribed(cache: object) -> None:
    import asyncio

    cache.start()  # type: ignore[attr-defined]
    for _ in range(500):
        if cache.subscription.connected:  # type: ignore[attr-defined]
            return
        await asyncio.sleep(0.01)
    raise SystemExit("miss-l2: no subscription to Redis")


def _count(case: str, requests: int, tree: Path | None, workdir: Path) -> Count:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    # NOTE: the other tree runs its own copy of this harness (its child sets up the request with
    # that tree's interfaces, which may differ from this one's); the case and count are the same.
    root = tree if tree is not None else ROOT
    src = [str(tree / "src")] if tree is not None else []
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [*src, str(root), env.get("PYTHONPATH")]))
    counts = []
    for n in (1, 1 + requests):
        out = workdir / f"{case}-{n}.out"
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable]
        argv += ["-m", "benchmarks.micro.instructions", "--child", case, "--requests", str(n)]
        subprocess.run(argv, env=env, cwd=root, check=True, capture_output=True)
        counts.append(parse_callgrind(out.read_text()))
    return Count(
        round((counts[1].instructions - counts[0].instructions) / requests),
        round((counts[1].objects - counts[0].objects) / requests),
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.micro.instructions", description=__doc__)
    p.add_argument("--requests", type=int, default=2000, help="requests counted (default 2000)")
    p.add_argument("--tree", type=Path, help="also count another checkout's code (its src)")
    p.add_argument(
        "--misses", action="store_true", help="the miss path's cases instead (miss-l2: Redis)"
    )
    p.add_argument("--access", action="store_true", help="the access log's cases (this tree only)")
    p.add_argument(
        "--traced",
        action="store_true",
        help="full beside full-traced: tracing on, nothing sampled (this tree only)",
    )
    p.add_argument(
        "--child",
        choices=CASES + MISS_CASES + ACCESS_CASES[1:] + TRACED_CASES[1:],
        help=argparse.SUPPRESS,
    )
    args = p.parse_args(argv)
    if args.child:
        _child(args.child, args.requests)
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    trees: list[tuple[str, Path | None]] = [("this tree", None)]
    if args.tree is not None:
        trees.append((str(args.tree), args.tree.resolve()))
    print(f"per request, {args.requests} requests counted by callgrind (PYTHONHASHSEED=0)")
    rows = []
    cases: tuple[str, ...] = CASES
    if args.misses:
        cases = MISS_CASES if os.environ.get("CYGATE_REDIS_URL") else MISS_CASES[:2]
    if args.access:
        if args.tree is not None:
            print("--access counts this tree only", file=sys.stderr)
            return 2
        cases = ACCESS_CASES
    if args.traced:
        cases, trees = TRACED_CASES, trees[:1]
    with tempfile.TemporaryDirectory(prefix="cygate-callgrind-") as tmp:
        for case in cases:
            counts = [_count(case, args.requests, tree, Path(tmp)) for _, tree in trees]
            rows.append((case, counts))
    header = "| case | " + " | ".join(f"{name}: instructions | objects" for name, _ in trees)
    if len(trees) == 2:
        header += " | this / other |"
    print(header if header.endswith("|") else header + " |")
    print("| --- " * (1 + 2 * len(trees) + (len(trees) == 2)) + "|")
    for case, counts in rows:
        cells = [f"{c.instructions:,} | {c.objects}" for c in counts]
        if len(counts) == 2 and counts[1].instructions:
            cells.append(f"{counts[0].instructions / counts[1].instructions:.3f}x")
        print(f"| {case} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
