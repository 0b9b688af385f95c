"""Cache keys, compiled and pure: the canonical form, the hash, and C/py agreement."""

from __future__ import annotations

import hashlib
import importlib
import os
import pathlib
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core_impls import CoreImplementation, require_compiled
from cygate.core import cachekey as selector
from cygate.core._cachekey_py import KEY_SIZE, CacheKeyPy, derive_key

ROUTE = "GET /api/v1/products"
PATH = "/api/v1/products"
HEADERS = [(b"host", b"example.com"), (b"accept", b"application/json")]
# SipHash-2-4-128 reference vectors (key 00..0f, message 00..i-1): github.com/veorq/SipHash
# vectors.h, vectors_sip128 (CC0), first and last few.
SIP128 = {
    0: "a3817f04ba25a8e66df67214c7550293",
    1: "da87c1d86b99af44347659119b22fc45",
    2: "8177228da4a45dc7fca38bdef60affe4",
    7: "a1f1ebbed8dbc153c0b84aa61ff08239",
    15: "5493e99933b0a8117e08ec0f97cfc3d9",
    63: "5150d1772f50834a503e069a973fbd7c",
}


@pytest.fixture(scope="module")
def key_cls(core_impl: CoreImplementation) -> type[CacheKeyPy]:
    """CacheKeyC or CacheKeyPy."""
    cls: type[CacheKeyPy] = getattr(
        core_impl.module("cachekey"), f"CacheKey{core_impl.tag.capitalize()}"
    )
    return cls


def spec(key_cls: type[CacheKeyPy], **kw: Any) -> CacheKeyPy:
    kw.setdefault("query", ["limit", "sort", "category"])
    return key_cls(b"secret", kw.pop("route", ROUTE), **kw)


def key(s: CacheKeyPy, query: bytes = b"", headers: Any = HEADERS, **kw: Any) -> bytes:
    return s.key(kw.get("method", "GET"), kw.get("path", PATH), query, headers, kw.get("who"))


# -- the selector -----------------------------------------------------------------------------


@pytest.mark.c_extension
def test_compiled_key_is_in_use() -> None:
    compiled = importlib.import_module("cygate.core._cachekey_c")
    assert selector.CacheKey is compiled.CacheKeyC
    assert vars(selector)["CacheKeyC"] is compiled.CacheKeyC
    assert selector.blake2b128 is compiled.blake2b128


@pytest.mark.skipif(not os.environ.get("CYGATE_NO_EXTENSIONS"), reason="extensions are on")
def test_pure_key_when_extensions_are_off() -> None:
    assert selector.CacheKey is CacheKeyPy


# -- the canonical form -----------------------------------------------------------------------


def test_key_is_keyed_blake2b_of_the_canonical_form(key_cls: type[CacheKeyPy]) -> None:
    s = spec(key_cls)
    canonical = s.canonical("GET", PATH, b"limit=5", HEADERS)
    expected = hashlib.blake2b(canonical, key=derive_key(b"secret"), digest_size=16).digest()
    assert key(s, b"limit=5") == expected
    assert len(expected) == KEY_SIZE
    assert canonical.startswith(b"cgk1")


def test_secret_route_method_and_path_vary_the_key(key_cls: type[CacheKeyPy]) -> None:
    base = key(spec(key_cls))
    assert key(key_cls(b"other", ROUTE, query=["limit"])) != base
    assert key(spec(key_cls, route="GET /api/v1/other")) != base
    assert key(spec(key_cls), method="HEAD") != base  # the cache maps HEAD to GET itself
    assert key(spec(key_cls), path="/api/v1/products/x") != base
    assert key(spec(key_cls)) == base  # and it is stable


def test_query_is_canonical(key_cls: type[CacheKeyPy]) -> None:
    s = spec(key_cls)
    same = [
        b"limit=5&sort=price",
        b"sort=price&limit=5",  # order of names
        b"sort=price&&limit=5&",  # empty pairs
        b"%6Cimit=5&sort=pri%63e",  # escapes in names and values
        b"limit=5&sort=price&utm_source=x&fbclid=y",  # parameters off the list
    ]
    keys = {key(s, q) for q in same}
    assert len(keys) == 1
    assert key(s, b"limit=6&sort=price") not in keys
    assert key(s, b"limit=5") not in keys


