"""RFC 9457 problem details: the one error shape every cygate response uses.

The edge sends these directly (404, 405, 413, 422 for a bad path parameter, 500) and the
Litestar exception handlers build theirs with the same function, so the shape cannot drift.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import orjson

__all__ = ["PROBLEM_CONTENT_TYPE", "Problem", "problem_body"]

PROBLEM_CONTENT_TYPE = "application/problem+json"

_TITLES = {s.value: s.phrase for s in HTTPStatus}


def problem_body(
    status: int,
    detail: str,
    *,
    instance: str = "",
    request_id: str = "",
    title: str | None = None,
    type_: str = "about:blank",
    extra: dict[str, Any] | None = None,
) -> bytes:
    """Encode a problem document. ``extra`` members (``errors``, ...) are added after the core."""
    doc: dict[str, Any] = {
        "type": type_,
        "title": title or _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "instance": instance,
        "request_id": request_id,
    }
    if extra:
        doc.update(extra)
    return orjson.dumps(doc)


class Problem(Exception):
    """An error that becomes a problem+json response, raised by handlers on either path.

    The edge turns it into a response for its fast handlers, and the Litestar app registers an
    exception handler that does the same, so a handler never cares which path called it.
    """

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra
