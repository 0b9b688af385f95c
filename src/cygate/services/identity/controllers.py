"""Identity endpoints (``API.md``, Identity and access): auth, tokens, users, the JWKS."""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Annotated, Any
from urllib.parse import parse_qsl, unquote_plus
from uuid import UUID

import orjson
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.datastructures import ResponseHeader, State
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, Parameter

from cygate.edge.auth import principal_of
from cygate.edge.body import BODY_FORM
from cygate.edge.cache import CacheUnavailable
from cygate.edge.context import Principal  # NOTE: at run time: Litestar resolves the hints
from cygate.edge.problem import Problem
from cygate.services.identity.mfa import is_totp_code, normalise_recovery_code
from cygate.services.identity.models import (
    PROFILE_CACHE_CONTROL,
    ClientCredentialsForm,
    CodeIn,
    JWKSet,
    LoginIn,
    MfaChallengeOut,
    MfaLoginIn,
    ProfilePatch,
    RecoveryCodesOut,
    RefreshTokenForm,
    RegisterIn,
    RevokeForm,
    RolesIn,
    TokenOut,
    TotpCodeIn,
    TotpEnrolmentOut,
    User,
    UserPage,
)
from cygate.services.identity.service import (
    BadCredentials,
    Identity,
    InvalidClient,
    InvalidGrant,
    MfaConflict,
    MfaEnrolmentRequired,
    MfaUnavailable,
    RequestInfo,
    Throttled,
    WrongCode,
)
from cygate.services.identity.store import (
    EmailTaken,
    LastAdmin,
    get_user,
    list_users,
    rename_user,
)
from cygate.services.openapi import answers, problems

__all__ = ["AuthController", "JWKSController", "UsersController"]

log = logging.getLogger("cygate.identity")

_NO_STORE = {"cache-control": "no-store", "pragma": "no-cache"}
_PRIVATE = {"cache-control": "private, no-store"}
_FORM = "application/x-www-form-urlencoded"
_SMALL_BODY = {"max_body_bytes": 16 * 1024}
_FORM_BODY = _SMALL_BODY | {"body": BODY_FORM}  # RFC 6749: parsed by _form, not the edge
_LOGIN_LIMIT_HEADERS = [
    ResponseHeader(name=name, description=what, documentation_only=True)
    for name, what in (
        ("RateLimit-Limit", "Failed logins allowed in the window"),
        ("RateLimit-Remaining", "Failed logins left in the window"),
        ("RateLimit-Reset", "Seconds until the window resets"),
    )
]
_TOKEN_PARAMS = frozenset({"grant_type", "refresh_token", "client_id", "client_secret", "scope"})
_REVOKE_PARAMS = frozenset({"token", "token_type_hint"})


def _identity(state: State) -> Identity:
    identity: Identity = state.identity
    return identity


def _info(request: Request[Any, Any, Any]) -> RequestInfo:
    ctx: Any = request.scope.get("cygate.ctx")
    if ctx is not None:
        client_ip = str(ctx.client_ip)  # honours trusted_proxies
    else:  # pragma: no cover - every request passes the edge
        client_ip = request.client.host if request.client else ""
    return RequestInfo(client_ip, str(request.scope.get("cygate.request_id", "")))


def _oauth_error(status: int, error: str, description: str) -> Response[bytes]:
    """RFC 6749 §5.2: a JSON error object (not problem+json), never cached."""
    headers = dict(_NO_STORE)
    if status == 401:
        headers["www-authenticate"] = 'Basic realm="cygate"'
    body = orjson.dumps({"error": error, "error_description": description})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


class _FormError(Exception):
    pass


