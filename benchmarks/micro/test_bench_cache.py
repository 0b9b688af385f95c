"""Cache micro-benchmarks: the cache key (compiled vs pure twin vs plain Python), the keyed
128-bit hash (BLAKE2b compiled vs hashlib vs SipHash compiled), and the L1 hit path (cygate vs
cashews and aiocache in memory).

One workload for all: a mix of 20 requests a gateway sees (product reads with browser-like
headers, list pages with query strings, per-caller reads); one round handles the whole mix
(the async peers: the mix 50 times in one coroutine, so the event loop's own cost per round is
spread thin). Every contender is checked before it is timed: same request, same key; different
requests, different keys; every look-up a hit with the right entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest

from cygate.core import _cachekey_py, cachekey
from cygate.core._cachekey_py import CacheKeyPy, derive_key
from cygate.edge.cache import ResponseCache
from cygate.edge.cache_entry import Entry
from cygate.edge.context import EdgeContext, Principal, RoutePolicy
from cygate.edge.l1 import L1
from cygate.infra.metrics import Metrics
from cygate.settings import CacheRule, load_settings

KEY_GROUP = "cache key: canonical form + keyed 128-bit hash (20-request mix)"
HASH_GROUP = "hash: keyed 128-bit hash of a 120-byte canonical form"
HIT_GROUP = "L1 hit path: key + look-up (20-request mix, all hits)"
LOOKUP_GROUP = "in-memory look-up alone (key given, 20-request mix)"
EDGE_GROUP = "edge cache step: lookup() to ready-to-send messages (20 hits)"

SECRET = b"benchmark-secret"
PRODUCT = "GET /api/v1/products/{product_id:uuid}"
LIST = "GET /api/v1/products"
ME = "GET /api/v1/users/me"
LIST_QUERY = ["category", "min_price_cents", "max_price_cents", "sort", "limit", "cursor"]
BROWSER = [
    (b"host", b"shop.example.com"),
    (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"),
    (b"accept", b"application/json"),
    (b"accept-encoding", b"gzip, deflate, br"),
    (b"accept-language", b"en-GB,en;q=0.9"),
    (b"connection", b"keep-alive"),
    (b"authorization", b"Bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ1c2VyIn0.c2ln"),
    (b"x-request-id", b"b7c1e0f2a9d84c55"),
]
IDS = [f"0b7e6f1c-6a39-4c2e-9a35-4b8f2f0f7a{i:02x}" for i in range(12)]

# (route, path, query, headers, principal)
Request = tuple[str, str, bytes, list[tuple[bytes, bytes]], str | None]
MIX: list[Request] = [
    *((PRODUCT, f"/api/v1/products/{i}", b"", BROWSER, None) for i in IDS),
    (LIST, "/api/v1/products", b"limit=20&sort=price", BROWSER, None),
    (LIST, "/api/v1/products", b"sort=price&limit=20&utm_source=newsletter", BROWSER, None),
    (LIST, "/api/v1/products", b"category=3f2b8c1e-9a4d-4e6f-8b1a-2c3d4e5f6a7b", BROWSER, None),
    (LIST, "/api/v1/products", b"min_price_cents=1000&max_price_cents=5000", BROWSER, None),
    (ME, "/api/v1/users/me", b"", BROWSER, "user-1"),
    (ME, "/api/v1/users/me", b"", BROWSER, "user-2"),
    (ME, "/api/v1/users/me", b"", BROWSER, "user-3"),
    (PRODUCT, f"/api/v1/products/{IDS[0]}", b"", BROWSER[:3], None),
]
assert len(MIX) == 20
DISTINCT = 18  # the list's reordered query with a tracking parameter and the product read with
# fewer headers are the same resources as two others


def specs(cls: type[CacheKeyPy]) -> dict[str, CacheKeyPy]:
    return {
        PRODUCT: cls(SECRET, PRODUCT),
        LIST: cls(SECRET, LIST, query=LIST_QUERY),
        ME: cls(SECRET, ME, private=True),
    }


# -- the plain Python contender: what one writes without a canonical form of one's own --------

_PLAIN_KEY = derive_key(SECRET)
_PLAIN_QUERY = {PRODUCT: frozenset(), LIST: frozenset(LIST_QUERY), ME: frozenset()}


def plain_key(route: str, path: str, query: bytes, principal: str | None) -> bytes:
    """urllib's parse/encode, a separator-joined string, hashlib BLAKE2b."""
    allowed = _PLAIN_QUERY[route]
    params = sorted(
        (k, v)
        for k, v in parse_qsl(query.decode("latin-1"), keep_blank_values=True)
        if k in allowed
    )
    text = "\x00".join((route, "GET", path, urlencode(params), principal or ""))
    return hashlib.blake2b(text.encode(), key=_PLAIN_KEY, digest_size=16).digest()


