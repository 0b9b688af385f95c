"""Request bodies and query strings: the one place a client's text is decoded and refused.

- Media types: a write to a local route takes JSON (``application/json`` or any
  ``application/*+json``); the edge answers anything else, or a body without a type, with 415
  (:func:`json_media`). A browser sends ``text/plain`` and form bodies cross-site without a
  preflight; refusing them closes that path. Routes whose handler says ``opt={"body": "form"}``
  (the OAuth endpoints, RFC 6749) parse their own form bodies instead.
- JSON: :func:`decode_json` decodes a body into the handler's type with msgspec's *strict*
  rules (``"2"`` is not a number, ``1.0`` not an integer), refuses the NUL character in any
  string (PostgreSQL's text and jsonb cannot hold it) and nesting deeper than the decoder's
  recursion guard, all before a handler runs. Litestar handlers get it through
  :class:`JSONRequest` (the app's ``request_class``); code that decodes a body itself calls
  :func:`decode_json` too.
- Query strings: :func:`query_nul_errors` names the parameters of a query string that hold a
  NUL (``%00``): the edge refuses them for every local route before the app parses anything.
"""

from __future__ import annotations

import re
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl

import msgspec
from litestar import Request
from litestar.exceptions import ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.types import Empty

from cygate.edge.problem import Problem

__all__ = [
    "BODY_FORM",
    "BODY_JSON",
    "JSONRequest",
    "body_kind",
    "decode_json",
    "json_media",
    "query_nul_errors",
]

BODY_JSON: Final = "json"
BODY_FORM: Final = "form"

T = TypeVar("T")

_NUL_ESCAPE = b"\\u0000"
# A ``\u0000`` escape is one when an even number of backslashes (none included) precede it:
# ``\\u0000`` is a backslash and the text "u0000".
_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
_AT = re.compile(r" - at `\$\.?([^`]*)`$")
_UNKNOWN = re.compile(r"^Object (?:contains unknown|missing required) field `([^`]{1,100})`")


def json_media(content_type: bytes) -> bool:
    """``application/json`` or ``application/<anything>+json``, parameters (charset) ignored."""
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )


def _errors(exc: msgspec.ValidationError) -> list[dict[str, str]]:
    """Litestar's validation error items (``key``, ``message``, ``source``) for ``exc``."""
    text = str(exc)
    found = _AT.search(text)
    key = found.group(1) if found else ""
    message = text[: found.start()] if found else text
    named = _UNKNOWN.match(message)
    if named:  # the field that is unknown or missing, not the object that holds it
        key = f"{key}.{named.group(1)}" if key else named.group(1)
    return [{"key": key, "message": message, "source": "body"}]


def decode_json(body: bytes, kind: Any = Any) -> Any:
    """``body`` decoded strictly into ``kind``: 422 (Litestar's ``ValidationException``, field
    ``body.<path>``) for a string holding NUL (looked for first, in the raw text) or a value
    that is not ``kind``; a 400 problem for malformed or too deeply nested JSON."""
    if _NUL_ESCAPE in body and _NUL.search(body):
        raise ValidationException(
            "invalid request body",
            extra=[{"key": "", "message": "text must not contain NUL (\\u0000)", "source": "body"}],
        )
    try:
        return msgspec.json.decode(body, type=kind, strict=True)
    except msgspec.ValidationError as exc:
        raise ValidationException("invalid request body", extra=_errors(exc)) from None
    except msgspec.DecodeError as exc:
        raise Problem(400, f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        # NOTE: msgspec's guard against deep nesting (Python's recursion limit): a client
        # sending thousands of nested brackets gets this, never a worker's stack overflow.
        raise Problem(400, "the request body's JSON is nested too deeply") from None


def query_nul_errors(query_string: bytes) -> list[dict[str, str]]:
    """The ``errors`` items (``query.<name>``) of a query string's parameters holding NUL."""
    if b"%00" not in query_string:
        return []
    names = dict.fromkeys(
        name or "<empty>"
        for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
        if "\x00" in name or "\x00" in value
    )
    return [
        {"field": f"query.{name.replace(chr(0), '')}", "message": "must not contain NUL"}
        for name in names
    ]


_KINDS: dict[HTTPRouteHandler, Any] = {}


def body_kind(handler: HTTPRouteHandler) -> Any:
    """The type of ``handler``'s ``data`` parameter (``Any`` without one), remembered."""
    kind = _KINDS.get(handler)
    if kind is None:
        field = handler.parsed_fn_signature.parameters.get("data")
        kind = _KINDS[handler] = Any if field is None else field.annotation
    return kind


class JSONRequest(Request[Any, Any, Any]):
    """Litestar's request with :func:`decode_json` as its JSON decoder: a handler's ``data``
    arrives decoded strictly into its declared type (Litestar's own conversion then has
    nothing left to coerce)."""

    async def json(self) -> Any:
        """The body decoded into the handler's ``data`` type (see :func:`decode_json`)."""
        if self._json is not Empty:
            return self._json
        value = decode_json(await self.body() or b"null", body_kind(self.route_handler))
        self._json = value
        return value
