"""Schemathesis hooks and a check for the API fuzz run (``SCHEMATHESIS_HOOKS`` names this file).

The fuzzer runs as a customer and as an admin. It must never change the accounts it runs as:
a path parameter equal to one of their ids (``CYGATE_FUZZ_PROTECTED_IDS``, comma-separated;
the stateful phase can learn them from ``GET /api/v1/users``) is replaced by a fresh id, so
``PATCH /api/v1/users/{user_id}/roles`` never demotes them. ``DELETE /api/v1/users/me`` is
excluded from the run itself (``tests/acceptance/test_api_fuzz.py``).

:func:`problem_details` holds every refusal to the contract (API.md): a 4xx or 5xx is
``application/problem+json`` with the ``request_id`` of its ``X-Request-ID`` and no traceback;
the OAuth endpoints answer their RFC 6749 error object instead.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import schemathesis

_PROTECTED = frozenset(filter(None, os.environ.get("CYGATE_FUZZ_PROTECTED_IDS", "").split(",")))


@schemathesis.hook
def before_call(context: Any, case: Any, **kwargs: Any) -> None:
    params = case.path_parameters
    if not params:
        return
    for name, value in list(params.items()):
        if str(value).lower() in _PROTECTED:
            params[name] = str(uuid.uuid4())


_OAUTH = frozenset({"/api/v1/auth/token", "/api/v1/auth/revoke"})


@schemathesis.check
def problem_details(ctx: Any, response: Any, case: Any) -> bool | None:
    """A refusal is problem+json with the request's ``request_id`` (RFC 6749 JSON on OAuth)."""
    if response.status_code < 400:
        return None
    content_type = (response.headers.get("content-type") or [""])[0]
    if case.method.upper() == "HEAD":  # (no body; the headers are the GET's)
        return None
    body = json.loads(response.content or b"null")
    assert "Traceback" not in response.text, "a traceback in the answer"
    if case.path in _OAUTH and response.status_code in (400, 401):
        assert content_type == "application/json" and isinstance(body.get("error"), str), body
        return True
    assert content_type == "application/problem+json", f"{content_type!r}, not problem+json"
    request_id = (response.headers.get("x-request-id") or [""])[0]
    assert body.get("status") == response.status_code, body
    if response.headers.get("idempotent-replayed") == ["true"]:
        # API.md: a replay under the same Idempotency-Key is the first answer, body and all
        # (its request_id is the first request's)
        assert body.get("request_id"), body
    else:
        assert request_id and body.get("request_id") == request_id, body
    return True