def check_keys(key_of: Callable[[Request], bytes]) -> list[bytes]:
    keys = [key_of(req) for req in MIX]
    assert keys == [key_of(req) for req in MIX]  # stable
    assert len(set(keys)) == DISTINCT, len(set(keys))
    return keys


def cygate_key_of(cls: type[CacheKeyPy]) -> Callable[[Request], bytes]:
    s = specs(cls)

    def key_of(req: Request) -> bytes:
        route, path, query, headers, who = req
        return s[route].key("GET", path, query, headers, who)

    return key_of


def compiled(name: str) -> Any:
    value = getattr(cachekey, name, None)
    if value is None:
        pytest.skip("compiled cache key not available")
    return value


# -- cache key --------------------------------------------------------------------------------


def _key_loop(cls: type[CacheKeyPy]) -> Callable[[], None]:
    s = specs(cls)
    work = [(s[route].key, path, query, headers, who) for route, path, query, headers, who in MIX]

    def run() -> None:
        for key, path, query, headers, who in work:
            key("GET", path, query, headers, who)

    return run


def test_key_c(micro: Any) -> None:
    """CacheKeyC.key (compiled): canonical form in a C buffer, BLAKE2b from a precomputed state."""
    cls = compiled("CacheKeyC")
    assert check_keys(cygate_key_of(cls)) == check_keys(cygate_key_of(CacheKeyPy))
    micro(_key_loop(cls), group=KEY_GROUP, ops=len(MIX))


def test_key_py(micro: Any) -> None:
    """CacheKeyPy.key (pure twin): same canonical form, hashlib BLAKE2b."""
    check_keys(cygate_key_of(CacheKeyPy))
    micro(_key_loop(CacheKeyPy), group=KEY_GROUP, ops=len(MIX))


def test_key_plain_python(micro: Any) -> None:
    """Plain Python: parse_qsl + sorted + urlencode + joined string + hashlib BLAKE2b."""
    check_keys(lambda r: plain_key(r[0], r[1], r[2], r[4]))
    work = [(route, path, query, who) for route, path, query, _, who in MIX]

    def run() -> None:
        for route, path, query, who in work:
            plain_key(route, path, query, who)

    micro(run, group=KEY_GROUP, ops=len(MIX))


# -- the hash alone ---------------------------------------------------------------------------

_CANONICAL = CacheKeyPy(SECRET, LIST, query=LIST_QUERY).canonical(
    "GET", "/api/v1/products", b"limit=20&sort=price&min_price_cents=1000", BROWSER
)
_HKEY = derive_key(SECRET)


def test_hash_blake2b_c(micro: Any) -> None:
    """Compiled keyed BLAKE2b-128, key block included (CacheKeyC precomputes it: one block less)."""
    fn = compiled("blake2b128_c")
    assert fn(_HKEY, _CANONICAL) == hashlib.blake2b(_CANONICAL, key=_HKEY, digest_size=16).digest()
    micro(lambda: fn(_HKEY, _CANONICAL), group=HASH_GROUP, ops=1)


def test_hash_blake2b_hashlib(micro: Any) -> None:
    """hashlib.blake2b(data, key=..., digest_size=16).digest() (what the pure twin uses)."""
    blake2b = hashlib.blake2b
    assert (
        _cachekey_py.blake2b128(_HKEY, _CANONICAL)
        == blake2b(_CANONICAL, key=_HKEY, digest_size=16).digest()
    )
    micro(lambda: blake2b(_CANONICAL, key=_HKEY, digest_size=16).digest(), group=HASH_GROUP, ops=1)


