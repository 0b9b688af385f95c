"""The cache step of the edge, in process (L1 only): hits, HTTP semantics, isolation, what is
never stored, single-flight, stale windows, remembered 404s, rule checks."""

from __future__ import annotations

import asyncio
import os
import pathlib
import stat
import warnings
from collections import Counter
from typing import Annotated, Any

import pytest
from cache_helpers import RULES, cache_settings, call, make_edge
from litestar import get
from litestar.di import NamedDependency, Provide
from litestar.params import CookieParameter, HeaderParameter, QueryParameter

from core_impls import CoreImplementation
from cygate.edge import cache_entry
from cygate.edge.auth import PRINCIPAL, provide_principal
from cygate.edge.cache import DEFAULT_RULES, ResponseCache, check_inputs, load_secret
from cygate.edge.cache_entry import Entry, rule_headers
from cygate.edge.context import Principal
from cygate.infra.metrics import Metrics
from cygate.settings import CacheRule


def make_edge_with_calls() -> tuple[Any, ResponseCache, Counter[str]]:
    calls: Counter[str] = Counter()
    edge, cache, _ = make_edge(fast_calls=calls)
    return edge, cache, calls


# -- hits and HTTP semantics ------------------------------------------------------------------


async def test_miss_then_hit_without_the_app() -> None:
    edge, _, app = make_edge()
    first = await call(edge, "/items/1")
    second = await call(edge, "/items/1")
    assert (first.status, first.x_cache, second.x_cache) == (200, "miss", "hit-l1")
    assert first.body == second.body and app.calls["/items/1"] == 1
    assert second.headers[b"content-type"] == b"application/json"
    assert second.headers[b"content-length"] == b"%d" % len(second.body)
    assert second.headers[b"age"] == b"0"