def test_repeated_values_keep_their_order(key_cls: type[CacheKeyPy]) -> None:
    s = spec(key_cls)
    assert key(s, b"category=a&category=b") != key(s, b"category=b&category=a")
    assert key(s, b"category=a&limit=1&category=b") == key(s, b"limit=1&category=a&category=b")


def test_plus_is_a_space_and_bad_escapes_stay(key_cls: type[CacheKeyPy]) -> None:
    s = spec(key_cls)
    assert key(s, b"sort=a+b") == key(s, b"sort=a%20b")
    assert key(s, b"sort=a%2Bb") != key(s, b"sort=a+b")
    assert key(s, b"sort=%zz") == key(s, b"sort=%25zz")  # '%zz' is literal, like its escape
    assert key(s, b"sort=%4") != key(s, b"sort=4")
    assert key(s, b"sort") == key(s, b"sort=")
    # a value holding what would be a separator elsewhere cannot collide with two parameters
    assert key(s, b"sort=a%26limit%3D5") != key(s, b"sort=a&limit=5")
    assert key(s, b"sort=%00") != key(s, b"sort=")


def test_headers_vary_only_when_listed(key_cls: type[CacheKeyPy]) -> None:
    plain = spec(key_cls)
    assert key(plain, headers=[(b"accept", b"text/html")]) == key(plain, headers=[])
    assert key(plain, headers=[(b"host", b"evil.example"), (b"x-forwarded-host", b"e")]) == key(
        plain, headers=[]
    )
    s = spec(key_cls, headers=["Accept-Language"])
    en = key(s, headers=[(b"accept-language", b"en")])
    assert en == key(s, headers=[(b"accept-language", b" en\t")])  # OWS trimmed
    assert en != key(s, headers=[(b"accept-language", b"de")])
    assert key(s, headers=[]) != key(s, headers=[(b"accept-language", b"")])  # absent != empty
    two = [(b"accept-language", b"en"), (b"accept-language", b"de")]
    assert key(s, headers=two) != key(s, headers=two[::-1])


def test_private_keys_are_per_principal(key_cls: type[CacheKeyPy]) -> None:
    s = spec(key_cls, private=True)
    alice, bob = key(s, who="alice"), key(s, who="bob")
    assert alice != bob
    assert key(s, who="alice") == alice
    assert key(s, who="\ud800x") != alice  # any subject has a key
    with pytest.raises(ValueError, match="principal"):
        key(s)
    public = spec(key_cls)
    assert key(public, who="alice") == key(public, who="bob") == key(public)
    assert key(public) != alice


def test_conditional_and_directive_headers_are_kept(key_cls: type[CacheKeyPy]) -> None:
    s = spec(key_cls)
    key(s, headers=[(b"if-none-match", b'"a"'), (b"cache-control", b"no-cache")])
    assert (s.if_none_match, s.cache_control) == (b'"a"', b"no-cache")
    key(s, headers=[(b"if-none-match", b'"a"'), (b"if-none-match", b'"b"'), (b"pragma", b"x")])
    assert (s.if_none_match, s.cache_control) == (b'"a", "b"', b"x")
    key(s, headers=[(b"pragma", b"no-cache"), (b"cache-control", b"max-age=0")])
    assert s.cache_control == b"max-age=0"  # Cache-Control wins over Pragma
    key(s, headers=[])
    assert (s.if_none_match, s.cache_control) == (None, None)


def test_long_requests_leave_the_stack_buffer(key_cls: type[CacheKeyPy]) -> None:
    s = spec(key_cls, headers=["x-big"])
    big = [(b"x-big", b"v" * 5000)]
    assert key(s, b"sort=" + b"s" * 3000, headers=big) != key(s, b"sort=s", headers=big)
    assert len(s.canonical("GET", PATH, b"sort=" + b"s" * 3000, big)) > 8000


def test_constructor_normalises_the_lists(key_cls: type[CacheKeyPy]) -> None:
    s = key_cls(b"k", ROUTE, query=["b", "a", "b"], headers=["X-B", "x-a", "x-b "], private=True)
    assert s.query_names == (b"a", b"b")
    assert s.header_names == (b"x-a", b"x-b")
    assert s.private and s.route == ROUTE


def test_empty_secret_is_refused(key_cls: type[CacheKeyPy]) -> None:
    with pytest.raises(ValueError, match="secret"):
        key_cls(b"", ROUTE)


# -- C and py agree ---------------------------------------------------------------------------