def test_hash_siphash128_c(micro: Any) -> None:
    """Compiled SipHash-2-4-128 (reference algorithm; checked against its test vectors)."""
    try:
        from cygate.core._cachekey_c import siphash128
    except ImportError:
        pytest.skip("compiled cache key not available")
    assert siphash128(bytes(range(16)), b"").hex() == "a3817f04ba25a8e66df67214c7550293"
    key = _HKEY[:16]
    micro(lambda: siphash128(key, _CANONICAL), group=HASH_GROUP, ops=1)


# -- the L1 hit path --------------------------------------------------------------------------

FAR = 1e12


def _filled_l1(keys: list[bytes]) -> L1:
    l1 = L1(64 * 1024 * 1024)
    for i, key in enumerate(keys):
        l1.put(key, ("entry", i), 1000, FAR, 0.0, ())
    return l1


def _cygate_hit_loop(cls: type[CacheKeyPy]) -> Callable[[], None]:
    s = specs(cls)
    keys = check_keys(cygate_key_of(cls))
    l1 = _filled_l1(keys)
    work = [(s[route].key, path, query, headers, who) for route, path, query, headers, who in MIX]
    get = l1.get
    monotonic = time.monotonic
    # correctness: every request of the mix hits its own entry
    for (key, path, query, headers, who), k in zip(work, keys, strict=True):
        assert get(key("GET", path, query, headers, who), monotonic()) == l1.get(k, 0.0)

    def run() -> None:
        now = monotonic()
        for key, path, query, headers, who in work:
            entry = get(key("GET", path, query, headers, who), now)
            if entry is None:
                raise AssertionError("miss")

    return run


def test_hit_cygate_c(micro: Any) -> None:
    """cygate: CacheKeyC.key + L1.get (SIEVE: a hit sets a flag), as the edge calls them (sync)."""
    micro(_cygate_hit_loop(compiled("CacheKeyC")), group=HIT_GROUP, ops=len(MIX))


def test_hit_cygate_py(micro: Any) -> None:
    """cygate with the pure twin: CacheKeyPy.key + L1.get."""
    micro(_cygate_hit_loop(CacheKeyPy), group=HIT_GROUP, ops=len(MIX))


ROUNDS = 50  # the async peers do the mix this many times per round


def _plain_str_keys() -> list[str]:
    return [plain_key(r[0], r[1], r[2], r[4]).hex() for r in MIX]


def _async_hit_loop(
    loop: asyncio.AbstractEventLoop, get: Callable[[str], Any], with_key: bool
) -> Callable[[], None]:
    work = [(r[0], r[1], r[2], r[4]) for r in MIX]
    keys = _plain_str_keys()

    async def check() -> None:
        for key in keys:
            assert (await get(key)) is not None

    loop.run_until_complete(check())

    async def many_with_key() -> None:
        for _ in range(ROUNDS):
            for route, path, query, who in work:
                if await get(plain_key(route, path, query, who).hex()) is None:
                    raise AssertionError("miss")

    async def many() -> None:
        for _ in range(ROUNDS):
            for key in keys:
                if await get(key) is None:
                    raise AssertionError("miss")

    coro = many_with_key if with_key else many
    return lambda: loop.run_until_complete(coro())


@contextlib.contextmanager
def _loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.close()


def _cashews_get() -> Callable[[str], Any]:
    cashews = pytest.importorskip("cashews")
    cache = cashews.Cache()
    cache.setup("mem://", size=100_000)
    with _loop() as loop:
        for key in _plain_str_keys():
            loop.run_until_complete(cache.set(key, b"entry", expire=3600))
    return cache.get  # type: ignore[no-any-return]


def _aiocache_get() -> Callable[[str], Any]:
    aiocache = pytest.importorskip("aiocache")
    cache = aiocache.SimpleMemoryCache()
    with _loop() as loop:
        for key in _plain_str_keys():
            loop.run_until_complete(cache.set(key, b"entry", ttl=3600))
    return cache.get  # type: ignore[no-any-return]


