"""CORS and compression through the edge: preflights, the headers of every kind of answer
(fast handler, app, cache hit, problem), each coding's round trip, the kept variants, ETags
and validators per variant. Both implementations (the edge uses the hit path's scan)."""

from __future__ import annotations

import gzip
from typing import Any

import brotli
import orjson
import pytest
import zstandard

from core_impls import CoreImplementation
from cygate.core.router import Router
from cygate.edge.cache import ResponseCache
from cygate.edge.compress import Compression
from cygate.edge.context import EdgeContext, RoutePolicy
from cygate.edge.cors import EXPOSED, Cors
from cygate.edge.edge import Edge, Message
from cygate.infra.metrics import Metrics
from cygate.settings import CacheRule, load_settings

APP = b"https://app.example"
EVIL = b"https://evil.example"
BIG = orjson.dumps(
    {"items": [{"id": i, "name": f"product {i}", "price": i * 3} for i in range(100)]}
)


def decode(coding: bytes | None, data: bytes) -> bytes:
    if coding == b"gzip":
        return gzip.decompress(data)
    if coding == b"br":
        return bytes(brotli.decompress(data))
    if coding == b"zstd":
        return zstandard.ZstdDecompressor().decompress(data)
    assert coding is None
    return data


class Reply:
    def __init__(self, sent: list[Message]) -> None:
        self.status: int = sent[0]["status"]
        self.headers: list[tuple[bytes, bytes]] = [tuple(h) for h in sent[0]["headers"]]
        self.body = b"".join(m.get("body", b"") for m in sent[1:])

    def get(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)

    def all(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k == name]

    def cors(self) -> dict[bytes, bytes]:
        return {k: v for k, v in self.headers if k.startswith(b"access-control-")}

    @property
    def decoded(self) -> bytes:
        return decode(self.get(b"content-encoding"), self.body)


class Setup:
    def __init__(
        self, credentials: bool = False, origins: tuple[str, ...] = ("https://app.example",)
    ) -> None:
        settings = load_settings(cache_key_secret="negotiation-test", cache_l2=False)
        self.cors = Cors(list(origins), allow_credentials=credentials, max_age=300)
        self.compression = Compression(100, 1 << 20)
        self.seen: list[dict[bytes, bytes]] = []
        router = Router()
        cache = ResponseCache(settings.cache, Metrics(), rules={"c": CacheRule(ttl=60)})
        big = RoutePolicy(name="GET /big/{id:int}", cache="c", fast=self._big)
        router.add("GET", "/big/{id:int}", big)
        router.add("PATCH", "/big/{id:int}", RoutePolicy(name="PATCH /big/{id:int}", auth=True))
        router.add("GET", "/small", RoutePolicy(name="GET /small"))
        router.add("GET", "/stream", RoutePolicy(name="GET /stream"))
        router.add("GET", "/raw", RoutePolicy(name="GET /raw"))
        router.add("GET", "/app", RoutePolicy(name="GET /app"))
        cache.add_route("GET /big/{id:int}", "c")
        self.edge = Edge(
            self._app,
            router,
            metrics=Metrics(),
            max_body_bytes=1000,
            cache=cache,
            cors=self.cors,
            compression=self.compression,
        )

    async def _big(self, ctx: EdgeContext) -> bytes:
        return BIG

    async def _app(self, scope: Any, receive: Any, send: Any) -> None:
        self.seen.append(dict(scope["headers"]))
        path = scope["path"]
        if path == "/small":
            body, more = b'{"ok": true}', False
        elif path == "/stream":
            body, more = BIG, True
        elif path == "/raw":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"image/png")],
                }
            )
            await send({"type": "http.response.body", "body": BIG})
            return
        else:
            body, more = BIG, False
        headers = [(b"content-type", b"application/json")]
        if not more:
            headers.append((b"content-length", b"%d" % len(body)))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": more})
        if more:
            await send({"type": "http.response.body", "body": b""})

    async def call(self, path: str, method: str = "GET", **headers: str | bytes) -> Reply:
        sent: list[Message] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def record(message: Message) -> None:
            sent.append(message)

        hs = [(b"host", b"gateway.test")]
        hs += [
            (k.replace("_", "-").encode(), v if isinstance(v, bytes) else v.encode())
            for k, v in headers.items()
        ]
        scope = {
            "type": "http",
            "method": method,
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": hs,
            "client": ("10.0.0.1", 1),
        }
        await self.edge(scope, receive, record)
        return Reply(sent)


@pytest.fixture
def setup(core_impl: CoreImplementation) -> Setup:
    return Setup()


