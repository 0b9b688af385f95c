"""The token stage: who is calling, and may they call this route.

For every routed request the stage reads ``Authorization: Bearer <token>``:

- a route with ``policy.auth`` (or ``policy.roles``) needs a valid, unrevoked access token:
  otherwise 401 with ``WWW-Authenticate: Bearer error="invalid_token"`` (RFC 6750, API.md);
  with a token but none of the route's roles, 403 (``error="insufficient_scope"``);
- on a public route a valid token still sets the principal (optional authentication: per-user
  behaviour, rate limits), and a missing or bad one is simply ignored.

The principal goes to ``ctx.principal``; Litestar handlers declare a ``principal: Principal``
parameter (the app-wide dependency :func:`provide_principal`), or read it from the request with
:func:`principal_of`. NOTE: prefer the parameter: a handler that reads the raw request cannot be
cached (``cache_rules.check_inputs``), one that declares ``principal`` can, under a private rule.

PERF: with a repeated token the verifier answers from its cache and the revocation check is a
look-up in the worker's set of revoked ``jti`` (fed from Redis in the background), so the stage
returns None: no coroutine, no await, no Redis call. Only an unknown ``kid`` of an external
provider costs a (rate-limited, shared) JWKS fetch.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from litestar import Request  # NOTE: at run time, as Principal: Litestar resolves the hints

from cygate.core.jwt import EXPIRED, UNKNOWN_KID, JWTError
from cygate.edge.context import Principal
from cygate.edge.problem import Problem

if TYPE_CHECKING:
    from cygate.core.jwt import JWTVerifierPy
    from cygate.edge.context import EdgeContext

__all__ = [
    "PRINCIPAL",
    "RevocationCheck",
    "TokenStage",
    "principal_of",
    "provide_principal",
    "unauthorized",
]

_CHALLENGE = {"www-authenticate": 'Bearer error="invalid_token"'}
_FORBIDDEN = {"www-authenticate": 'Bearer error="insufficient_scope"'}
_BEARER = b"bearer "


class RevocationCheck(Protocol):
    """Whether a verified token was revoked: what the stage reads of the identity service's
    revocations (:class:`cygate.services.identity.revocation.Revocations` implements it).
    Defined here, below the services, so the edge names no service."""

    @property
    def revoked(self) -> Mapping[str, float]:
        """jti -> expiry of the revoked tokens this worker knows: a live mapping, the same for
        the object's whole life (the stage and the fused hit path look a ``jti`` up there)."""
        ...


def unauthorized(detail: str = "a valid access token is required") -> Problem:
    """The 401 of a protected route (RFC 6750 challenge)."""
    return Problem(401, detail, headers=dict(_CHALLENGE))


def _refused(reason: str) -> Problem:
    if reason == EXPIRED:
        return unauthorized("the access token has expired")
    return unauthorized(f"the access token is not valid ({reason})")


class TokenStage:
    """An edge stage (``stage(ctx)``); see the module docstring."""

    __slots__ = ("refresh_keys", "revocations", "revoked", "verifier")

    def __init__(
        self,
        verifier: JWTVerifierPy,
        revocations: RevocationCheck,
        refresh_keys: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        self.verifier = verifier
        self.revocations = revocations
        self.revoked = revocations.revoked  # PERF: the live mapping, bound once
        self.refresh_keys = refresh_keys
        """Called with an issuer when a token names a kid its key set lacks; True when a new
        key set was installed (then the token is verified once more)."""

    def __call__(self, ctx: EdgeContext) -> Awaitable[None] | None:
        policy = ctx.policy
        required = policy.auth or bool(policy.roles)
        header = ctx.authorization  # PERF: found in the edge's one pass over the headers
        if header is None or header[:7].lower() != _BEARER:
            # NOTE: another scheme (Basic for client credentials at /auth/token) is not ours
            # to judge on a public route.
            if required:
                raise unauthorized()
            return None
        token = header[7:].strip(b" ")
        try:
            principal: Principal = self.verifier.verify(token)
        except JWTError as err:
            if err.reason == UNKNOWN_KID and err.issuer and self.refresh_keys is not None:
                return self._after_key_refresh(ctx, token, err, required)
            if required:
                raise _refused(err.reason) from None
            return None
        except TypeError:  # pragma: no cover - headers are bytes
            return None
        if policy.roles or principal.jti in self.revoked:
            self._admit(ctx, principal, required)
        else:
            ctx.principal = principal  # PERF: _admit's common case, inline
        return None

    def _admit(self, ctx: EdgeContext, principal: Principal, required: bool) -> None:
        if principal.jti in self.revoked:
            if required:
                raise unauthorized("the access token has been revoked")
            return  # a public route: served without a principal
        roles = ctx.policy.roles
        if roles and roles.isdisjoint(principal.roles):
            raise Problem(
                403,
                "this route needs one of the roles: " + ", ".join(sorted(roles)),
                headers=dict(_FORBIDDEN),
            )
        ctx.principal = principal

    async def _after_key_refresh(
        self, ctx: EdgeContext, token: bytes, err: JWTError, required: bool
    ) -> None:
        assert self.refresh_keys is not None and err.issuer is not None
        if await self.refresh_keys(err.issuer):
            try:
                principal: Principal = self.verifier.verify(token)
            except JWTError as again:
                err = again
            else:
                self._admit(ctx, principal, required)
                return
        if required:
            raise _refused(err.reason)


def principal_of(request: Any) -> Principal:
    """The caller's principal in a Litestar handler (the edge's token stage set it); 401 when
    there is none (defence in depth: routes that need it are also marked ``auth``)."""
    ctx = request.scope.get("cygate.ctx")
    principal: Principal | None = getattr(ctx, "principal", None)
    if principal is None:
        raise unauthorized()
    return principal


PRINCIPAL = "principal"
"""The name of the app-wide dependency (``principal: Principal`` in a handler's signature)."""


def provide_principal(request: Request[Any, Any, Any]) -> Principal:
    """The Litestar dependency behind a handler's ``principal`` parameter: the caller (401 when
    there is none). The cache's input check knows it: the principal is part of a private
    rule's key, so a handler that declares it can be cached per caller, never publicly."""
    return principal_of(request)
