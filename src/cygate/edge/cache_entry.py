"""One cached response, ready to send, and its compact encoding for L2.

An :class:`Entry` holds what a hit needs and nothing to compute: the status, the encoded
headers (``Content-Type``, ``Content-Length``, ``ETag``, ``Cache-Control``, ``Vary``), the body
and a shared body message. A hit builds one start message around a pre-built header tuple; the
tuple with ``X-Cache`` and ``Age`` is rebuilt at most once a second per entry.

A *negative* entry remembers a 404 (its ``detail`` only): a hit raises the same
:class:`~cygate.edge.problem.Problem`, so the problem document carries the caller's own
``request_id``, never the one of the request that was stored.

Times: ``stored_at`` is wall-clock seconds (shared with other instances through L2); the
freshness deadlines are this process's monotonic clock, placed by :meth:`Entry.place`.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from cygate.edge.compress import encodable_kind
from cygate.edge.hitpath import EntryHot

if TYPE_CHECKING:
    from cygate.edge.settings import CacheRule

__all__ = [
    "HIT_L1",
    "HIT_L2",
    "MISS",
    "STALE",
    "Entry",
    "decode_entry",
    "encode_entry",
    "etag_matches",
    "etag_of",
    "rule_headers",
    "shared_pair",
    "storable_headers",
]

log = logging.getLogger("cygate.cache")

HIT_L1 = b"hit-l1"
HIT_L2 = b"hit-l2"
MISS = b"miss"
STALE = b"stale"
_LABELS = (HIT_L1, HIT_L2, MISS, STALE)
_HIT_L1_PAIR = (b"x-cache", HIT_L1)

_WIRE_VERSION = 1
_OVERHEAD = 512
"""Bytes counted per entry on top of its headers and body (the Python objects around them)."""

# Response headers that are never stored: per-request, hop-by-hop, or written by the cache.
_DROP = frozenset(
    {
        b"age",
        b"cache-control",
        b"connection",
        b"content-length",
        b"date",
        b"etag",
        b"expires",
        b"keep-alive",
        b"server",
        b"traceparent",
        b"transfer-encoding",
        b"vary",
        b"x-cache",
        b"x-request-id",
    }
)


# PERF: one object for equal header pairs across entries. A hit's answer lists its entry's header
# pairs; with a thousand entries in turn, pairs of their own are as many cold cache lines per hit
# (granian reads every pair), where shared ones (``content-type``, ``cache-control``, ``age: 7``)
# stay in cache. Bounded: past the bound a pair is simply kept as it is. The ETag, one per body,
# is never shared.
_PAIRS: dict[tuple[bytes, bytes], tuple[bytes, bytes]] = {}
_PAIRS_MAX = 4096


def shared_pair(name: bytes, value: bytes) -> tuple[bytes, bytes]:
    """The header pair ``(name, value)``: the same object for equal pairs (up to a bound)."""
    pair = (bytes(name), bytes(value))
    found = _PAIRS.get(pair)
    if found is not None:
        return found
    if len(_PAIRS) < _PAIRS_MAX:
        _PAIRS[pair] = pair
    return pair


def etag_of(body: bytes) -> bytes:
    """A strong ETag: BLAKE2b-128 of the body, base64url (same bytes, same tag, any instance)."""
    digest = hashlib.blake2b(body, digest_size=16).digest()
    return b'"' + base64.urlsafe_b64encode(digest).rstrip(b"=") + b'"'


def etag_matches(if_none_match: bytes, etag: bytes) -> bool:
    """``If-None-Match`` names ``etag``: ``*``, or a listed tag equal to it with or without
    ``W/`` (weak comparison, RFC 9110 13.1.2). Used by the cache and by the validators step
    alike, so a tag revalidates the same way whichever answered."""
    if if_none_match.strip() == b"*":
        return True
    return any(tag.strip().removeprefix(b"W/") == etag for tag in if_none_match.split(b","))


def cache_control_of(rule: CacheRule) -> bytes:
    """The ``Cache-Control`` a cached response carries: ``public``/``private`` and the windows."""
    parts = [rule.scope, f"max-age={rule.max_age}"]
    if rule.stale_while_revalidate:
        parts.append(f"stale-while-revalidate={int(rule.stale_while_revalidate)}")
    if rule.stale_if_error:
        parts.append(f"stale-if-error={int(rule.stale_if_error)}")
    return ", ".join(parts).encode("ascii")


def rule_headers(rule: CacheRule) -> tuple[tuple[bytes, bytes], ...]:
    """The headers a rule puts on its responses: ``Cache-Control``, and ``Vary`` when the key
    varies on request headers."""
    headers = [(b"cache-control", cache_control_of(rule))]
    if rule.headers:
        headers.append((b"vary", ", ".join(sorted({h.lower() for h in rule.headers})).encode()))
    return tuple(headers)


def storable_headers(
    headers: Sequence[tuple[bytes, bytes]], rule: CacheRule, vary_ok: frozenset[bytes]
) -> list[tuple[bytes, bytes]] | None:
    """The app's headers to keep, or None when the response must not be stored at all:
    ``Set-Cookie``; ``Cache-Control`` with no-store, no-cache or private (for a public rule);
    ``Vary`` on a header the key does not vary on."""
    kept = []
    for name, value in headers:
        lname = name.lower()
        if lname == b"set-cookie":
            return None
        if lname == b"cache-control":
            directives = value.lower()
            if b"no-store" in directives or b"no-cache" in directives:
                return None
            if b"private" in directives and rule.scope != "private":
                return None
        elif lname == b"vary":
            for item in value.lower().split(b","):
                item = item.strip()
                if item and item not in vary_ok:
                    return None
        if lname not in _DROP:
            kept.append((lname, value))
    return kept


class _Wire(msgspec.Struct, array_like=True, frozen=True):
    """L2 encoding (msgpack array): compact and versioned."""

    v: int
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    etag: bytes
    stored_at: float
    ttl: float
    swr: float
    sie: float
    tags: list[str]
    detail: str | None


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_Wire)


class Entry:
    """A stored response (or a remembered 404), ready to send."""

    __slots__ = (
        "base",
        "body",
        "body_message",
        "born",
        "detail",
        "error_until",
        "etag",
        "fresh_until",
        "headers",
        "hot",
        "sie",
        "size",
        "status",
        "stored_at",
        "swr",
        "swr_until",
        "tags",
        "ttl",
        "until",
    )

    def __init__(
        self,
        status: int,
        base: list[tuple[bytes, bytes]],
        body: bytes,
        etag: bytes,
        stored_at: float,
        ttl: float,
        swr: float,
        sie: float,
        tags: tuple[str, ...],
        detail: str | None,
        extra: Sequence[tuple[bytes, bytes]],
    ) -> None:
        self.status = status
        self.base = base
        """The app's own headers that were kept (for L2)."""
        self.body = body
        self.etag = etag
        self.stored_at = stored_at
        self.ttl = ttl
        self.swr = swr
        self.sie = sie
        self.tags = tags
        self.detail = detail
        """Set for a remembered 404: the problem's detail."""
        headers = [shared_pair(k, v) for k, v in base]
        headers.append(shared_pair(b"content-length", b"%d" % len(body)))
        if detail is None:
            headers.append((b"etag", etag))
        headers.extend(shared_pair(k, v) for k, v in extra)
        self.headers = tuple(headers)
        self.body_message = {"type": "http.response.body", "body": body}
        self.size = len(body) + sum(len(k) + len(v) for k, v in headers) + _OVERHEAD
        self.born = self.fresh_until = self.swr_until = self.error_until = self.until = 0.0
        encodable = len(body) if detail is None and encodable_kind(status, headers) else -1
        self.hot = EntryHot(status, detail is None, self.body_message, encodable)
        """What the fused hit path reads of this entry (read-only outside this class): the
        deadlines, kept with the fields they mirror where those change (here, :meth:`place`
        and :meth:`cap`; nowhere else), the hit headers with the whole-second age they
        were built for (:meth:`hit`), and the body's size when the edge would compress it
        (``compress.encodable_kind``; -1 when it would not, whatever the size)."""

    @classmethod
    def response(
        cls,
        status: int,
        base: list[tuple[bytes, bytes]],
        body: bytes,
        rule: CacheRule,
        tags: tuple[str, ...],
        now_wall: float,
        extra: Sequence[tuple[bytes, bytes]],
    ) -> Entry:
        """An entry for a response the app just sent."""
        return cls(
            status,
            base,
            body,
            etag_of(body),
            now_wall,
            rule.ttl,
            rule.stale_while_revalidate,
            rule.stale_if_error,
            tags,
            None,
            extra,
        )

    @classmethod
    def not_found(
        cls, detail: str, rule: CacheRule, tags: tuple[str, ...], now_wall: float
    ) -> Entry:
        """A remembered 404 (no stale windows: a 404 is never served past its short life)."""
        return cls(404, [], b"", b"", now_wall, rule.not_found_ttl, 0.0, 0.0, tags, detail, ())

    def place(self, now: float, now_wall: float, max_age: float | None = None) -> Entry:
        """Set the monotonic deadlines from ``stored_at``; with ``max_age`` (while
        invalidations cannot arrive) see :meth:`cap`."""
        self.born = now - max(0.0, now_wall - self.stored_at)
        self.fresh_until = self.born + self.ttl
        self.swr_until = self.fresh_until + self.swr
        self.error_until = self.fresh_until + self.sie
        self.until = max(self.swr_until, self.error_until)
        self.hot.born = self.born
        self.hot.fresh_until = self.fresh_until
        if max_age is not None:
            self.cap(max_age)
        return self

    def cap(self, max_age: float) -> None:
        """Serve it (fresh, or stale while revalidating) only until it is ``max_age`` seconds
        old; the stale-if-error window stays (a failing loader may still fall back on it)."""
        limit = self.born + max_age
        if self.fresh_until > limit:
            self.fresh_until = limit
            self.hot.fresh_until = limit
        if self.swr_until > limit:
            self.swr_until = limit

    def lifetime_ms(self, now_wall: float) -> int:
        """Milliseconds L2 should keep it (until its last stale window ends)."""
        end = self.stored_at + self.ttl + max(self.swr, self.sie)
        return max(1, int((end - now_wall) * 1000))

    def matches(self, if_none_match: bytes) -> bool:
        """``If-None-Match`` names this entry's tag (see :func:`etag_matches`)."""
        return etag_matches(if_none_match, self.etag)

    def hit(self, now: float) -> tuple[dict[str, Any], dict[str, Any]]:
        """The messages of a fresh L1 hit (PERF: the hot path; see :meth:`messages`)."""
        age = int(now - self.born)
        hot = self.hot
        if age != hot.age:
            hot.age = age
            hot.hit = (*self.headers, _HIT_L1_PAIR, shared_pair(b"age", b"%d" % age))
        return (
            {"type": "http.response.start", "status": self.status, "headers": hot.hit},
            self.body_message,
        )

    def messages(self, label: bytes, now: float) -> tuple[dict[str, Any], dict[str, Any]]:
        """The start and body messages of a hit. PERF: L1 hits reuse a header tuple that is
        rebuilt when the whole-second ``Age`` changes; the start dict is always new (the edge
        adds this request's own headers to it)."""
        if label is HIT_L1:
            return self.hit(now)
        age = int(now - self.born)
        headers = (*self.headers, (b"x-cache", label), (b"age", b"%d" % age))
        return (
            {"type": "http.response.start", "status": self.status, "headers": headers},
            self.body_message,
        )

    def not_modified(self, label: bytes, now: float) -> tuple[dict[str, Any], dict[str, Any]]:
        """A 304 for this entry: the validators and caching headers, no body."""
        headers = [(k, v) for k, v in self.headers if k in (b"etag", b"cache-control", b"vary")]
        headers += [(b"x-cache", label), (b"age", b"%d" % int(now - self.born))]
        return (
            {"type": "http.response.start", "status": 304, "headers": headers},
            {"type": "http.response.body", "body": b""},
        )


def encode_entry(entry: Entry) -> bytes:
    """The L2 bytes of an entry."""
    return _encoder.encode(
        _Wire(
            _WIRE_VERSION,
            entry.status,
            entry.base,
            entry.body,
            entry.etag,
            entry.stored_at,
            entry.ttl,
            entry.swr,
            entry.sie,
            list(entry.tags),
            entry.detail,
        )
    )


def decode_entry(data: bytes, extra: Sequence[tuple[bytes, bytes]]) -> Entry | None:
    """An entry from L2 bytes, or None for anything unreadable (an older format, garbage):
    treated as a miss, never an error."""
    try:
        w = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        log.warning("unreadable L2 cache entry ignored: %s", exc)
        return None
    if w.v != _WIRE_VERSION:
        return None
    return Entry(
        w.status,
        [(bytes(k), bytes(v)) for k, v in w.headers],
        w.body,
        w.etag,
        w.stored_at,
        w.ttl,
        w.swr,
        w.sie,
        tuple(w.tags),
        w.detail,
        () if w.detail is not None else extra,
    )