def test_hit_cashews(micro: Any) -> None:
    """cashews (mem:// backend) get, keyed by the plain Python key (awaited, as it must be)."""
    with _loop() as loop:
        micro(_async_hit_loop(loop, _cashews_get(), True), group=HIT_GROUP, ops=len(MIX) * ROUNDS)


def test_hit_aiocache(micro: Any) -> None:
    """aiocache SimpleMemoryCache get, keyed by the plain Python key (awaited)."""
    with _loop() as loop:
        micro(_async_hit_loop(loop, _aiocache_get(), True), group=HIT_GROUP, ops=len(MIX) * ROUNDS)


def test_lookup_cygate_l1(micro: Any) -> None:
    """cygate L1.get alone (key already computed)."""
    keys = check_keys(cygate_key_of(CacheKeyPy))
    l1 = _filled_l1(keys)
    get = l1.get

    def run() -> None:
        for key in keys:
            get(key, 1.0)

    micro(run, group=LOOKUP_GROUP, ops=len(MIX))


def test_lookup_cashews(micro: Any) -> None:
    """cashews mem:// get alone (key already computed), awaited."""
    with _loop() as loop:
        micro(
            _async_hit_loop(loop, _cashews_get(), False), group=LOOKUP_GROUP, ops=len(MIX) * ROUNDS
        )


def test_lookup_aiocache(micro: Any) -> None:
    """aiocache SimpleMemoryCache get alone (key already computed), awaited."""
    with _loop() as loop:
        micro(
            _async_hit_loop(loop, _aiocache_get(), False), group=LOOKUP_GROUP, ops=len(MIX) * ROUNDS
        )


# -- the edge's whole cache step on a hit -----------------------------------------------------


def test_edge_lookup_hit(micro: Any) -> None:
    """ResponseCache.lookup on 20 fresh L1 hits: key, look-up, freshness, conditional check,
    ready-to-send start message (with the selected key implementation)."""
    settings = load_settings({}, cache_key_secret=SECRET.decode(), cache_l2=False)
    rules = {
        "product": CacheRule(ttl=3600, tags=["product:{product_id}"]),
        "list": CacheRule(ttl=3600, query=LIST_QUERY),
        "me": CacheRule(ttl=3600, scope="private"),
    }
    cache = ResponseCache(settings.cache, Metrics(), redis=settings.redis, rules=rules)
    policies = {}
    for route, rule in ((PRODUCT, "product"), (LIST, "list"), (ME, "me")):
        cache.add_route(route, rule)
        policies[route] = RoutePolicy(name=route, cache=rule)
    ctxs = []
    for route, path, query, headers, who in MIX:
        scope = {"type": "http", "headers": headers, "query_string": query, "client": None}
        params = {"product_id": path.rsplit("/", 1)[1]} if route == PRODUCT else None
        ctx = EdgeContext(scope, "GET", path, "", "rid", b"", policies[route], params)
        ctx.principal = Principal(sub=who) if who else None
        ctxs.append(ctx)
    body = b'{"id":"0b7e6f1c","name":"A product","price_cents":1999}' * 4
    now = time.monotonic()
    for ctx in ctxs:
        if cache.lookup(ctx) is not None:
            continue  # the same resource again
        pending = ctx.scope.pop("cygate.cache")
        rule = pending.route.rule
        entry = Entry.response(200, [(b"content-type", b"application/json")], body, rule, (),
                               time.time(), pending.route.extra)  # fmt: skip
        entry.place(now, time.time())
        cache.l1.put(pending.key, entry, entry.size, entry.until, now, ())
    for ctx in ctxs:
        hit = cache.lookup(ctx)
        assert hit is not None and hit[0]["status"] == 200 and hit[1]["body"] == body
    lookup = cache.lookup

    def run() -> None:
        for ctx in ctxs:
            lookup(ctx)

    micro(run, group=EDGE_GROUP, ops=len(MIX))
