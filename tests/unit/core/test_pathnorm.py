"""normalize_path: the canonical request path, compiled and pure, and their agreement."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core_impls import CoreImplementation, require_compiled
from cygate.core._router_py import PathError
from cygate.core._router_py import normalize_path as normalize_path_py

Normalize = Callable[[bytes], str]


@pytest.fixture(scope="module")
def normalize(core_impl: CoreImplementation) -> Normalize:
    fn: Normalize = core_impl.module("router").normalize_path
    return fn


GOOD = [
    # the examples of the spec
    (b"//api/./v1/../v1/products/", "/api/v1/products"),
    (b"/a/%2e%2e/b", "/b"),
    (b"/../../etc", "/etc"),
    (b"/", "/"),
    # already canonical: unchanged
    (b"/api/v1/products/42", "/api/v1/products/42"),
    (b"/API/V1/Products", "/API/V1/Products"),  # case is preserved
    (b"/a b/c+d/e;f=g/h@i/~j", "/a b/c+d/e;f=g/h@i/~j"),
    (b"/.hidden/..x/x../.../a.b", "/.hidden/..x/x../.../a.b"),  # not dot segments
    ("/café/ŝ/😀".encode(), "/café/ŝ/😀"),
    # slashes
    (b"//", "/"),
    (b"///a///b///", "/a/b"),
    (b"/a/", "/a"),
    # percent-decoding
    (b"/%41%62%63", "/Abc"),
    (b"/caf%c3%a9/caf%C3%A9", "/café/café"),
    (b"/%25", "/%"),  # decoded once: '%25' is a literal '%'
    (b"/%2541", "/%41"),
    (b"/api%2Fv1", "/api/v1"),
    (b"/api%2fv1", "/api/v1"),
    (b"/%2F%2F", "/"),
    (b"/a%2F..%2Fb", "/b"),
    (b"/%7Bid%7D", "/{id}"),
    # dot segments
    (b"/.", "/"),
    (b"/..", "/"),
    (b"/a/.", "/a"),
    (b"/a/..", "/"),
    (b"/a/b/..", "/a"),
    (b"/a/./b/./c", "/a/b/c"),
    (b"/a/b/../../c", "/c"),
    (b"/a/b/../../../../c", "/c"),
    (b"/a/%2E/b", "/a/b"),
    (b"/a/%2e%2E/b", "/b"),
    (b"/a/.%2e/b", "/b"),
    (b"/a//../b", "/b"),  # slashes collapse first: '..' removes 'a'
]

BAD = [
    b"",
    b"a",
    b"api/v1",
    b"%2F",  # must start with a literal '/'
    b"/%",
    b"/%4",
    b"/a%4",
    b"/%zz",
    b"/%g0",
    b"/%0g",
    b"/% 1",
    b"/%+1",
    b"/a\x00b",
    b"/%00",
    b"/\t",
    b"/a\nb",
    b"/%0a",
    b"/%0D%0A",
    b"/%1f",
    b"/\x7f",
    b"/%7F",
    b"/\xff",
    b"/%ff",
    b"/%c3",  # truncated UTF-8 sequence
    b"/\xc3\x28",
    b"/%ed%a0%80",  # an encoded surrogate is not UTF-8
    b"/%c0%af",  # overlong '/'
    b"/a/%ff/../b",  # the whole decoded path must be UTF-8, also the dropped parts
]


@pytest.mark.parametrize(("raw", "expected"), GOOD)
def test_good(normalize: Normalize, raw: bytes, expected: str) -> None:
    result = normalize(raw)
    assert result == expected
    assert type(result) is str


@pytest.mark.parametrize("raw", BAD)
def test_bad(normalize: Normalize, raw: bytes) -> None:
    with pytest.raises(PathError):
        normalize(raw)


def test_path_error_is_value_error() -> None:
    assert issubclass(PathError, ValueError)


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------

# Segment text of a canonical path: anything but '/', control characters and surrogates.
_SEGMENT = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/"),
    min_size=1,
    max_size=8,
).filter(lambda s: s not in (".", ".."))
CANONICAL = st.lists(_SEGMENT, max_size=6).map(lambda segs: "/" + "/".join(segs))


@st.composite
def _encoded(draw: st.DrawFn, text: str) -> bytes:
    """``text`` as UTF-8 with random bytes percent-encoded (``%`` itself always)."""
    out = bytearray()
    for byte in text.encode():
        if byte == 0x25 or draw(st.integers(0, 3)) == 0:
            out += (b"%%%02x" if draw(st.booleans()) else b"%%%02X") % byte
        else:
            out.append(byte)
    return bytes(out)


_SEPARATORS = [b"/", b"//", b"///", b"%2F", b"%2f", b"/./", b"/%2e/", b"/.//", b"/%2E%2f"]


@st.composite
def messy(draw: st.DrawFn, canonical: str) -> bytes:
    """A random non-canonical spelling of ``canonical`` (which starts with '/')."""
    segments = [] if canonical == "/" else canonical[1:].split("/")
    raw = bytearray(draw(st.sampled_from([b"", b"/..", b"/../..", b"/.", b"/%2e%2E"])))
    for segment in segments:
        raw += draw(st.sampled_from(_SEPARATORS))
        if draw(st.integers(0, 4)) == 0:  # a detour: '<junk>/..'
            raw += draw(_encoded(draw(_SEGMENT)))
            raw += draw(st.sampled_from([b"/../", b"/%2e%2e/", b"//..//", b"%2f..%2F"]))
        raw += draw(_encoded(segment))
    raw += draw(st.sampled_from([b"", b"/", b"//", b"/.", b"/./", b"/x/..", b"/%2e"]))
    if not raw.startswith(b"/"):
        raw[:0] = b"/"
    return bytes(raw)


_TOKENS = [
    b"/",
    b"//",
    b".",
    b"..",
    b"a",
    b"B",
    b"%",
    b"%2",
    b"%2e",
    b"%2E",
    b"%2f",
    b"%2F",
    b"%25",
    b"%41",
    b"%zz",
    b"%00",
    b"\x00",
    b"\x1f",
    b"\x7f",
    b"%7f",
    b"\x80",
    b"\xc3\xa9",
    b"%c3",
    b"%a9",
    b"\xff",
    b"%ff",
    b"\xf0\x9f\x98\x80",
    b" ",
    b"?",
    b"{x}",
]
ANY_RAW = st.lists(st.sampled_from(_TOKENS), max_size=12).map(b"".join) | st.binary(max_size=16)


def _outcome(normalize: Normalize, raw: bytes) -> tuple[str, str]:
    try:
        return ("ok", normalize(raw))
    except PathError:
        return ("error", "")


@settings(max_examples=300)
@given(data=st.data(), canonical=CANONICAL)
def test_every_messy_spelling_normalises_to_the_canonical_path(
    normalize: Normalize, data: st.DataObject, canonical: str
) -> None:
    raw = data.draw(messy(canonical))
    assert normalize(raw) == canonical
    # The same with escapes only (the inner slashes may become '%2F' too).
    assert normalize(b"/" + data.draw(_encoded(canonical[1:]))) == canonical


@settings(max_examples=300)
@given(canonical=CANONICAL)
def test_a_canonical_path_is_a_fixed_point(normalize: Normalize, canonical: str) -> None:
    assert normalize(canonical.replace("%", "%25").encode()) == canonical
    if "%" not in canonical:
        assert normalize(canonical.encode()) == canonical


@settings(max_examples=500)
@given(raw=ANY_RAW.map(lambda b: b"/" + b))
def test_idempotent(normalize: Normalize, raw: bytes) -> None:
    # NOTE: the output is decoded text, so a literal '%' in it must be re-escaped before it
    # is a raw path again ('/%2541' -> '/%41'; decoding once more would give '/A').
    kind, once = _outcome(normalize, raw)
    if kind == "ok":
        assert normalize(once.replace("%", "%25").encode()) == once
        if "%" not in once:
            assert normalize(once.encode()) == once


@pytest.mark.c_extension
@settings(max_examples=1000)
@given(raw=ANY_RAW | ANY_RAW.map(lambda b: b"/" + b))
def test_c_and_py_agree(raw: bytes) -> None:
    module = require_compiled("router")
    assert _outcome(module.normalize_path, raw) == _outcome(normalize_path_py, raw)