# -- CORS -----------------------------------------------------------------------------------


async def test_preflight_from_an_allowed_origin_is_answered_in_the_edge(setup: Setup) -> None:
    r = await setup.call("/big/1", "OPTIONS", origin=APP, access_control_request_method="PATCH",
                         access_control_request_headers="authorization, if-match")  # fmt: skip
    assert r.status == 204 and r.body == b"" and r.get(b"content-length") is None
    assert r.cors() == {
        b"access-control-allow-origin": APP,
        b"access-control-allow-methods": b"GET, HEAD, PATCH",
        b"access-control-allow-headers": (
            b"authorization, cache-control, content-type, idempotency-key, if-match, "
            b"if-none-match, traceparent, x-request-id"
        ),
        b"access-control-max-age": b"300",
    }
    assert r.get(b"vary") == b"Origin, Access-Control-Request-Method"
    assert r.get(b"x-request-id")  # the edge's own headers, as on every answer


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": EVIL, "access_control_request_method": "GET"},  # refused origin
        {"origin": b"null", "access_control_request_method": "GET"},  # null, not listed
        {"origin": APP, "access_control_request_method": "DELETE"},  # a method the path lacks
        {"origin": APP, "access_control_request_method": "get, post"},  # not a method
        {"origin": APP},  # not a preflight: a plain OPTIONS
        {"access_control_request_method": "GET"},  # no origin
    ],
)
async def test_refused_preflights_get_the_plain_options_answer(
    setup: Setup, headers: dict[str, Any]
) -> None:
    r = await setup.call("/big/1", "OPTIONS", **headers)
    assert r.status == 200 and r.get(b"allow") == b"GET, HEAD, OPTIONS, PATCH"
    assert r.cors() == {} and r.get(b"vary") == b"Origin"


async def test_null_origin_when_listed(core_impl: CoreImplementation) -> None:
    s = Setup(origins=("null",))
    r = await s.call("/big/1", "OPTIONS", origin=b"null", access_control_request_method="GET")
    assert r.status == 204 and r.cors()[b"access-control-allow-origin"] == b"null"
    assert (await s.call("/small", origin=b"null")).get(b"access-control-allow-origin") == b"null"


@pytest.mark.parametrize("path", ["/big/2", "/big/2", "/small", "/nowhere", "/big/x"])
async def test_answers_of_every_kind_carry_the_origin(setup: Setup, path: str) -> None:
    allowed = await setup.call(path, origin=APP)
    assert allowed.cors() == {
        b"access-control-allow-origin": APP,
        b"access-control-expose-headers": EXPOSED,
    }
    assert allowed.all(b"vary")[-1:] == [b"Origin"] or b"Origin" in allowed.all(b"vary")
    refused = await setup.call(path, origin=EVIL)
    assert refused.cors() == {} and b"Origin" in refused.all(b"vary")
    assert refused.status == allowed.status
    none = await setup.call(path)
    assert none.cors() == {} and b"Origin" in none.all(b"vary")


async def test_a_cache_hit_and_a_problem_from_an_allowed_origin(setup: Setup) -> None:
    await setup.call("/big/3")
    hit = await setup.call("/big/3", origin=APP)
    assert hit.get(b"x-cache") == b"hit-l1" and hit.get(b"access-control-allow-origin") == APP
    problem = await setup.call("/big/3", "DELETE", origin=APP)
    assert problem.status == 405
    assert problem.get(b"content-type") == b"application/problem+json"
    assert problem.get(b"access-control-allow-origin") == APP


async def test_credentials_when_configured(core_impl: CoreImplementation) -> None:
    s = Setup(credentials=True)
    r = await s.call("/small", origin=APP)
    assert r.get(b"access-control-allow-credentials") == b"true"
    assert r.get(b"access-control-allow-origin") == APP  # the origin, never *
    pre = await s.call("/big/1", "OPTIONS", origin=APP, access_control_request_method="GET")
    assert pre.get(b"access-control-allow-credentials") == b"true"
    assert (await s.call("/small", origin=EVIL)).cors() == {}


async def test_any_origin(core_impl: CoreImplementation) -> None:
    s = Setup(origins=("*",))
    assert (await s.call("/small", origin=EVIL)).get(b"access-control-allow-origin") == b"*"
    assert (await s.call("/small", origin=b"null")).cors() == {}


# -- compression ----------------------------------------------------------------------------


