"""A request's Cache-Control and Pragma: ignored by public rules unless the rule honours them,
limited per caller when it does, and never an error whatever they say."""

from __future__ import annotations

import pytest
from cache_helpers import cache_settings, call, make_edge

from cygate.edge.cache import _directives
from cygate.settings import CacheRule

FORCING = [
    (b"cache-control", b"no-cache"),
    (b"cache-control", b"no-store"),
    (b"cache-control", b"max-age=0"),
    (b"pragma", b"no-cache"),
]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"no-cache", (True, False)),
        (b"No-Cache", (True, False)),
        (b"no-store", (True, True)),
        (b"max-age=0", (True, False)),
        (b"max-age=000", (True, False)),
        (b" max-stale=5 , no-cache ,", (True, False)),
        (b"no-transform, no-store", (True, True)),
        (b'no-cache="set-cookie"', (False, False)),  # field names: not a request directive
        (b"no-cache=", (False, False)),
        (b"no-store=1", (False, False)),
        (b"max-age=-1", (False, False)),
        (b"max-age=1", (False, False)),
        (b'max-age="0"', (False, False)),
        (b"max-age=0x0", (False, False)),
        (b"max-age", (False, False)),
        (b"max-age=" + b"9" * 5000, (False, False)),  # past int()'s digit limit: no error
        (b"max-age=" + b"0" * 5000, (True, False)),
        (b"no-cachex", (False, False)),
        (b"xno-cache", (False, False)),
        (b",,,=,;", (False, False)),
        (b"\xff\xfe\x00", (False, False)),
        (b"", (False, False)),
    ],
)
def test_directives_are_read_strictly(value: bytes, expected: tuple[bool, bool]) -> None:
    assert _directives(value) == expected


def test_the_default_depends_on_the_scope() -> None:
    assert not CacheRule(ttl=1).honours_client_no_cache
    assert CacheRule(ttl=1, scope="private").honours_client_no_cache
    assert CacheRule(ttl=1, honour_client_no_cache=True).honours_client_no_cache
    assert not CacheRule(
        ttl=1, scope="private", honour_client_no_cache=False
    ).honours_client_no_cache


async def test_public_rules_ignore_a_clients_directives_by_default() -> None:
    """Anyone could otherwise turn every request into a database read."""
    edge, _, app = make_edge()
    assert (await call(edge, "/items/1")).x_cache == "miss"
    for header in FORCING:
        r = await call(edge, "/items/1", headers=[header])
        assert (r.status, r.x_cache) == (200, "hit-l1"), header
    assert app.calls["/items/1"] == 1


async def test_private_rules_honour_them_by_default() -> None:
    edge, _, app = make_edge()
    await call(edge, "/mine", user="alice")
    r = await call(edge, "/mine", user="alice", headers=[(b"cache-control", b"no-cache")])
    assert r.x_cache == "miss" and app.calls["/mine"] == 2


async def test_forced_reloads_are_limited_per_caller() -> None:
    # 60 a minute: a burst of 6, then one a second.
    edge, _, app = make_edge(
        settings=cache_settings(cache_l2=False, cache_forced_reloads_per_minute=60)
    )
    await call(edge, "/forced/1")
    no_cache = [(b"cache-control", b"no-cache")]
    labels = [(await call(edge, "/forced/1", headers=no_cache)).x_cache for _ in range(10)]
    assert labels == ["miss"] * 6 + ["hit-l1"] * 4  # anonymous: limited by client address
    assert app.calls["/forced/1"] == 7
    # Another caller has a limit of its own; the same caller is still limited.
    assert (await call(edge, "/forced/1", headers=no_cache, user="bob")).x_cache == "miss"
    labels = [(await call(edge, "/forced/1", headers=no_cache)).x_cache for _ in range(3)]
    assert labels == ["hit-l1"] * 3
    # no-store past the limit is ignored too: answered from the cache.
    r = await call(edge, "/forced/1", headers=[(b"cache-control", b"no-store")])
    assert r.x_cache == "hit-l1" and app.calls["/forced/1"] == 8


@pytest.mark.parametrize(
    "value",
    [
        b'no-cache="set-cookie, x-foo"',
        b"max-age=-1",
        b"max-age=99999999999999999999999999999999",
        b"max-age=" + b"9" * 5000,
        b"max-stale=abc, min-fresh=-5",
        b'no-cache="unterminated',
        b"=,=,=",
        b"\xff\xfe",
        b"no-cache\x00",
        b"x" * 8000,
    ],
)
async def test_malformed_directives_are_ignored_never_a_5xx(value: bytes) -> None:
    """On a rule that honours directives and on one that does not: the cached answer."""
    edge, _, app = make_edge()
    for path in ("/items/1", "/forced/1"):
        await call(edge, path)
        for name in (b"cache-control", b"pragma"):
            r = await call(edge, path, headers=[(name, value)])
            assert (r.status, r.x_cache) == (200, "hit-l1"), (path, name)
        assert app.calls[path] == 1
