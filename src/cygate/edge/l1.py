"""The in-process L1: a byte-bounded, TTL-aware map with SIEVE eviction and a tag index.

Why SIEVE (Zhang et al., NSDI '24): on the Zipf traces in ``benchmarks/cache_policies.py`` its
hit ratio matches or beats LRU (see ``docs/caching.md``), and a hit only sets a flag: no list
surgery, no lock, nothing allocated. New entries go in at the head; the eviction hand walks from
the tail towards the head, clearing visited flags and evicting the first unvisited entry. Here
the hand also evicts any entry past its expiry on the way (TTL-aware), and a ``get`` of an
expired entry removes it.

Values are opaque to this module: it needs their size (bytes, counted against the bound), their
expiry (monotonic seconds, after which the entry is useless even as a stale fallback) and their
tags (for invalidation).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

__all__ = ["L1", "Node"]


class Node:
    """One entry and its place in the SIEVE queue (head = newest).

    Readers outside this module (the fused hit path, through :attr:`L1.nodes`) read ``value``
    and ``expires`` and may set ``visited`` (the SIEVE mark: what :meth:`L1.get` sets on a
    hit); everything else is the L1's own."""

    __slots__ = ("expires", "key", "newer", "older", "size", "tags", "value", "visited")

    def __init__(
        self, key: bytes, value: Any, size: int, expires: float, tags: tuple[str, ...]
    ) -> None:
        self.key = key
        self.value = value
        self.size = size
        self.expires = expires
        self.tags = tags
        self.visited = False
        self.newer: Node | None = None
        self.older: Node | None = None


class L1:
    """Byte-bounded SIEVE cache. Single-threaded: one per worker's event loop, no locks."""

    __slots__ = ("_hand", "_head", "_map", "_tags", "_tail", "evictions", "max_bytes", "size")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        """Bound on the sum of the entries' sizes."""
        self.size = 0
        """Bytes held now."""
        self.evictions = 0
        self._map: dict[bytes, Node] = {}
        """Changed in place only, never rebound: :attr:`nodes` hands it out."""
        self._tags: dict[str, set[bytes]] = {}
        self._head: Node | None = None
        self._tail: Node | None = None
        self._hand: Node | None = None

    @property
    def nodes(self) -> Mapping[bytes, Node]:
        """Key -> node, live and read-only: the same mapping for this L1's whole life, kept
        current by it (the fused hit path looks keys up in it directly, then treats a node
        as :meth:`get` does: expired is a miss, a hit sets ``visited``)."""
        return self._map

    def __len__(self) -> int:
        return len(self._map)

    def __contains__(self, key: bytes) -> bool:
        return key in self._map

    def get(self, key: bytes, now: float) -> Any:
        """The value under ``key``, or None when absent or expired (an expired one is dropped)."""
        node = self._map.get(key)
        if node is None:
            return None
        if node.expires <= now:
            self._unlink(node)
            return None
        node.visited = True  # PERF: the whole cost of a SIEVE hit
        return node.value

    def put(
        self, key: bytes, value: Any, size: int, expires: float, now: float, tags: Iterable[str]
    ) -> bool:
        """Store ``value``; False (nothing stored) when it alone exceeds the bound."""
        old = self._map.get(key)
        if old is not None:
            self._unlink(old)
        if size > self.max_bytes or expires <= now:
            return False
        while self.size + size > self.max_bytes:
            self._evict(now)
        node = Node(key, value, size, expires, tuple(tags))
        self._map[key] = node
        node.older = self._head
        if self._head is not None:
            self._head.newer = node
        self._head = node
        if self._tail is None:
            self._tail = node
        self.size += size
        for tag in node.tags:
            keys = self._tags.get(tag)
            if keys is None:
                self._tags[tag] = {key}
            else:
                keys.add(key)
        return True

    def discard(self, key: bytes) -> bool:
        """Remove ``key``; True when it was there."""
        node = self._map.get(key)
        if node is None:
            return False
        self._unlink(node)
        return True

    def invalidate_tag(self, tag: str) -> int:
        """Remove every entry carrying ``tag``; the number removed."""
        keys = self._tags.pop(tag, None)
        if not keys:
            return 0
        removed = 0
        for key in list(keys):
            node = self._map.get(key)
            if node is not None:
                self._unlink(node)
                removed += 1
        return removed

    def clear(self) -> int:
        """Remove everything; the number of entries removed."""
        count = len(self._map)
        self._map.clear()
        self._tags.clear()
        self._head = self._tail = self._hand = None
        self.size = 0
        return count

    def values(self) -> Iterator[Any]:
        """The values held (do not add or remove entries while iterating)."""
        return (node.value for node in self._map.values())

    def tags_of(self, key: bytes) -> tuple[str, ...]:
        node = self._map.get(key)
        return () if node is None else node.tags

    # -- internals ---------------------------------------------------------------------------

    def _evict(self, now: float) -> None:
        hand = self._hand or self._tail
        assert hand is not None  # only called while size > 0
        while hand.visited and hand.expires > now:
            hand.visited = False
            hand = hand.newer or self._tail
            assert hand is not None
        self._hand = hand.newer
        self._unlink(hand)
        self.evictions += 1

    def _unlink(self, node: Node) -> None:
        if self._hand is node:
            self._hand = node.newer
        if node.newer is not None:
            node.newer.older = node.older
        else:
            self._head = node.older
        if node.older is not None:
            node.older.newer = node.newer
        else:
            self._tail = node.newer
        node.newer = node.older = None
        del self._map[node.key]
        self.size -= node.size
        for tag in node.tags:
            keys = self._tags.get(tag)
            if keys is not None:
                keys.discard(node.key)
                if not keys:
                    del self._tags[tag]