def test_entries_share_equal_header_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Equal header pairs of different entries are one object (a hit lists its entry's
    pairs: shared ones stay in the CPU's cache), the ETag excepted; past the bound a pair is
    kept as it came. The headers themselves are unchanged either way."""
    rule = RULES["items"]
    extra = rule_headers(rule)

    def entry(body: bytes) -> Entry:
        base = [(b"content-type", b"application/" + b"json"), (b"x-app", bytes([49]))]
        return Entry.response(200, base, body, rule, (), 1000.0, extra).place(5.0, 1000.0)

    a, b = entry(b'{"id":1}'), entry(b'{"id":2}')
    assert [n for n, _ in a.headers] == [
        b"content-type",
        b"x-app",
        b"content-length",
        b"etag",
        b"cache-control",
    ]
    for pa, pb in zip(a.headers, b.headers, strict=True):
        assert (pa is pb) == (pa[0] != b"etag"), pa
    assert a.headers[2] == (b"content-length", b"8") and a.headers[3][1] == a.etag
    hit_a, hit_b = a.hit(6.5)[0]["headers"], b.hit(6.5)[0]["headers"]
    assert hit_a[-2:] == ((b"x-cache", b"hit-l1"), (b"age", b"1"))
    assert hit_a[-1] is hit_b[-1] and hit_a[-2] is hit_b[-2]

    monkeypatch.setattr(cache_entry, "_PAIRS", {})
    monkeypatch.setattr(cache_entry, "_PAIRS_MAX", 1)
    c, d = entry(b'{"id":3}'), entry(b'{"id":4}')
    assert c.headers[0] is d.headers[0]  # the one pair the bound let in
    assert c.headers[1] is not d.headers[1] and c.headers[1] == d.headers[1]
    assert [p for p in c.headers if p[0] != b"etag"] == [p for p in a.headers if p[0] != b"etag"]


def test_the_hit_paths_record_follows_its_entry(
    core_impl: CoreImplementation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Entry.hot`` (what the compiled hit path reads in place) says what the entry's own
    fields say after each change: creation, ``place`` (with and without a cap of its age),
    ``cap`` and a rebuild of the hit headers; a remembered 404 is never servable."""
    monkeypatch.setattr(cache_entry, "EntryHot", core_impl.module("hitpath").EntryHot)
    rule = RULES["items"]
    entry = Entry.response(
        200, [(b"content-type", b"application/json")], b"{}", rule, (), 1000.0, ()
    )
    hot = entry.hot
    assert type(hot) is core_impl.module("hitpath").EntryHot
    assert (hot.status, hot.servable, hot.body_message) == (200, True, entry.body_message)
    entry.place(50.0, 1003.0)  # stored 3 s ago
    assert (hot.born, hot.fresh_until) == (entry.born, entry.fresh_until) == (47.0, 107.0)
    entry.place(50.0, 1003.0, max_age=4.0)  # born at 47: served until it is 4 s old
    assert hot.fresh_until == entry.fresh_until == entry.swr_until == 51.0
    assert entry.error_until == 107.0 + rule.stale_if_error  # stale-if-error stays
    entry.place(50.0, 1003.0)
    entry.cap(5.0)  # as when the subscription is lost: capped in place
    assert hot.fresh_until == entry.fresh_until == entry.swr_until == 52.0
    entry.cap(500.0)  # a cap never lengthens
    assert hot.fresh_until == entry.fresh_until == 52.0
    for now, age in ((52.5, 5), (52.9, 5), (53.0, 6)):
        start, _ = entry.hit(now)
        assert hot.hit is start["headers"]
        assert hot.age == age and dict(hot.hit)[b"age"] == b"%d" % age
    gone = Entry.not_found("no such item", rule, (), 1000.0)
    assert (gone.hot.status, gone.hot.servable) == (404, False)


async def test_cache_control_and_etag() -> None:
    edge, _, _ = make_edge()
    r = await call(edge, "/items/1")
    assert r.headers[b"cache-control"] == (
        b"public, max-age=30, stale-while-revalidate=30, stale-if-error=300"
    )
    etag = r.headers[b"etag"]
    assert etag.startswith(b'"') and etag.endswith(b'"') and len(etag) == 24
    assert (await call(edge, "/items/1")).headers[b"etag"] == etag
    assert (await call(edge, "/items/2")).headers[b"etag"] != etag


async def test_if_none_match_gives_304_on_hits_and_misses() -> None:
    edge, cache, app = make_edge()
    etag = (await call(edge, "/items/1")).headers[b"etag"]
    for inm in (etag, b"W/" + etag, b'"other", ' + etag, b"*"):
        r = await call(edge, "/items/1", headers=[(b"if-none-match", inm)])
        assert (r.status, r.body) == (304, b"")
        assert r.headers[b"etag"] == etag and b"content-length" not in r.headers
        assert r.headers[b"cache-control"].startswith(b"public")
    r = await call(edge, "/items/1", headers=[(b"if-none-match", b'"stale-tag"')])
    assert r.status == 200 and r.body
    cache.flush()  # a miss answers a condition too
    r = await call(edge, "/items/1", headers=[(b"if-none-match", b"*")])
    assert (r.status, r.x_cache) == (304, "miss") and app.calls["/items/1"] == 2


async def test_head_hit_has_headers_and_no_body() -> None:
    edge, _, app = make_edge()
    get_reply = await call(edge, "/items/3")
    head = await call(edge, "/items/3", method="HEAD")
    assert (head.status, head.body, head.x_cache) == (200, b"", "hit-l1")
    assert head.headers[b"content-length"] == b"%d" % len(get_reply.body)
    cold = await call(edge, "/items/4", method="HEAD")  # a HEAD miss fills the cache for GET
    assert cold.body == b"" and (await call(edge, "/items/4")).x_cache == "hit-l1"
    assert app.calls["/items/4"] == 1


async def test_per_request_headers_are_never_stored() -> None:
    edge, _, _ = make_edge()
    await call(edge, "/items/1", headers=[(b"x-request-id", b"first-request")])
    hit = await call(edge, "/items/1", headers=[(b"x-request-id", b"second-request")])
    assert hit.x_cache == "hit-l1"
    assert hit.headers[b"x-request-id"] == b"second-request"
    assert hit.headers[b"x-stage"] == b"second-request"  # the stage's header is this request's
    assert hit.headers[b"x-content-type-options"] == b"nosniff"


async def test_query_allow_list() -> None:
    edge, _, app = make_edge()
    await call(edge, "/items/1", query=b"q=a%20b&utm_source=mail")
    assert (await call(edge, "/items/1", query=b"q=a+b")).x_cache == "hit-l1"
    assert (await call(edge, "/items/1", query=b"q=other")).x_cache == "miss"
    assert (await call(edge, "/items/1", query=b"fbclid=1")).x_cache == "miss"  # no q: own key
    assert app.calls["/items/1"] == 3


async def test_listed_headers_vary_the_entry() -> None:
    edge, _, app = make_edge()
    en = await call(edge, "/lang", headers=[(b"accept-language", b"en")])
    de = await call(edge, "/lang", headers=[(b"accept-language", b"de")])
    assert en.json()["lang"] == "en" and de.json()["lang"] == "de"
    again = await call(edge, "/lang", headers=[(b"accept-language", b"en")])
    assert again.x_cache == "hit-l1" and again.json()["lang"] == "en"
    assert again.headers[b"vary"] == b"accept-language" and app.calls["/lang"] == 2


async def test_host_accept_and_forwarded_host_never_poison() -> None:
    edge, _, app = make_edge()
    evil = [
        (b"host", b"evil.example"),
        (b"x-forwarded-host", b"evil.example"),
        (b"accept", b"text/html"),
    ]
    first = await call(edge, "/items/7", headers=evil)
    normal = await call(edge, "/items/7", headers=[(b"host", b"shop.example")])
    assert normal.x_cache == "hit-l1" and normal.body == first.body
    assert b"evil" not in normal.body and all(b"evil" not in v for v in normal.headers.values())
    assert normal.headers[b"content-type"] == b"application/json"
    assert app.calls["/items/7"] == 1


# -- per-caller entries -----------------------------------------------------------------------


async def test_private_entries_are_per_principal() -> None:
    edge, _, app = make_edge()
    a1 = await call(edge, "/mine", user="alice")
    b1 = await call(edge, "/mine", user="bob")
    a2 = await call(edge, "/mine", user="alice")
    b2 = await call(edge, "/mine", user="bob")
    assert a1.json()["user"] == a2.json()["user"] == "alice"
    assert b1.json()["user"] == b2.json()["user"] == "bob"
    assert (a1.x_cache, b1.x_cache, a2.x_cache, b2.x_cache) == ("miss", "miss", "hit-l1", "hit-l1")
    assert a2.headers[b"cache-control"].startswith(b"private,")
    assert app.calls["/mine"] == 2


async def test_private_rule_never_caches_anonymous_callers() -> None:
    edge, _, app = make_edge()
    await call(edge, "/mine", user="alice")
    for _ in range(2):
        anon = await call(edge, "/mine")
        assert "user" not in anon.json() and b"x-cache" not in anon.headers
    assert app.calls["/mine"] == 3


async def test_etag_of_one_caller_is_no_key_to_anothers_entry() -> None:
    edge, _, _ = make_edge()
    etag = (await call(edge, "/mine", user="alice")).headers[b"etag"]
    r = await call(edge, "/mine", user="bob", headers=[(b"if-none-match", etag)])
    assert r.status == 200 and r.json()["user"] == "bob"


async def test_same_subject_of_two_issuers_is_two_callers() -> None:
    # A subject is unique only within its issuer: "7" of one provider is not "7" of another.
    edge, _, fast_calls = make_edge_with_calls()
    own = await call(edge, "/fastme", user="7", issuer="cygate")
    other = await call(edge, "/fastme", user="7", issuer="https://idp.example")
    assert (own.x_cache, other.x_cache) == ("miss", "miss") and fast_calls["7"] == 2
    assert other.json()["issuer"] == "https://idp.example"
    # The length goes first: ("ab", "c") and ("a", "bc") concatenate alike but key apart.
    assert (await call(edge, "/fastme", user="c", issuer="ab")).json()["user"] == "c"
    assert (await call(edge, "/fastme", user="bc", issuer="a")).json()["user"] == "bc"
    hit = await call(edge, "/fastme", user="7", issuer="cygate")
    assert hit.x_cache == "hit-l1" and hit.body == own.body


async def test_fast_handler_headers_are_its_responses_own() -> None:
    # A per-caller fast handler (like /users/me) sets Cache-Control: stored once, never doubled
    # by the edge, the same on the miss and the hit; a no-store from it is honoured.
    edge, _, fast_calls = make_edge_with_calls()
    miss = await call(edge, "/fastme", user="ann")
    hit = await call(edge, "/fastme", user="ann")
    for r in (miss, hit):
        assert [v for n, v in r.raw if n == b"cache-control"] == [b"private, max-age=0"]
        assert r.headers[b"x-stage"] == r.headers[b"x-request-id"]  # the stage's stays per request
    assert (miss.x_cache, hit.x_cache) == ("miss", "hit-l1") and miss.body == hit.body
    assert miss.headers[b"etag"] == hit.headers[b"etag"]
    refused = [(b"x-test-cc", b"private, no-store")]
    for _ in range(2):
        r = await call(edge, "/fastme", user="bo", headers=refused)
        assert b"x-cache" not in r.headers
        assert [v for n, v in r.raw if n == b"cache-control"] == [b"private, no-store"]
    assert fast_calls["bo"] == 2 and fast_calls["ann"] == 1


async def test_caller_tags_drop_one_callers_entries_only() -> None:
    edge, cache, fast_calls = make_edge_with_calls()
    for user in ("ann", "bo"):
        await call(edge, "/fastme", user=user)
    await cache.invalidate_tags(["user:ann"])
    assert (await call(edge, "/fastme", user="ann")).x_cache == "miss"
    assert (await call(edge, "/fastme", user="bo")).x_cache == "hit-l1"
    assert fast_calls["ann"] == 2 and fast_calls["bo"] == 1


def test_caller_tags_need_a_private_rule() -> None:
    cache = ResponseCache(cache_settings(cache_l2=False).cache, Metrics(), rules={
        "shared": CacheRule(ttl=60, tags=["user:{caller}"]),
        "mine": CacheRule(ttl=60, scope="private", tags=["user:{caller}"]),
    })  # fmt: skip
    with pytest.raises(ValueError, match="needs a private rule"):
        cache.add_route("GET /shared", "shared")
    with pytest.raises(ValueError, match="may not be named 'caller'"):
        cache.add_route("GET /x/{caller}", "mine")
    assert cache.add_route("GET /mine", "mine")


# -- never stored -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/cookie", "/nostore", "/private-answer", "/vary-other"])
async def test_responses_that_must_not_be_stored(path: str) -> None:
    edge, _, app = make_edge()
    first = await call(edge, path)
    second = await call(edge, path)
    assert first.status == second.status == 200
    assert b"x-cache" not in second.headers and app.calls[path] == 2
    if path == "/cookie":
        assert second.headers[b"set-cookie"] == b"session=1"


async def test_too_big_to_store_is_streamed_whole() -> None:
    edge, _, app = make_edge(settings=cache_settings(cache_l2=False, cache_max_entry_bytes=1000))
    r = await call(edge, "/big")
    assert r.status == 200 and len(r.json()["pad"]) == 5000
    await call(edge, "/big")
    assert app.calls["/big"] == 2


async def test_client_no_cache_revalidates_and_no_store_bypasses() -> None:
    # (a rule that honours the client's directives, a limit above the 4 reloads: see
    # test_cache_directives.py)
    edge, _, app = make_edge(
        settings=cache_settings(cache_l2=False, cache_forced_reloads_per_minute=600)
    )
    await call(edge, "/forced/1")
    app.version = 2
    assert (await call(edge, "/forced/1")).json()["v"] == 1
    for directive in (b"no-cache", b"max-age=0"):
        r = await call(edge, "/forced/1", headers=[(b"cache-control", directive)])
        assert r.x_cache == "miss" and r.json()["v"] == 2
    app.version = 3
    r = await call(edge, "/forced/1", headers=[(b"pragma", b"no-cache")])
    assert r.json()["v"] == 3
    assert (await call(edge, "/forced/1")).json()["v"] == 3  # the revalidated answer was stored
    app.version = 4
    r = await call(edge, "/forced/1", headers=[(b"cache-control", b"no-store")])
    assert r.json()["v"] == 4 and b"x-cache" not in r.headers
    assert (await call(edge, "/forced/1")).json()["v"] == 3  # no-store stored nothing


async def test_routes_without_a_rule_are_untouched() -> None:
    edge, _, app = make_edge()
    for _ in range(2):
        r = await call(edge, "/nocache")
        assert r.status == 200 and b"x-cache" not in r.headers and b"etag" not in r.headers
    assert app.calls["/nocache"] == 2


# -- 404s -------------------------------------------------------------------------------------


async def test_404_is_remembered_briefly_with_each_callers_request_id() -> None:
    calls: Counter[str] = Counter()
    edge, cache, _ = make_edge(fast_calls=calls)
    first = await call(edge, "/fast/0", headers=[(b"x-request-id", b"one")])
    second = await call(edge, "/fast/0", headers=[(b"x-request-id", b"two")])
    assert first.status == second.status == 404
    assert (first.x_cache, second.x_cache) == ("miss", "hit-l1")
    assert first.json()["request_id"] == "one" and second.json()["request_id"] == "two"
    assert second.json()["detail"] == "no fast item 0"
    assert second.headers[b"cache-control"] == b"no-store" and calls["0"] == 1
    # "created": the catalog's write purges the item's tag, and the 404 is gone at once
    await cache.invalidate_tags(["item:0"])
    await call(edge, "/fast/0")
    assert calls["0"] == 2


async def test_404_from_the_app_is_remembered_too() -> None:
    edge, _, app = make_edge()
    first = await call(edge, "/gone", headers=[(b"x-request-id", b"one")])
    second = await call(edge, "/gone", headers=[(b"x-request-id", b"two")])
    assert first.status == second.status == 404
    assert second.json()["request_id"] == "two" and app.calls["/gone"] == 1


async def test_404_expires_after_its_short_life() -> None:
    edge, _, app = make_edge()
    app.fail = 404
    await call(edge, "/short/1")
    assert (await call(edge, "/short/1")).x_cache == "hit-l1"
    await asyncio.sleep(0.25)
    app.fail = None
    r = await call(edge, "/short/1")
    assert r.status == 200 and app.calls["/short/1"] == 2


# -- invalidation -----------------------------------------------------------------------------


async def test_invalidate_tags_and_keys_in_process() -> None:
    edge, cache, app = make_edge()
    await call(edge, "/items/1")
    await call(edge, "/items/2")
    assert await cache.invalidate_tags(["item:1"]) == (0, 0)  # no L2: nobody else to tell
    assert (await call(edge, "/items/1")).x_cache == "miss"
    assert (await call(edge, "/items/2")).x_cache == "hit-l1"
    await cache.invalidate_tags(["items"])
    assert (await call(edge, "/items/2")).x_cache == "miss"
    key = cache.key_for("GET /items/{id:int}", "/items/2")
    await cache.invalidate_keys([key])
    assert (await call(edge, "/items/2")).x_cache == "miss"
    assert app.calls["/items/2"] == 3


async def test_tags_are_normalised_from_path_parameters() -> None:
    edge, cache, _ = make_edge()
    await call(edge, "/items/007")
    await call(edge, "/items/7")
    await cache.invalidate_tags(["item:7"])  # one tag for every spelling of the id
    assert (await call(edge, "/items/007")).x_cache == "miss"
    assert (await call(edge, "/items/7")).x_cache == "miss"


# -- single-flight and stale windows ----------------------------------------------------------


async def test_concurrent_misses_run_the_loader_once() -> None:
    edge, _, app = make_edge()
    app.gate = asyncio.Event()
    tasks = [asyncio.create_task(call(edge, "/slow")) for _ in range(50)]
    await asyncio.sleep(0.05)
    app.gate.set()
    replies = await asyncio.gather(*tasks)
    assert app.calls["/slow"] == 1
    assert {r.body for r in replies} == {replies[0].body} and {r.status for r in replies} == {200}
    assert {r.headers[b"x-request-id"] for r in replies}.__len__() == 50


async def test_a_failing_loader_fails_its_waiters_once() -> None:
    calls: Counter[str] = Counter()
    edge, _, _ = make_edge(fast_calls=calls)
    replies = await asyncio.gather(*(call(edge, "/fast/503") for _ in range(20)))
    assert {r.status for r in replies} == {503}
    assert calls["503"] < 20  # the waiters share the loader's answer, not a load each
    assert {r.json()["request_id"] for r in replies}.__len__() == 20


async def test_waiters_retry_when_the_loader_vanishes() -> None:
    edge, _, app = make_edge()
    app.gate = asyncio.Event()
    leader = asyncio.create_task(call(edge, "/slow"))
    await asyncio.sleep(0.02)
    follower = asyncio.create_task(call(edge, "/slow"))
    await asyncio.sleep(0.02)
    leader.cancel()  # the leader's client went away mid-load
    await asyncio.sleep(0.02)
    app.gate.set()
    r = await follower
    assert r.status == 200 and app.calls["/slow"] == 2


async def test_stale_while_revalidate_serves_old_and_refreshes_once() -> None:
    edge, _, app = make_edge()
    assert (await call(edge, "/short/1")).json()["n"] == 1
    await asyncio.sleep(0.25)  # past ttl, inside the stale window
    stale = await asyncio.gather(*(call(edge, "/short/1") for _ in range(5)))
    assert {r.x_cache for r in stale} == {"stale"} and {r.json()["n"] for r in stale} == {1}
    for _ in range(50):
        await asyncio.sleep(0.01)
        if app.calls["/short/1"] == 2:
            break
    assert app.calls["/short/1"] == 2  # one background refresh
    fresh = await call(edge, "/short/1")
    assert (fresh.x_cache, fresh.json()["n"]) == ("hit-l1", 2)


async def test_stale_if_error_serves_the_old_entry() -> None:
    edge, _, app = make_edge()
    first = await call(edge, "/fallback")
    await asyncio.sleep(0.15)
    app.fail = 503
    r = await call(edge, "/fallback")
    assert (r.status, r.x_cache, r.body) == (200, "stale", first.body)
    app.fail = None
    assert (await call(edge, "/fallback")).x_cache == "miss"


async def test_stale_if_error_covers_a_fast_handlers_problem() -> None:
    calls: Counter[str] = Counter()
    edge, _, app = make_edge(fast_calls=calls)
    first = await call(edge, "/fastfb/1")
    await asyncio.sleep(0.15)
    app.fail = 503
    r = await call(edge, "/fastfb/1")
    assert (r.status, r.x_cache, r.body) == (200, "stale", first.body)
    cold = await call(edge, "/fastfb/2")
    assert cold.status == 503 and cold.headers[b"content-type"] == b"application/problem+json"


# -- rules and set-up -------------------------------------------------------------------------


def test_rule_checks() -> None:
    cache = ResponseCache(cache_settings(cache_l2=False).cache, Metrics(), rules=RULES)
    with pytest.raises(ValueError, match="unknown cache rule"):
        cache.add_route("GET /x", "nope")
    with pytest.raises(ValueError, match="only GET"):
        cache.add_route("POST /x", "plain")
    with pytest.raises(ValueError, match="no path parameter 'id'"):
        cache.add_route("GET /x", "items")
    cache.rules["off"] = CacheRule(ttl=0)
    assert not cache.add_route("GET /x", "off")
    assert set(DEFAULT_RULES) <= set(cache.rules)


def test_rule_must_cover_what_the_handler_reads() -> None:
    @get("/p")
    async def reads(
        q: str, lang: Annotated[str, HeaderParameter(name="accept-language")] = "en"
    ) -> dict[str, Any]:
        return {}

    @get("/alias")
    async def alias(s: Annotated[str, QueryParameter(name="sort")] = "") -> dict[str, Any]:
        return {}

    @get("/raw")
    async def raw(headers: dict[str, str]) -> dict[str, Any]:
        return {}

    @get("/c")
    async def cookie(
        session: Annotated[str, CookieParameter(name="session")] = "",
    ) -> dict[str, Any]:
        return {}

    check_inputs("GET /p", CacheRule(query=["q"], headers=["Accept-Language"]), reads)
    with pytest.raises(ValueError, match="query parameter 'q'"):
        check_inputs("GET /p", CacheRule(headers=["accept-language"]), reads)
    with pytest.raises(ValueError, match="header 'accept-language'"):
        check_inputs("GET /p", CacheRule(query=["q"]), reads)
    check_inputs("GET /alias", CacheRule(query=["sort"]), alias)
    with pytest.raises(ValueError, match="query parameter 'sort'"):
        check_inputs("GET /alias", CacheRule(query=["s"]), alias)
    with pytest.raises(ValueError, match="raw request"):
        check_inputs("GET /raw", CacheRule(), raw)
    with pytest.raises(ValueError, match="cookie"):
        check_inputs("GET /c", CacheRule(), cookie)


def test_the_caller_is_an_input_of_private_rules_only() -> None:
    who = {PRINCIPAL: Provide(provide_principal, sync_to_thread=False)}

    @get("/mine", dependencies=who)
    async def mine(principal: NamedDependency[Principal]) -> dict[str, Any]:
        return {}

    @get("/named-otherwise", dependencies={"caller": who[PRINCIPAL]})
    async def named_otherwise(caller: NamedDependency[Principal]) -> dict[str, Any]:
        return {}

    def language(request: Any) -> str:
        return str(request.headers.get("accept-language", ""))

    @get("/dep", dependencies={"lang": Provide(language, sync_to_thread=False)})
    async def other_dependency(lang: NamedDependency[str]) -> dict[str, Any]:
        return {}

    @get("/q")
    async def query_named_principal(principal: str) -> dict[str, Any]:
        return {}

    private = CacheRule(scope="private")
    check_inputs("GET /mine", private, mine)
    check_inputs("GET /named-otherwise", private, named_otherwise)
    for name, handler in (("GET /mine", mine), ("GET /named-otherwise", named_otherwise)):
        with pytest.raises(ValueError, match="must be private"):
            check_inputs(name, CacheRule(), handler)  # one caller's answer served to all
    for rule in (CacheRule(), private):
        with pytest.raises(ValueError, match="dependency 'lang'"):
            check_inputs("GET /dep", rule, other_dependency)
    with pytest.raises(ValueError, match="query parameter 'principal'"):
        check_inputs("GET /q", private, query_named_principal)  # not the dependency: a query


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_public_rule_for_users_me_is_refused_at_start_up() -> None:
    from cygate.app import create_app

    for public in (CacheRule(ttl=60, max_age=0, tags=["user:{caller}"]), CacheRule(ttl=60)):
        with pytest.raises(ValueError, match=r"users/me reads the caller.*must be private"):
            create_app(cache_settings(cache_rules={"me": public}))
    off = CacheRule(ttl=0, scope="private")  # switched off (still checked)
    edge = create_app(cache_settings(cache_rules={"me": off}))
    assert edge.cache is not None and "GET /api/v1/users/me" not in edge.cache.routes


# NOTE: the catalog's handlers use Litestar's inferred path parameters (not this code).
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_apps_cached_routes_pass_their_checks() -> None:
    from cygate.app import create_app

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        edge = create_app(cache_settings())
    # The principal dependency is declared explicitly (an inferred one is deprecated).
    assert not [w for w in caught if "principal" in str(w.message)]
    assert edge.cache is not None
    assert set(edge.cache.routes) == {
        "GET /api/v1/products/{product_id:uuid}",
        "GET /api/v1/products",
        "GET /api/v1/categories",
        "GET /api/v1/categories/{category_id:uuid}",  # what category writes' If-Match names
        "GET /api/v1/search",  # issue 7
        "GET /api/v1/users/me",
    }
    assert edge.cache.routes["GET /api/v1/users/me"].scope == "private"
    assert create_app(cache_settings(cache_enabled=False)).cache is None


def test_secret_file_is_created_once_and_private(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "state" / "cache-key"
    settings = cache_settings(cache_key_secret="", cache_key_file=str(path))
    first = load_secret(settings.cache)
    assert load_secret(settings.cache) == first and len(first) >= 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_secret(cache_settings(cache_key_secret="given").cache) == b"given"
    path.write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_secret(settings.cache)


async def test_metrics_count_results() -> None:
    metrics = Metrics()
    edge, cache, _ = make_edge(metrics=metrics)
    await call(edge, "/items/1")
    await call(edge, "/items/1")
    assert cache.l1_hits == 1
    cache.sync_metrics()
    assert metrics.counter("cygate_cache_requests_total", result="hit-l1").value == 1
    assert metrics.counter("cygate_cache_loads_total").value == 1
    text = metrics.render(cache.gauges())
    assert 'cygate_cache_requests_total{result="miss"} 1' in text
    assert "cygate_cache_l1_entries 1" in text
