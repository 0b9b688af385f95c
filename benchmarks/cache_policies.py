"""Which eviction policy for the L1: hit ratios of LRU, FIFO, SIEVE and S3-FIFO on Zipf traces.

``python -m benchmarks.cache_policies [--requests N] [--objects N] [--seed S]``

Each policy replays the same request traces at several cache sizes (a share of the distinct
objects; every object the same size, so capacity is a count). SIEVE is cygate's own L1
(:class:`cygate.edge.l1.L1`), not a model of it. Traces:

- ``zipf a``: independent requests, object ``k`` requested with probability proportional to
  ``1 / k**a`` (a catalog's popular products);
- ``zipf+scan``: the Zipf 0.9 trace with one request in five from a crawler paging through
  the whole catalog in order (one-hit wonders, which LRU lets push out the popular items).

Also printed: the time of one hit in each policy's Python implementation (the L1's cost per
request, where SIEVE only sets a flag and LRU moves an entry to the front).
"""

from __future__ import annotations

import argparse
import random
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable

from cygate.edge.l1 import L1

__all__ = ["main", "sieve", "simulate", "zipf_trace"]

Policy = Callable[[int], Callable[[int], bool]]
"""``policy(capacity)`` returns ``access(obj) -> hit?``."""


def lru(capacity: int) -> Callable[[int], bool]:
    data: OrderedDict[int, None] = OrderedDict()

    def access(obj: int) -> bool:
        if obj in data:
            data.move_to_end(obj)
            return True
        if len(data) >= capacity:
            data.popitem(last=False)
        data[obj] = None
        return False

    return access


def fifo(capacity: int) -> Callable[[int], bool]:
    data: OrderedDict[int, None] = OrderedDict()

    def access(obj: int) -> bool:
        if obj in data:
            return True
        if len(data) >= capacity:
            data.popitem(last=False)
        data[obj] = None
        return False

    return access


def sieve(capacity: int) -> Callable[[int], bool]:
    """cygate's L1 itself: every entry 1 "byte", never expiring."""
    l1 = L1(capacity)

    def access(obj: int) -> bool:
        key = obj.to_bytes(8, "big")
        if l1.get(key, 0.0) is not None:
            return True
        l1.put(key, True, 1, 1e18, 0.0, ())
        return False

    return access


def s3fifo(capacity: int) -> Callable[[int], bool]:
    """S3-FIFO (Yang et al., SOSP '23): a small FIFO (10 %) for new objects, a main FIFO with
    2-bit frequencies and reinsertion, a ghost FIFO of keys recently evicted from the small
    one. An object accessed while in the small queue is promoted to the main one."""
    small_cap = max(1, capacity // 10)
    main_cap = capacity - small_cap
    small: deque[int] = deque()
    main: deque[int] = deque()
    ghost: OrderedDict[int, None] = OrderedDict()
    freq: dict[int, int] = {}
    where: dict[int, str] = {}

    def evict_main() -> None:
        while main:
            obj = main.popleft()
            if freq[obj] > 0:
                freq[obj] -= 1
                main.append(obj)
            else:
                del freq[obj], where[obj]
                return

    def evict_small() -> None:
        while small:
            obj = small.popleft()
            if freq[obj] > 0:
                where[obj] = "m"
                freq[obj] = 0
                main.append(obj)
                if len(main) > main_cap:
                    evict_main()
            else:
                del freq[obj], where[obj]
                ghost[obj] = None
                if len(ghost) > main_cap:
                    ghost.popitem(last=False)
                return

    def access(obj: int) -> bool:
        if obj in where:
            freq[obj] = min(freq[obj] + 1, 3)
            return True
        while len(small) + len(main) >= capacity:
            if len(small) >= small_cap or not main:
                evict_small()
            else:
                evict_main()
        freq[obj] = 0
        if obj in ghost:
            del ghost[obj]
            where[obj] = "m"
            main.append(obj)
        else:
            where[obj] = "s"
            small.append(obj)
        return False

    return access


POLICIES: dict[str, Policy] = {"LRU": lru, "FIFO": fifo, "SIEVE (L1)": sieve, "S3-FIFO": s3fifo}


def zipf_trace(objects: int, requests: int, alpha: float, rng: random.Random) -> list[int]:
    weights = [1.0 / (k**alpha) for k in range(1, objects + 1)]
    ids = list(range(objects))
    rng.shuffle(ids)  # popularity is not the id order
    return [ids[i] for i in rng.choices(range(objects), weights=weights, k=requests)]


def with_scan(trace: list[int], objects: int, every: int = 5) -> list[int]:
    out, page = [], 0
    for i, obj in enumerate(trace):
        if i % every == 0:
            out.append(objects + page)  # crawler ids are never requested twice
            page += 1
        else:
            out.append(obj)
    return out


def simulate(policy: Policy, capacity: int, trace: Iterable[int]) -> float:
    access = policy(capacity)
    hits = total = 0
    for obj in trace:
        hits += access(obj)
        total += 1
    return hits / total


def hit_cost(policy: Policy, n: int = 200_000) -> float:
    """Nanoseconds per hit on a warm cache of 1000 objects."""
    access = policy(1000)
    for obj in range(1000):
        access(obj)
    objs = [i % 1000 for i in range(n)]
    start = time.perf_counter()
    for obj in objs:
        access(obj)
    return (time.perf_counter() - start) / n * 1e9


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cache_policies", description=__doc__)
    p.add_argument("--objects", type=int, default=20_000)
    p.add_argument("--requests", type=int, default=400_000)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    traces = {f"zipf {a}": zipf_trace(args.objects, args.requests, a, rng) for a in (0.7, 0.9, 1.1)}
    traces["zipf 0.9 + scan"] = with_scan(traces["zipf 0.9"], args.objects)
    sizes = (0.01, 0.05, 0.10)
    names = list(POLICIES)
    print(f"hit ratio, {args.objects:,} objects, {args.requests:,} requests, seed {args.seed}")
    print(f"| trace | cache size | {' | '.join(names)} |")
    print(f"| --- | --- |{' --- |' * len(names)}")
    for label, trace in traces.items():
        for share in sizes:
            capacity = int(args.objects * share)
            ratios = [simulate(POLICIES[n], capacity, trace) for n in names]
            best = max(ratios)
            cells = [f"**{r:.3f}**" if r == best else f"{r:.3f}" for r in ratios]
            print(f"| {label} | {share:.0%} | {' | '.join(cells)} |")
    print()
    print("| policy | ns per hit (Python, warm, 1000 objects) |")
    print("| --- | --- |")
    for name in names:
        print(f"| {name} | {hit_cost(POLICIES[name]):.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
