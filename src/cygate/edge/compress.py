"""Response compression in the edge: ``Accept-Encoding`` negotiation and encoded variants.

The edge compresses a response when the request's ``Accept-Encoding`` accepts one of the codings
it makes (``br``, ``zstd``, ``gzip``) and the response is worth it (:meth:`Compression.encodable`:
a JSON, problem+json or text type, a whole body of at least ``compression_min_bytes``, no
``Content-Encoding`` yet, no ``Cache-Control: no-transform``). Negotiation follows RFC 9110,
section 12.5.3: the highest q-value wins, ties go to the edge's order (br, zstd, gzip), ``*``
stands for every coding not named, ``q=0`` refuses, and an element that does not parse (a bad
q-value) is ignored, never an error. When nothing acceptable is left the response is sent
without a coding, even when ``identity`` is refused too (``identity;q=0`` or ``*;q=0``): the
RFC lets a server disregard the header rather than answer 406, and an API whose every answer
exists uncompressed is more useful that way.

Every response the edge could compress carries ``Vary: Accept-Encoding``, encoded or not. An
encoded one's strong ``ETag`` gets the coding as a suffix inside the quotes (``"tag"`` becomes
``"tag.br"``): RFC 9110, section 8.8.3 requires different tags for different content codings
of a representation. The edge strips the suffix of the coding it negotiates from
``If-None-Match`` (and every one of its suffixes from ``If-Match``) before the request goes on,
so the cache, the validators and the catalog's write checks compare the tags they made.

Encoded variants are kept: a response whose ``ETag`` is strong (the cache's and the validators'
tag is a hash of the body) is encoded once per coding and the variant kept in a byte-bounded
L1 of its own (:class:`~cygate.edge.l1.L1`, SIEVE), keyed by the tag and the coding, so a
cached hit served compressed costs a look-up, not a compression. Bodies without a strong tag
(uncached routes, streams) are encoded per response.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Sequence
from time import monotonic
from typing import TYPE_CHECKING, Final

import brotli
import zstandard

from cygate.edge.l1 import L1, Node

if TYPE_CHECKING:
    from cygate.infra.metrics import Counter, Metrics

__all__ = [
    "CODINGS",
    "VARY_ACCEPT_ENCODING",
    "Compression",
    "Variant",
    "encodable_kind",
    "negotiate",
    "strip_suffix",
    "suffixed",
]

CODINGS: Final = ("br", "zstd", "gzip")
"""The codings the edge makes, in its order of preference (ties of q-value)."""

VARY_ACCEPT_ENCODING: Final = (b"vary", b"Accept-Encoding")

_ALIASES: Final = {b"br": "br", b"zstd": "zstd", b"gzip": "gzip", b"x-gzip": "gzip"}
_MEMO_MAX = 512
_VARIANT_LIFE = 86_400.0  # keyed by content: a variant never goes stale, only out of room
_PER_VARIANT = 160  # bytes counted per kept variant beyond its body


def _qvalue(params: bytes) -> int | None:
    """The q-value of one element's parameters in thousandths (RFC 9110, section 12.4.2:
    ``q=0``, ``q=0.5``, ``q=1.000``), 1000 without one, None when malformed."""
    q = 1000
    for param in params.split(b";"):
        name, eq, value = param.partition(b"=")
        name = name.strip().lower()
        if not name:
            continue
        if name != b"q" or not eq:
            return None  # Accept-Encoding elements take no other parameter
        value = value.strip()
        whole, _, frac = value.partition(b".")
        if whole not in (b"0", b"1") or len(frac) > 3 or (frac and not frac.isdigit()):
            return None
        q = int(whole) * 1000 + (int(frac.ljust(3, b"0")) if frac else 0)
        if q > 1000:
            return None
    return q


def negotiate(accept_encoding: bytes, offered: Sequence[str] = CODINGS) -> str | None:
    """The coding to send for ``Accept-Encoding: accept_encoding`` among ``offered`` (in
    preference order), or None: send the body as it is (see the module docstring)."""
    named: dict[str, int] = {}
    star: int | None = None
    for element in accept_encoding.split(b","):
        token, _, params = element.partition(b";")
        token = token.strip().lower()
        if not token:
            continue
        q = _qvalue(params)
        if q is None:
            continue  # NOTE: a malformed element is ignored, the rest still counts
        if token == b"*":
            star = q
            continue
        coding = _ALIASES.get(token)
        if coding is not None:
            named[coding] = max(q, named.get(coding, -1))
    best: str | None = None
    best_q = 0
    for coding in offered:
        q = named.get(coding, star if star is not None else 0)
        if q > best_q:
            best, best_q = coding, q
    return best


def strip_suffix(value: bytes, codings: Sequence[str]) -> bytes:
    """``If-None-Match``/``If-Match`` with the edge's coding suffixes of ``codings`` taken off
    its tags (``"tag.br"`` -> ``"tag"``); the value itself when it holds none."""
    suffixes = [b"." + c.encode() + b'"' for c in codings]
    if not any(s in value for s in suffixes):
        return value
    tags = []
    for tag in value.split(b","):
        tag = tag.strip()
        for suffix in suffixes:
            if tag.endswith(suffix):
                tag = tag[: -len(suffix)] + b'"'
                break
        tags.append(tag)
    return b", ".join(tags)


def suffixed(etag: bytes, coding: str) -> bytes:
    """The tag of the ``coding`` variant of the representation tagged ``etag``."""
    return etag[:-1] + b"." + coding.encode() + b'"' if etag.endswith(b'"') else etag


def _gzip(body: bytes) -> bytes:
    return gzip.compress(body, compresslevel=6, mtime=0)


def _br(body: bytes) -> bytes:
    return bytes(brotli.compress(body, quality=5))


_zstd = zstandard.ZstdCompressor(level=3, write_content_size=True)


def _zst(body: bytes) -> bytes:
    return _zstd.compress(body)


_ENCODERS: Final[dict[str, Callable[[bytes], bytes]]] = {"gzip": _gzip, "br": _br, "zstd": _zst}


def _compressible_type(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media.startswith(b"text/") or media == b"application/json" or media.endswith(b"+json")


def encodable_kind(status: int, headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """A response of a kind the edge compresses (whatever its size): a status with content, a
    JSON, problem+json or text type, no coding yet, no ``Cache-Control: no-transform``. The
    same for a cache entry's headers as for the answer sent from it (the fused hit path reads
    it of the entry, ``EntryHot.encodable``)."""
    if status < 200 or status in (204, 206, 304):
        return False
    typed = False
    for name, value in headers:
        lname = name.lower()
        if lname == b"content-type":
            typed = _compressible_type(value)
        elif lname == b"content-encoding" or (
            lname == b"cache-control" and b"no-transform" in value.lower()
        ):
            return False  # encoded already, or the response says no
    return typed


class Variant:
    """A kept encoded body, with what an answer sending it needs ready: its body message, its
    ``Content-Length``, ``ETag`` (suffixed) and ``Content-Encoding`` header pairs."""

    __slots__ = ("body", "coding", "encoding", "etag", "length", "message")

    def __init__(self, body: bytes, coding: str, etag: bytes) -> None:
        self.body = body
        self.coding = coding
        self.message = {"type": "http.response.body", "body": body}
        self.length = (b"content-length", b"%d" % len(body))
        self.etag = (b"etag", suffixed(etag, coding))
        self.encoding = (b"content-encoding", coding.encode())


class Compression:
    """The edge's compression: negotiation (memoised per ``Accept-Encoding`` value), the
    decision per response, and the kept variants."""

    __slots__ = ("_counted", "_memo", "encoded", "min_bytes", "reused", "variants")

    def __init__(self, min_bytes: int, cache_bytes: int, metrics: Metrics | None = None) -> None:
        self.min_bytes = min_bytes
        """Bodies shorter than this are sent as they are."""
        self.variants = L1(cache_bytes)
        """(strong tag + coding) -> :class:`Variant`."""
        self.encoded = 0
        """Bodies compressed (a variant kept is compressed once)."""
        self.reused = 0
        """Responses served with a kept variant (no compression)."""
        self._memo: dict[bytes, str | None] = {}
        self._counted: dict[tuple[str, str], Counter] = {}
        if metrics is not None:
            for coding in CODINGS:
                for result in ("encoded", "kept"):
                    self._counted[coding, result] = metrics.counter(
                        "cygate_compression_total", coding=coding, result=result
                    )

    def coding_for(self, accept_encoding: bytes | None) -> str | None:
        """The coding this request gets (None: none); no header: none (RFC 9110 would allow
        any coding; clients that decode one say so)."""
        if accept_encoding is None:
            return None
        memo = self._memo
        try:
            return memo[accept_encoding]
        except KeyError:
            pass
        coding = negotiate(accept_encoding)
        if len(memo) >= _MEMO_MAX:
            memo.clear()
        memo[bytes(accept_encoding)] = coding
        return coding

    def encodable(self, status: int, headers: Sequence[tuple[bytes, bytes]], size: int) -> bool:
        """A response the edge compresses for a client that accepts it: ``size`` (its body's)
        at least ``min_bytes``, and :func:`encodable_kind`."""
        return size >= self.min_bytes and encodable_kind(status, headers)

    def encode(self, body: bytes, coding: str, etag: bytes | None) -> bytes:
        """``body`` in ``coding``: the kept variant when ``etag`` is strong and one is kept,
        else compressed now (and kept, under a strong tag)."""
        if etag is None or not etag.startswith(b'"'):
            self._count(coding, "encoded")
            return _ENCODERS[coding](body)
        key = etag + coding.encode()
        now = monotonic()
        found: Variant | None = self.variants.get(key, now)
        if found is not None:
            self._count(coding, "kept")
            return found.body
        self._count(coding, "encoded")
        variant = Variant(_ENCODERS[coding](body), coding, etag)
        size = len(variant.body) + _PER_VARIANT
        self.variants.put(key, variant, size, now + _VARIANT_LIFE, now, ())
        return variant.body

    def kept(self, etag: bytes, coding: str) -> Node | None:
        """The node of the kept ``coding`` variant of the body tagged ``etag``, or None; no
        side effect (the fused hit path asks before it commits, then calls :meth:`served`)."""
        node = self.variants.nodes.get(etag + coding.encode())
        if node is None or node.expires <= monotonic():
            return None
        return node

    def served(self, node: Node) -> None:
        """A kept variant (:meth:`kept`) was sent: marked used (SIEVE) and counted."""
        node.visited = True
        self._count(node.value.coding, "kept")

    def _count(self, coding: str, result: str) -> None:
        if result == "kept":
            self.reused += 1
        else:
            self.encoded += 1
        counter = self._counted.get((coding, result))
        if counter is not None:
            counter.value += 1
