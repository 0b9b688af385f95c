"""Cache keys, the pure-Python reference.

A key names one cacheable response: :class:`CacheKeyPy` (one per route and cache rule) turns a
request into a *canonical form* and hashes it with keyed BLAKE2b-128. The compiled twin
(:mod:`cygate.core._cachekey_c`) builds the very same bytes and hash; tests compare both on
generated requests.

The canonical form (version ``cgk1``; every field is a 4-byte big-endian length + its bytes, so
no value can be mistaken for a separator, ``%00`` included):

- ``cgk1``, then the route name, the method (the caller maps HEAD to GET) and the normalised path
  (UTF-8);
- for each allow-listed query parameter present, ``q`` + name + value, percent-decoded (``+`` is a
  space; a malformed escape stays as it is), sorted by name; the values of one name keep their
  order, which can matter to the handler (``?tag=b&tag=a``). Empty pairs and parameters off the
  list are left out;
- for each allow-listed request header in name order: ``h`` + name + value for each occurrence
  (surrounding spaces trimmed), or ``H`` + name when absent (absent is not empty);
- for private rules: ``u`` + the principal's subject.

Why keyed and 128-bit: the key must be the same in every process and on every machine (never
Python's ``hash()``, which is salted per process), unpredictable to clients (no crafted collisions
or probing of other callers' entries), and collision-free in practice (2^-64 birthday bound at
2^32 entries). BLAKE2b is in :mod:`hashlib` (the pure twin pays no Python-level hashing) and the
compiled twin precomputes the keyed block, so a short key costs one compression.

While scanning the headers, :meth:`CacheKeyPy.key` also keeps the request's ``If-None-Match`` and
``Cache-Control`` (or ``Pragma``) values, read from :attr:`~CacheKeyPy.if_none_match` and
:attr:`~CacheKeyPy.cache_control` right after the call (PERF: one pass over the headers).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from operator import itemgetter
from urllib.parse import unquote_to_bytes

__all__ = ["KEY_SIZE", "KEY_VERSION", "CacheKeyPy", "blake2b128", "derive_key"]

KEY_VERSION = b"cgk1"
KEY_SIZE = 16
"""Bytes in a key (BLAKE2b-128)."""
_PERSON = b"cygate-cachekey"
_OWS = b" \t"
_first = itemgetter(0)


def derive_key(secret: bytes | str) -> bytes:
    """The 32-byte BLAKE2b key derived from the configured secret (any length)."""
    raw = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if not raw:
        raise ValueError("the cache key secret must not be empty")
    return hashlib.blake2b(raw, digest_size=32, person=_PERSON).digest()


def blake2b128(key: bytes, data: bytes) -> bytes:
    """Keyed BLAKE2b with a 16-byte digest (``hashlib``; the compiled twin has its own)."""
    return hashlib.blake2b(data, digest_size=KEY_SIZE, key=key).digest()


def _field(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def _unquote(raw: bytes) -> bytes:
    if b"+" in raw:
        raw = raw.replace(b"+", b" ")
    return unquote_to_bytes(raw) if b"%" in raw else raw


def _utf8(text: str) -> bytes:
    # NOTE: surrogatepass, so a subject with a lone surrogate (possible in JSON) still has a key.
    return text.encode("utf-8", "surrogatepass")


class CacheKeyPy:
    """Computes the cache keys of one route under one cache rule."""

    __slots__ = (
        "_hkey",
        "_query",
        "cache_control",
        "header_names",
        "if_none_match",
        "private",
        "query_names",
        "route",
    )

    def __init__(
        self,
        secret: bytes,
        route: str,
        *,
        query: Iterable[str] = (),
        headers: Iterable[str] = (),
        private: bool = False,
    ) -> None:
        self._hkey = derive_key(secret)
        self.route = route
        self.query_names: tuple[bytes, ...] = tuple(sorted({_utf8(q) for q in query}))
        """Allow-listed query parameter names (decoded, sorted)."""
        self._query = frozenset(self.query_names)
        self.header_names: tuple[bytes, ...] = tuple(
            sorted({h.strip().lower().encode("latin-1") for h in headers})
        )
        """Allow-listed request header names (lower-case, sorted)."""
        self.private = private
        self.if_none_match: bytes | None = None
        """``If-None-Match`` of the request last given to :meth:`key`, or None."""
        self.cache_control: bytes | None = None
        """``Cache-Control`` (else ``Pragma``) of the request last given to :meth:`key`."""

    def canonical(
        self,
        method: str,
        path: str,
        query: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        principal: str | None = None,
    ) -> bytes:
        """The canonical form of a request (see the module docstring)."""
        out = [KEY_VERSION, _field(_utf8(self.route)), _field(_utf8(method)), _field(_utf8(path))]
        if query and self._query:
            pairs = []
            for part in query.split(b"&"):
                if not part:
                    continue
                name, _, value = part.partition(b"=")
                name = _unquote(name)
                if name in self._query:
                    pairs.append((name, _unquote(value)))
            pairs.sort(key=_first)  # stable: one name's values keep their order
            for name, value in pairs:
                out += (b"q", _field(name), _field(value))

        inm: list[bytes] = []
        cc: list[bytes] = []
        pragma: list[bytes] = []
        wanted = self.header_names
        found: dict[bytes, list[bytes]] = {}
        for name, value in headers:
            if name == b"if-none-match":
                inm.append(value)
            elif name == b"cache-control":
                cc.append(value)
            elif name == b"pragma":
                pragma.append(value)
            if wanted and name in wanted:
                found.setdefault(name, []).append(value.strip(_OWS))
        for name in wanted:
            values = found.get(name)
            if values is None:
                out += (b"H", _field(name))
            else:
                for value in values:
                    out += (b"h", _field(name), _field(value))
        self.if_none_match = b", ".join(inm) if inm else None
        self.cache_control = b", ".join(cc) if cc else (b", ".join(pragma) if pragma else None)

        if self.private:
            if principal is None:
                raise ValueError("a private cache key needs a principal")
            out += (b"u", _field(_utf8(principal)))
        return b"".join(out)

    def key(
        self,
        method: str,
        path: str,
        query: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        principal: str | None = None,
    ) -> bytes:
        """The 16-byte key of a request; also sets :attr:`if_none_match`, :attr:`cache_control`.

        ``principal`` (the caller's subject) is required for private rules and ignored otherwise.
        """
        data = self.canonical(method, path, query, headers, principal)
        return hashlib.blake2b(data, digest_size=KEY_SIZE, key=self._hkey).digest()
