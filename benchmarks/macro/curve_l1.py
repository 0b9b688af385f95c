"""L1 size and hit ratio: what each MiB of the in-process cache buys on Zipf traces.

``python -m benchmarks.macro.curve_l1 [--catalog 1M] [--requests 2M] [--zipf 0.8,1.0,1.2]``
(``make bench-l1``). A simulation, not a server run: cygate's own L1
(:class:`cygate.edge.l1.L1`, SIEVE, through :func:`benchmarks.cache_policies.sieve`) replays
one trace per Zipf exponent (product ``k`` of the catalog asked with probability proportional
to ``1 / k**s``, ranks shuffled: :class:`loadtests.popularity.Zipf`) at L1 sizes from 0.1 % to
30 % of the catalog, and at the size the default ``cache_l1_max_bytes`` holds. The first
``--requests`` of each trace warm the cache up and are not counted; the next ``--requests``
are.

Sizes are in entries; ``--entry-bytes`` turns them into MiB: what the L1 counts for one product
answer (its body, its headers and 512 bytes of objects; ``make bench-callers`` measures it on
the seeded catalog as ``cygate_cache_l1_bytes / cygate_cache_l1_entries``, its ``l1_entry_bytes``
column). Every product answer is taken to be that size.

Writes ``benchmarks/results/l1-latest.json`` and ``docs/img/curve-l1.png``.
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass
from pathlib import Path

from loadtests.popularity import Zipf

from benchmarks.cache_policies import sieve
from cygate.edge.settings import CacheSettings

from .curve_kit import (
    CurveError,
    CurveParser,
    load_average,
    markdown_table,
    parse_sizes,
    plot_curves,
    write_run,
)

__all__ = ["L1Point", "default_l1_bytes", "hit_ratios", "main"]

ROOT = Path(__file__).resolve().parents[2]
PROG = "python -m benchmarks.macro.curve_l1"
SHARES = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)
ENTRY_BYTES = 1000
"""A seeded product answer as the L1 counts it (the ``l1_entry_bytes`` of ``make bench-callers``,
rounded); ``--entry-bytes`` sets another."""


@dataclass(frozen=True, slots=True)
class L1Point:
    zipf: float
    entries: int
    share: float
    """Of the catalog."""
    mib: float
    """L1 bytes those entries take (``--entry-bytes`` each)."""
    hit_ratio: float
    default: bool
    """The size the default ``cache_l1_max_bytes`` holds."""


def default_l1_bytes() -> int:
    """``cache_l1_max_bytes`` as the settings define it, unset."""
    return CacheSettings().l1_max_bytes


def parse_exponents(text: str) -> list[float]:
    """``0.8,1.0,1.2`` -> floats in (0, 3]; CurveError otherwise."""
    out: list[float] = []
    for raw in text.split(","):
        try:
            value = float(raw)
        except ValueError:
            raise CurveError(
                f"--zipf: {raw.strip()!r} is not a number (e.g. 0.8,1.0,1.2)"
            ) from None
        if not 0 < value <= 3:
            raise CurveError(f"--zipf: {value} is out of range (above 0, at most 3)")
        out.append(value)
    return out


def hit_ratios(
    catalog: int, requests: int, exponent: float, sizes: list[int], seed: int = 7
) -> list[float]:
    """The L1's hit ratio at each size (entries) on one Zipf trace: ``requests`` to warm up,
    ``requests`` counted."""
    zipf = Zipf(range(catalog), s=exponent, seed=seed)
    rng = random.Random(seed)
    trace = [zipf.draw(rng) for _ in range(2 * requests)]
    out = []
    for size in sizes:
        access = sieve(size)
        for obj in trace[:requests]:
            access(obj)
        out.append(sum(access(obj) for obj in trace[requests:]) / requests)
    return out


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = CurveParser(PROG, __doc__.splitlines()[0])
    p.add_argument("--catalog", default="1M", help="products (e.g. 1M, 100k)")
    p.add_argument("--requests", default="2M", help="counted requests per trace (as many warm up)")
    p.add_argument("--zipf", default="0.8,1.0,1.2", help="exponents s")
    p.add_argument("--entry-bytes", default=str(ENTRY_BYTES), help="L1 bytes per product answer")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    try:
        args.catalog_n = parse_sizes(args.catalog, "--catalog", most=100_000_000)[0]
        args.requests_n = parse_sizes(args.requests, "--requests", most=1_000_000_000)[0]
        args.entry_bytes_n = parse_sizes(args.entry_bytes, "--entry-bytes", most=2**30)[0]
        args.exponents = parse_exponents(args.zipf)
    except CurveError as exc:
        p.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    catalog, entry_bytes = args.catalog_n, args.entry_bytes_n
    default_entries = default_l1_bytes() // entry_bytes
    sizes = sorted({max(1, round(catalog * s)) for s in SHARES} | {default_entries})
    sizes = [n for n in sizes if n <= catalog]
    load_start = load_average()
    print(
        f"catalog {catalog:,}, {args.requests_n:,} counted requests per trace, "
        f"{entry_bytes} B per entry ({2**20 / entry_bytes:,.0f} entries per MiB); "
        f"default L1 {default_l1_bytes() / 2**20:.0f} MiB = {default_entries:,} entries; "
        f"load {load_start}",
        flush=True,
    )
    points: list[L1Point] = []
    for s in args.exponents:
        t0 = time.monotonic()
        ratios = hit_ratios(catalog, args.requests_n, s, sizes, args.seed)
        for size, hit in zip(sizes, ratios, strict=True):
            mib = size * entry_bytes / 2**20
            points.append(L1Point(s, size, size / catalog, mib, hit, size == default_entries))
        print(f"  zipf {s}: {time.monotonic() - t0:.0f} s", flush=True)
    header = ("zipf s", "L1 entries", "share of catalog", "L1 MiB", "hit ratio", "")
    rows = [
        (p.zipf, p.entries, p.share, p.mib, p.hit_ratio, "default size" if p.default else "")
        for p in points
    ]
    text = markdown_table(header, rows, (".1f", ",d", ".1%", ",.1f", ".3f", ""))
    write_run(
        "l1",
        args,
        prog=PROG,
        load_start=load_start,
        points=points,
        text=text,
        entries_per_mib=2**20 / entry_bytes,
        default_l1_bytes=default_l1_bytes(),
        default_l1_entries=default_entries,
    )
    if not args.no_plot:
        series = {
            f"zipf {s}": (
                [100 * p.share for p in points if p.zipf == s],
                [p.hit_ratio for p in points if p.zipf == s],
            )
            for s in args.exponents
        }
        default_share = 100 * default_entries / catalog
        png = plot_curves(
            args.img_dir / "curve-l1.png",
            f"cygate's L1 (SIEVE), {catalog:,} products, {entry_bytes} B per entry: "
            f"hit ratio against size (dashed: the default {default_l1_bytes() / 2**20:.0f} MiB)",
            [("hit ratio", series)],
            xlabel="L1 size, % of the catalog",
            vline=default_share,
        )
        print(f"written {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