_QUERY_BYTES = st.lists(
    st.sampled_from([b"a", b"b", b"=", b"&", b"%", b"+", b"4", b"1", b"f", b"G", b"\xff", b" "]),
    max_size=40,
).map(b"".join)
_NAMES = st.lists(st.sampled_from(["a", "b", "ab", "a b", "a+b", "é", "%41"]), max_size=4)
_HEADER = st.tuples(
    st.sampled_from([b"x-a", b"x-b", b"if-none-match", b"cache-control", b"pragma", b"host"]),
    st.binary(max_size=12),
)


@pytest.mark.c_extension
@settings(max_examples=500)
@given(
    query=_QUERY_BYTES,
    names=_NAMES,
    headers=st.lists(_HEADER, max_size=6),
    wanted=st.lists(st.sampled_from(["x-a", "X-B", "host"]), max_size=3),
    path=st.text(max_size=20),
    who=st.none() | st.text(max_size=8),
)
def test_c_and_py_agree(
    query: bytes,
    names: list[str],
    headers: list[tuple[bytes, bytes]],
    wanted: list[str],
    path: str,
    who: str | None,
) -> None:
    c = require_compiled("cachekey")
    private = who is not None
    kc = c.CacheKeyC(b"s3cret", ROUTE, query=names, headers=wanted, private=private)
    kp = CacheKeyPy(b"s3cret", ROUTE, query=names, headers=wanted, private=private)
    assert kc.canonical("GET", path, query, headers, who) == kp.canonical(
        "GET", path, query, headers, who
    )
    assert kc.key("GET", path, query, headers, who) == kp.key("GET", path, query, headers, who)
    assert (kc.if_none_match, kc.cache_control) == (kp.if_none_match, kp.cache_control)


@pytest.mark.c_extension
@settings(max_examples=300)
@given(data=st.binary(min_size=1, max_size=600), key=st.binary(min_size=1, max_size=64))
def test_compiled_blake2b_is_blake2b(data: bytes, key: bytes) -> None:
    c = require_compiled("cachekey")
    assert c.blake2b128(key, data) == hashlib.blake2b(data, key=key, digest_size=16).digest()


@pytest.mark.c_extension
def test_blake2b_block_boundaries() -> None:
    c = require_compiled("cachekey")
    for n in (1, 127, 128, 129, 255, 256, 257, 1024):
        data = bytes(range(256)) * 5
        assert (
            c.blake2b128(b"k" * 32, data[:n])
            == hashlib.blake2b(data[:n], key=b"k" * 32, digest_size=16).digest()
        )
    with pytest.raises(ValueError):
        c.blake2b128(b"", b"x")
    with pytest.raises(ValueError):
        c.blake2b128(b"k" * 65, b"x")


@pytest.mark.c_extension
def test_siphash128_reference_vectors() -> None:
    c = require_compiled("cachekey")
    key = bytes(range(16))
    for length, expected in SIP128.items():
        assert c.siphash128(key, bytes(range(length))).hex() == expected
    with pytest.raises(ValueError):
        c.siphash128(b"short", b"")


# -- the same key in every process ------------------------------------------------------------

_PRINT_KEYS = """
import sys
from cygate.core.cachekey import CacheKey, CacheKeyPy
requests = [
    (b"limit=5&sort=price", [(b"accept-language", b"en")], None),
    (b"", [], None),
    (b"category=x&category=y", [(b"accept-language", b"de")], "alice"),
]
for cls in (CacheKey, CacheKeyPy):
    for query, headers, who in requests:
        s = cls(b"shared-secret", "GET /api/v1/products", query=["limit", "sort", "category"],
                headers=["accept-language"], private=who is not None)
        print(cls.__name__[-2:], s.key("GET", "/api/v1/products", query, headers, who).hex())
"""


def test_keys_are_identical_across_processes_and_hash_seeds() -> None:
    """PYTHONHASHSEED changes hash() in every process; keys must not change with it."""
    outputs = set()
    for seed in ("0", "1", "4242", "random"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", _PRINT_KEYS],
            env=env,
            capture_output=True,
            check=True,
            text=True,
            cwd=pathlib.Path(__file__).parent,
        ).stdout
        outputs.add(out)
    assert len(outputs) == 1
    lines = outputs.pop().split()
    keys = lines[1::2]
    # the selected implementation and the pure twin print the same keys (C when built)
    assert keys[:3] == keys[3:]
