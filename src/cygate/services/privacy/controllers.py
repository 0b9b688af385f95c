"""``/api/v1/users/me/consents``: the signed-in user's consents.

An unknown purpose is a resource that does not exist: 404 problem+json naming the purposes.
A body other than ``{"granted": true|false}`` is a 422 (the app's body validation). Every query
is keyed by the caller's own id, so another user's consents cannot be named at all.
"""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from litestar import Controller, Request, Response, get, put
from litestar.datastructures import State
from litestar.params import JSONBody, Parameter

from cygate.edge.auth import principal_of
from cygate.edge.problem import Problem
from cygate.services.openapi import problems
from cygate.services.privacy.consent import (
    PURPOSES,
    ConsentIn,
    ConsentOut,
    Consents,
    consents_of,
    record_consent,
)

__all__ = ["ConsentsController"]

_AUTH = {"auth": True}
_PRIVATE = {"cache-control": "private, no-store"}
SOURCE = "api"
"""The ``source`` of a decision made through this API."""


def _caller(request: Request[Any, Any, Any], state: State) -> UUID:
    """The caller's user id; a service client or an external provider's token has none."""
    principal = principal_of(request)
    if principal.issuer != state.privacy_issuer:
        raise Problem(404, "no user account for this caller")
    try:
        return UUID(principal.sub)
    except ValueError:
        raise Problem(404, "no user account for this caller") from None


class ConsentsController(Controller):
    path = "/api/v1/users/me/consents"
    tags = ["privacy"]

    @get("/", summary="My consents and their history", opt=_AUTH, responses=problems(404))
    async def list_consents(
        self, request: Request[Any, Any, Any], state: State
    ) -> Response[Consents]:
        consents = await consents_of(state.pool, _caller(request, state))
        if consents is None:
            raise Problem(404, "no user account for this caller")
        return Response(consents, headers=_PRIVATE)

    @put(
        "/{purpose:str}",
        summary="Grant or refuse a purpose",
        opt=_AUTH | {"max_body_bytes": 1024},
        responses=problems(404),
    )
    async def set_consent(
        self,
        request: Request[Any, Any, Any],
        state: State,
        purpose: Annotated[
            str,
            Parameter(
                description="One of the purposes",
                # (documentation: an unknown purpose is a 404 naming the purposes, below)
                schema_extra={"enum": list(PURPOSES)},
            ),
        ],
        data: JSONBody[ConsentIn],
    ) -> Response[ConsentOut]:
        if purpose not in PURPOSES:
            raise Problem(404, f"no such purpose; purposes: {', '.join(PURPOSES)}")
        user_id = _caller(request, state)
        async with state.pool.acquire() as conn:
            record = await record_consent(conn, user_id, purpose, data.granted, SOURCE)
        if record is None:
            raise Problem(404, "no user account for this caller")
        return Response(record, headers=_PRIVATE)