async def _form(request: Request[Any, Any, Any], names: frozenset[str]) -> dict[str, str]:
    """The urlencoded body's parameters ``names``: one given twice is an error (RFC 6749 §3.1);
    any other parameter is ignored (§3.2: "unrecognized request parameters")."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != _FORM:
        raise _FormError(f"the body must be {_FORM}")
    try:
        text = (await request.body()).decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text), errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise _FormError("the body is not valid form data") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name not in names:
            continue
        if "\x00" in value:  # (PostgreSQL text cannot hold NUL)
            raise _FormError("form data must not contain NUL (%00)")
        if name in form:
            raise _FormError(f"parameter {name!r} is given more than once")
        form[name] = value
    return form


def _basic_credentials(request: Request[Any, Any, Any]) -> tuple[str, str] | None:
    header = request.headers.get("authorization", "")
    if header[:6].lower() != "basic ":
        return None
    try:
        raw = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise _FormError("malformed Basic credentials") from None
    client_id, sep, secret = raw.partition(":")
    if not sep:
        raise _FormError("malformed Basic credentials")
    # RFC 6749 §2.3.1: both parts are form-urlencoded before Basic encoding.
    return unquote_plus(client_id), unquote_plus(secret)


class AuthController(Controller):
    path = "/api/v1/auth"
    tags = ["identity"]

    @post(
        "/register",
        summary="Create a customer account",
        # NOTE: per client address, in Redis (the built-in ``register`` limit): mass sign-ups
        # from one address are refused whichever instance they reach.
        opt=_SMALL_BODY | {"rate_limit": "register"},
        responses=problems(409, s409="An account with this email exists"),
    )
    async def register(
        self, request: Request[Any, Any, Any], state: State, data: JSONBody[RegisterIn]
    ) -> Response[User]:
        try:
            user = await _identity(state).register(
                data.email, data.password, data.name, _info(request)
            )
        except EmailTaken:
            raise Problem(409, "an account with this email already exists") from None
        return Response(user, status_code=201, headers=_PRIVATE)

    @post(
        "/login",
        summary="Email and password for a token pair",
        status_code=200,
        responses=problems(401, 403, 429, s403="MFA is required for the account's role"),
        # (the login limiter's own RateLimit headers: the route has no edge limit)
        response_headers=_LOGIN_LIMIT_HEADERS,
        # NOTE: no edge limit: the login limiter counts failures per account and per address
        # and sends the RateLimit headers itself (two sets would contradict each other).
        opt=_SMALL_BODY | {"rate_limit": ""},
    )
    async def login(
        self, request: Request[Any, Any, Any], state: State, data: JSONBody[LoginIn]
    ) -> Response[TokenOut | MfaChallengeOut]:
        try:
            tokens, verdict = await _identity(state).login(
                data.email, data.password, _info(request)
            )
        except Throttled as exc:
            raise Problem(429, str(exc), headers=exc.verdict.headers()) from None
        except BadCredentials as exc:
            headers = {**exc.verdict.headers(), "www-authenticate": 'Bearer realm="cygate"'}
            raise Problem(401, "invalid email or password", headers=headers) from None
        except MfaEnrolmentRequired:
            raise Problem(
                403,
                "multi-factor authentication is required for this account's role and is not "
                "set up; an administrator must remove the role (or the requirement) so the "
                "account can sign in and enrol, or the account enrols before it gets the role",
                extra={"mfa_enrolment_required": True},
            ) from None
        return Response(tokens, status_code=200, headers={**_NO_STORE, **verdict.headers()})

    @post(
        "/login/mfa",
        summary="The second step of a login: the mfa_token and a TOTP or recovery code",
        status_code=200,
        responses=problems(401, 422, 429),
        # NOTE: no edge limit, as for /login: wrong codes are counted per user and per address.
        opt=_SMALL_BODY | {"rate_limit": ""},
    )
    async def login_mfa(
        self, request: Request[Any, Any, Any], state: State, data: JSONBody[MfaLoginIn]
    ) -> Response[TokenOut]:
        _check_code_form(data.code, recovery=True)
        try:
            tokens = await _identity(state).login_mfa(data.mfa_token, data.code, _info(request))
        except Throttled as exc:
            raise Problem(429, str(exc), headers=exc.verdict.headers()) from None
        except WrongCode as exc:
            headers = {**exc.verdict.headers(), "www-authenticate": 'Bearer realm="cygate"'}
            raise Problem(
                401,
                "the code is wrong or was used already, or the mfa_token is not valid",
                headers=headers,
            ) from None
        except MfaUnavailable:
            raise _mfa_unavailable() from None
        return Response(tokens, status_code=200, headers=_NO_STORE)

    @post(
        "/token",
        summary="OAuth 2.0 token endpoint (refresh_token, client_credentials)",
        status_code=200,
        opt=_FORM_BODY | {"form": (RefreshTokenForm, ClientCredentialsForm)},
        responses=answers(200, TokenOut, "The token response (RFC 6749 §5.1)") | problems(401),
    )
    async def token(self, request: Request[Any, Any, Any], state: State) -> Response[Any]:
        identity = _identity(state)
        info = _info(request)
        try:
            form = await _form(request, _TOKEN_PARAMS)
            basic = _basic_credentials(request)
        except _FormError as exc:
            return _oauth_error(400, "invalid_request", str(exc))
        grant = form.get("grant_type")
        try:
            if grant == "refresh_token":
                refresh = form.get("refresh_token")
                if not refresh:
                    return _oauth_error(400, "invalid_request", "refresh_token is required")
                tokens = await identity.refresh(refresh, info)
            elif grant == "client_credentials":
                if basic is not None and ("client_id" in form or "client_secret" in form):
                    return _oauth_error(400, "invalid_request", "use one client authentication")
                client_id, secret = basic or (form.get("client_id"), form.get("client_secret"))
                if not client_id or secret is None:
                    return _oauth_error(401, "invalid_client", "client authentication failed")
                tokens = await identity.client_credentials(client_id, secret, info)
            elif grant is None:
                return _oauth_error(400, "invalid_request", "grant_type is required")
            else:
                return _oauth_error(
                    400, "unsupported_grant_type", f"{grant[:64]!r} is not supported"
                )
        except InvalidGrant:
            return _oauth_error(
                400, "invalid_grant", "the refresh token is invalid, expired or revoked"
            )
        except InvalidClient:
            return _oauth_error(401, "invalid_client", "client authentication failed")
        return Response(tokens, status_code=200, headers=_NO_STORE)

    @post(
        "/revoke",
        summary="OAuth 2.0 token revocation (RFC 7009)",
        status_code=200,
        opt=_FORM_BODY | {"form": (RevokeForm,)},
        responses=problems(200, s200="Revoked, or nothing to revoke (RFC 7009 §2.2)"),
    )
    async def revoke(self, request: Request[Any, Any, Any], state: State) -> Response[Any]:
        try:
            form = await _form(request, _REVOKE_PARAMS)
        except _FormError as exc:
            return _oauth_error(400, "invalid_request", str(exc))
        token = form.get("token")
        if token is None:
            return _oauth_error(400, "invalid_request", "token is required")
        await _identity(state).revoke(token, _info(request))
        return Response(b"", status_code=200, media_type="application/json", headers=_NO_STORE)


def _check_code_form(code: str, *, recovery: bool) -> None:
    """422 for a code that is neither six digits nor (where accepted) a recovery code."""
    if is_totp_code(code) or (recovery and normalise_recovery_code(code) is not None):
        return
    message = (
        "must be the 6-digit code of the authenticator app, or a recovery code"
        if recovery
        else "must be the 6-digit code of the authenticator app"
    )
    raise Problem(
        422, "invalid request body", extra={"errors": [{"field": "body.code", "message": message}]}
    )


def _wrong_code(exc: WrongCode) -> Problem:
    return Problem(
        422,
        "the code is wrong or was used already",
        headers=exc.verdict.headers(),
        extra={"errors": [{"field": "body.code", "message": "wrong or used already"}]},
    )


def _mfa_unavailable() -> Problem:
    return Problem(503, "multi-factor verification is unavailable; quote the request_id")


class JWKSController(Controller):
    path = "/.well-known"
    tags = ["identity"]

    @get(
        "/jwks.json",
        summary="Public keys of cygate's access tokens (JWK Set)",
        responses=answers(200, JWKSet, "The JWK Set", "application/jwk-set+json"),
    )
    async def jwks(self, state: State) -> Response[bytes]:
        body = orjson.dumps(_identity(state).keyring.jwks())
        return Response(
            body,
            media_type="application/jwk-set+json",
            headers={"cache-control": "public, max-age=300"},
        )


def _my_id(request: Request[Any, Any, Any]) -> UUID:
    """The caller's user id; a token of a service client or an external provider has none
    here, and the profile it asks for is not found."""
    return _user_id(principal_of(request), _identity(request.app.state).settings.jwt_issuer)


def _user_id(principal: Principal, own_issuer: str) -> UUID:
    # NOTE: an external provider's subject names its own user, never one of ours, even when
    # it looks like one of our user ids.
    if principal.issuer != own_issuer:
        raise Problem(404, "no user account for this caller")
    try:
        return UUID(principal.sub)
    except ValueError:
        raise Problem(404, "no user account for this caller") from None


async def _forget_profile(state: State, user_id: UUID) -> None:
    """Drop the cached ``GET /users/me`` of ``user_id`` on every instance (rule ``me``, tag
    ``user:{caller}``); called after the change is committed. Redis down: this instance is
    purged, the others keep the old profile until the rule's TTL (the write still succeeds)."""
    cache = getattr(state, "cache", None)
    if cache is None:
        return
    try:
        await cache.invalidate_tags([f"user:{user_id}"])
    except CacheUnavailable as exc:
        log.warning("profile of %s changed; other instances not told: %s", user_id, exc)