@pytest.mark.parametrize("coding", [b"gzip", b"br", b"zstd"])
@pytest.mark.parametrize("path", ["/big/4", "/app"])
async def test_each_coding_round_trips(setup: Setup, coding: bytes, path: str) -> None:
    plain = await setup.call(path)
    r = await setup.call(path, accept_encoding=coding)
    assert r.get(b"content-encoding") == coding
    assert r.decoded == plain.body == BIG and len(r.body) < len(BIG) / 3
    assert r.get(b"content-length") == b"%d" % len(r.body)
    assert b"Accept-Encoding" in r.all(b"vary") and b"Accept-Encoding" in plain.all(b"vary")
    if plain.get(b"etag") is not None:
        assert r.get(b"etag") == plain.get(b"etag")[:-1] + b"." + coding + b'"'  # type: ignore[index]


@pytest.mark.parametrize(
    ("header", "coding"),
    [
        (b"gzip;q=0.5, br;q=0.4", b"gzip"),
        (b"gzip;q=0.5, zstd;q=0.9", b"zstd"),
        (b"unknown", None),
        (b"identity", None),
        (b"*;q=0", None),
        (b"gzip;q=nope", None),
        (b"gzip;q=1.7, zstd;q=0.1", b"zstd"),
        (b"\x00\xff;;;q===", None),
    ],
)
async def test_negotiated_codings(setup: Setup, header: bytes, coding: bytes | None) -> None:
    r = await setup.call("/big/5", accept_encoding=header)
    assert r.status == 200 and r.get(b"content-encoding") == coding and r.decoded == BIG


async def test_a_cached_compressed_hit_is_not_compressed_again(setup: Setup) -> None:
    first = await setup.call("/big/6", accept_encoding="br")
    assert first.get(b"x-cache") == b"miss" and setup.compression.encoded == 1
    for _ in range(5):
        hit = await setup.call("/big/6", accept_encoding="br")
        assert hit.get(b"x-cache") == b"hit-l1" and hit.body == first.body
    assert (setup.compression.encoded, setup.compression.reused) == (1, 5)
    await setup.call("/big/6", accept_encoding="gzip")
    assert setup.compression.encoded == 2  # one per coding


async def test_validators_per_variant(setup: Setup) -> None:
    plain = await setup.call("/big/7")
    tag = plain.get(b"etag")
    assert tag is not None and tag.startswith(b'"')
    br = await setup.call("/big/7", accept_encoding="br")
    br_tag = br.get(b"etag")
    assert br_tag == tag[:-1] + b'.br"'
    # the variant's own tag revalidates that variant
    r = await setup.call("/big/7", accept_encoding="br", if_none_match=br_tag)  # type: ignore[arg-type]
    assert r.status == 304 and r.get(b"etag") == br_tag and b"Accept-Encoding" in r.all(b"vary")
    # the identity tag revalidates the identity copy the client holds
    r = await setup.call("/big/7", accept_encoding="br", if_none_match=tag)
    assert r.status == 304 and r.get(b"etag") == tag
    # another coding's tag does not: a full answer in the negotiated coding
    r = await setup.call("/big/7", accept_encoding="gzip", if_none_match=br_tag)  # type: ignore[arg-type]
    assert r.status == 200 and r.get(b"content-encoding") == b"gzip" and r.decoded == BIG
    r = await setup.call("/big/7", if_none_match=br_tag)  # type: ignore[arg-type]
    assert r.status == 200 and r.get(b"content-encoding") is None


async def test_if_match_reaches_the_app_without_the_suffix(setup: Setup) -> None:
    await setup.call("/big/8", "PATCH", if_match=b'"abc.gzip", "def.br"', authorization="x")
    assert setup.seen[-1][b"if-match"] == b'"abc", "def"'


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/small", {}),  # below the threshold
        ("/stream", {}),  # streamed
        ("/raw", {}),  # not a compressible type
        ("/big/9", {"cache_control": "no-transform"}),  # the request says no
    ],
)
async def test_left_as_they_are(setup: Setup, path: str, headers: dict[str, str]) -> None:
    r = await setup.call(path, accept_encoding="gzip, br, zstd", **headers)
    assert r.get(b"content-encoding") is None
    assert r.body in (BIG, b'{"ok": true}')
    if path != "/big/9":
        assert b"Accept-Encoding" not in r.all(b"vary")


async def test_head_is_not_encoded_but_varies(setup: Setup) -> None:
    r = await setup.call("/big/10", "HEAD", accept_encoding="gzip")
    assert r.status == 200 and r.body == b"" and r.get(b"content-encoding") is None
    assert r.get(b"content-length") == b"%d" % len(BIG) and b"Accept-Encoding" in r.all(b"vary")
