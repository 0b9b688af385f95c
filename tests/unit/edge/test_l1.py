"""The L1 store: byte bound, SIEVE eviction, expiry, tags; invariants under random operations."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cygate.edge.l1 import L1

FAR = 1e9


def k(i: int) -> bytes:
    return i.to_bytes(16, "big")


def test_get_put_and_byte_bound() -> None:
    l1 = L1(100)
    assert l1.put(k(1), "a", 40, FAR, 0, ())
    assert l1.put(k(2), "b", 40, FAR, 0, ())
    assert l1.get(k(1), 0) == "a" and len(l1) == 2 and l1.size == 80
    assert l1.put(k(3), "c", 40, FAR, 0, ())  # evicts one
    assert l1.size <= 100 and len(l1) == 2
    assert not l1.put(k(4), "huge", 101, FAR, 0, ())  # alone over the bound: refused
    assert k(4) not in l1


def test_sieve_keeps_visited_entries() -> None:
    l1 = L1(30)
    for i in range(3):
        l1.put(k(i), i, 10, FAR, 0, ())
    l1.get(k(0), 0)  # the oldest is visited: it survives the next eviction
    l1.put(k(3), 3, 10, FAR, 0, ())
    assert k(0) in l1 and k(1) not in l1
    assert l1.evictions == 1
    # the hand moved on: 2 is next (unvisited), then 0 (its flag was cleared on the way)
    l1.put(k(4), 4, 10, FAR, 0, ())
    assert k(2) not in l1 and k(0) in l1


def test_expired_entries_go_first_and_on_read() -> None:
    l1 = L1(30)
    l1.put(k(1), 1, 10, 5.0, 0, ())
    l1.put(k(2), 2, 10, FAR, 0, ())
    l1.put(k(3), 3, 10, FAR, 0, ())
    l1.get(k(1), 0)  # visited, but it will have expired when space is needed
    l1.put(k(4), 4, 10, FAR, 6.0, ())
    assert k(1) not in l1 and {k(2), k(3), k(4)} <= {k(i) for i in range(5) if k(i) in l1}
    l1.put(k(5), 5, 1, 7.0, 6.0, ())
    assert l1.get(k(5), 7.0) is None and k(5) not in l1
    assert not l1.put(k(6), 6, 1, 5.0, 6.0, ())  # already expired: not stored


def test_replacing_a_key_keeps_the_accounting() -> None:
    l1 = L1(100)
    l1.put(k(1), "a", 30, FAR, 0, ("t",))
    l1.put(k(1), "b", 50, FAR, 0, ("u",))
    assert l1.size == 50 and len(l1) == 1 and l1.get(k(1), 0) == "b"
    assert l1.invalidate_tag("t") == 0 and l1.tags_of(k(1)) == ("u",)


def test_tags_discard_and_clear() -> None:
    l1 = L1(1000)
    l1.put(k(1), 1, 10, FAR, 0, ("product:1", "products"))
    l1.put(k(2), 2, 10, FAR, 0, ("product:2", "products"))
    l1.put(k(3), 3, 10, FAR, 0, ("categories",))
    assert l1.invalidate_tag("product:1") == 1 and k(1) not in l1
    assert l1.invalidate_tag("products") == 1 and k(2) not in l1
    assert l1.invalidate_tag("nothing") == 0
    assert l1.discard(k(3)) and not l1.discard(k(3))
    l1.put(k(4), 4, 10, FAR, 0, ("x",))
    assert l1.clear() == 1 and l1.size == 0 and l1.invalidate_tag("x") == 0


_OPS = st.lists(
    st.tuples(
        st.sampled_from(["put", "get", "tag", "discard"]),
        st.integers(0, 30),
        st.integers(1, 40),
        st.integers(0, 3),
    ),
    max_size=300,
)


@settings(max_examples=200)
@given(ops=_OPS)
def test_invariants_under_random_operations(ops: list[tuple[str, int, int, int]]) -> None:
    l1 = L1(200)
    model: dict[bytes, int] = {}  # key -> size, for what must be there at most
    now = 0.0
    for op, i, size, tag in ops:
        now += 0.5
        if op == "put":
            expires = now + size  # some expire during the run
            if l1.put(k(i), i, size, expires, now, (f"t{tag}",)):
                model[k(i)] = size
        elif op == "get":
            value = l1.get(k(i), now)
            assert value is None or value == i
        elif op == "tag":
            l1.invalidate_tag(f"t{tag}")
        else:
            l1.discard(k(i))
        held = [key for key in model if key in l1]
        assert l1.size == sum(model[key] for key in held) <= l1.max_bytes
        assert len(l1) == len(held)
        # the queue and the map agree
        node, seen = l1._tail, 0
        while node is not None:
            seen += 1
            assert node.key in l1.nodes
            node = node.newer
        assert seen == len(l1)
        for tag_name, keys in l1._tags.items():
            assert keys and all(tag_name in l1.tags_of(key) for key in keys)