_AUTH = {"auth": True}
_ADMIN = {"auth": True, "roles": ["admin"]}


class UsersController(Controller):
    path = "/api/v1/users"
    tags = ["identity"]

    @get("/me", summary="My profile", opt=_AUTH | {"cache": "me"}, responses=problems(404))
    async def me(self, state: State, principal: NamedDependency[Principal]) -> Response[User]:
        # NOTE: ``principal``, not ``request``: the cache's input check can then prove the key
        # (the caller) covers everything this handler reads. Served by the edge's fast handler
        # (fast.py) unless fast paths are off; both give the same bytes.
        identity = _identity(state)
        user_id = _user_id(principal, identity.settings.jwt_issuer)
        user = await get_user(identity.pool, user_id)
        if user is None:
            raise Problem(404, "no user account for this caller")
        return Response(user, headers={"cache-control": PROFILE_CACHE_CONTROL})

    @patch("/me", summary="Change my name", opt=_AUTH | _SMALL_BODY, responses=problems(404))
    async def update_me(
        self, request: Request[Any, Any, Any], state: State, data: JSONBody[ProfilePatch]
    ) -> Response[User]:
        user = await rename_user(_identity(state).pool, _my_id(request), data.name)
        if user is None:
            raise Problem(404, "no user account for this caller")
        await _forget_profile(state, user.id)
        return Response(user, headers=_PRIVATE)

    @get(
        "/me/export",
        summary="Everything held about me (GDPR Art. 15/20)",
        opt=_AUTH,
        responses=answers(200, dict[str, Any], "The caller's data, by kind") | problems(404),
    )
    async def export(self, request: Request[Any, Any, Any], state: State) -> Response[Any]:
        data = await _identity(state).export(_my_id(request))
        if data is None:
            raise Problem(404, "no user account for this caller")
        return Response(data, headers=_PRIVATE)

    @delete(
        "/me",
        summary="Erase my account (GDPR Art. 17)",
        opt=_AUTH,
        status_code=204,
        responses=problems(404, 409),
    )
    async def erase(self, request: Request[Any, Any, Any], state: State) -> None:
        user_id = _my_id(request)
        try:
            erased = await _identity(state).erase(user_id, _info(request))
        except LastAdmin:
            raise Problem(
                409, "the last admin cannot erase its account; make another account admin first"
            ) from None
        if not erased:
            raise Problem(404, "no user account for this caller")
        await _forget_profile(state, user_id)

    @get("/", summary="Users (admin), keyset-paged", opt=_ADMIN)
    async def list_users(
        self,
        state: State,
        limit: Annotated[int, Parameter(ge=1, le=100, description="Page size")] = 20,
        cursor: Annotated[
            str | None, Parameter(max_length=64, description="next_cursor of the previous page")
        ] = None,
    ) -> Response[UserPage]:
        page = await list_users(_identity(state).pool, limit=limit, cursor=cursor)
        return Response(page, headers=_PRIVATE)

    @patch(
        "/{user_id:uuid}/roles",
        summary="Set a user's roles (admin)",
        opt=_ADMIN | _SMALL_BODY,
        responses=problems(404, 409),
    )
    async def set_roles(
        self,
        request: Request[Any, Any, Any],
        state: State,
        user_id: FromPath[UUID],
        data: JSONBody[RolesIn],
    ) -> Response[User]:
        try:
            user = await _identity(state).set_roles(
                principal_of(request), user_id, list(data.roles), _info(request)
            )
        except LastAdmin:
            raise Problem(
                409,
                "this change would leave no other admin; make another account admin first",
            ) from None
        if user is None:
            raise Problem(404, f"no user {user_id}")
        await _forget_profile(state, user_id)
        return Response(user, headers=_PRIVATE)

    # -- multi-factor sign-in -------------------------------------------------------------------

    @post(
        "/me/mfa/totp",
        summary="Start a TOTP enrolment (inactive until verified)",
        status_code=201,
        opt=_AUTH | _SMALL_BODY,
        responses=problems(404, 409),
    )
    async def enrol_totp(
        self, request: Request[Any, Any, Any], state: State
    ) -> Response[TotpEnrolmentOut]:
        try:
            enrolment = await _identity(state).enrol_totp(_my_id(request), _info(request))
        except MfaConflict as exc:
            raise Problem(409, str(exc)) from None
        if enrolment is None:
            raise Problem(404, "no user account for this caller")
        secret, uri = enrolment
        return Response(
            TotpEnrolmentOut(secret=secret, otpauth_uri=uri), status_code=201, headers=_NO_STORE
        )

    @post(
        "/me/mfa/totp/verify",
        summary="Activate the TOTP enrolment with a current code; the recovery codes",
        status_code=200,
        opt=_AUTH | _SMALL_BODY,
        responses=problems(404, 409, 422, 429),
    )
    async def verify_totp(
        self, request: Request[Any, Any, Any], state: State, data: JSONBody[TotpCodeIn]
    ) -> Response[RecoveryCodesOut]:
        _check_code_form(data.code, recovery=False)
        try:
            codes = await _identity(state).verify_totp(_my_id(request), data.code, _info(request))
        except Throttled as exc:
            raise Problem(429, str(exc), headers=exc.verdict.headers()) from None
        except WrongCode as exc:
            raise _wrong_code(exc) from None
        except MfaConflict as exc:
            raise Problem(409, str(exc)) from None
        except MfaUnavailable:
            raise _mfa_unavailable() from None
        return Response(RecoveryCodesOut(recovery_codes=codes), headers=_NO_STORE)

    @delete(
        "/me/mfa/totp",
        summary="Turn MFA off (a current code or a recovery code)",
        status_code=204,
        opt=_AUTH | _SMALL_BODY,
        responses=problems(404, 409, 422, 429),
    )
    async def disable_totp(
        self, request: Request[Any, Any, Any], state: State, data: JSONBody[CodeIn]
    ) -> None:
        _check_code_form(data.code, recovery=True)
        try:
            await _identity(state).disable_totp(_my_id(request), data.code, _info(request))
        except Throttled as exc:
            raise Problem(429, str(exc), headers=exc.verdict.headers()) from None
        except WrongCode as exc:
            raise _wrong_code(exc) from None
        except MfaConflict as exc:
            raise Problem(409, str(exc)) from None
        except MfaUnavailable:
            raise _mfa_unavailable() from None
