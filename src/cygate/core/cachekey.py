"""Cache keys: the canonical form of a request, hashed with keyed BLAKE2b-128.

Selects the compiled implementation (:mod:`cygate.core._cachekey_c`) when it is available and
allowed, else the pure-Python twin (:mod:`cygate.core._cachekey_py`). Both are importable by name
(``CacheKeyPy``; ``CacheKeyC`` when compiled) so tests and benchmarks never depend on the choice.

Usage::

    spec = CacheKey(secret, "GET /api/v1/products", query=["limit", "sort"])
    key = spec.key("GET", ctx.path, ctx.query, ctx.headers)  # 16 bytes
    spec.if_none_match, spec.cache_control  # of that request
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cygate._compat import NO_EXTENSIONS
from cygate.core._cachekey_py import KEY_SIZE, KEY_VERSION, CacheKeyPy, derive_key
from cygate.core._cachekey_py import blake2b128 as blake2b128_py

__all__ = [
    "KEY_SIZE",
    "KEY_VERSION",
    "CacheKey",
    "CacheKeyPy",
    "blake2b128",
    "blake2b128_py",
    "derive_key",
]

if TYPE_CHECKING:
    CacheKey = CacheKeyPy
    blake2b128 = blake2b128_py
else:
    CacheKey = CacheKeyPy
    blake2b128 = blake2b128_py
    if not NO_EXTENSIONS:
        try:
            from cygate.core._cachekey_c import CacheKeyC
            from cygate.core._cachekey_c import blake2b128 as blake2b128_c
        except ImportError:  # pragma: no cover - not compiled (e.g. an editable pure install)
            pass
        else:
            CacheKey = CacheKeyC
            blake2b128 = blake2b128_c
            __all__ += ["CacheKeyC", "blake2b128_c"]
