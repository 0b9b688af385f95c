"""External identity providers: their JWKS fetched, cached, refreshed, and fed to the verifier.

For each provider in ``identity_providers`` (settings), each worker:

- fetches the JWKS at start-up (in the background: the gateway does not wait for a provider),
  then every ``refresh_interval`` seconds;
- fetches again when a token names a ``kid`` the current set lacks (key rotation at the
  provider), at most once per ``min_refresh_interval``; concurrent requests share one fetch;
- keeps serving with the last good set when a fetch fails (provider down, bad JSON, an empty
  set), retrying sooner than the schedule, and logs it.

The JWKS URL comes only from configuration; nothing in a token (``jku``, ``x5u``) is fetched.
Fetches use the standard library's HTTP client in a thread (a few per hour), with a timeout and
a size cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from cygate.core.jwt import JWTError, VerifyKey
from cygate.edge.context import Principal
from cygate.services.identity.keys import KeyConfigError, jwk_to_verify_key

if TYPE_CHECKING:
    from cygate.core.jwt import JWTVerifierPy
    from cygate.services.identity.settings import IdentityProvider

__all__ = ["ProviderKeys", "fetch_jwks", "parse_jwks", "provider_principal"]

log = logging.getLogger("cygate.identity")

MAX_JWKS_BYTES = 512 * 1024
FETCH_TIMEOUT = 5.0
RETRY_AFTER_FAILURE = 10.0


def provider_principal(provider: IdentityProvider) -> Callable[[dict[str, Any]], Principal]:
    """The principal factory for a provider's tokens: its roles claim, filtered through the
    roles the provider may grant."""
    allowed = frozenset(provider.allowed_roles)
    roles_claim = provider.roles_claim
    issuer = provider.issuer

    def principal(claims: dict[str, Any]) -> Principal:
        raw = claims.get(roles_claim, ())
        if isinstance(raw, str):
            raw = raw.split()
        if not isinstance(raw, list | tuple) or not all(isinstance(r, str) for r in raw):
            raise JWTError("bad_claims")
        return Principal.from_claims(claims, issuer, allowed.intersection(raw))

    return principal


def parse_jwks(body: bytes, algorithms: list[str]) -> list[VerifyKey]:
    """The usable keys of a JWKS document (others are skipped and logged); raises ValueError
    when the document is not a JWK Set at all."""
    try:
        doc = msgspec.json.decode(body)
    except (msgspec.MsgspecError, ValueError, RecursionError) as exc:
        raise ValueError(f"JWKS is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError("JWKS has no 'keys' list")
    keys: dict[str, VerifyKey] = {}
    allowed = frozenset(algorithms)
    for jwk in doc["keys"]:
        try:
            key = jwk_to_verify_key(jwk, allowed)
        except KeyConfigError as exc:
            log.info("JWKS: skipping a key: %s", exc)
            continue
        if key.kid in keys:
            log.warning("JWKS: kid %r appears twice; keeping the first", key.kid)
            continue
        keys[key.kid] = key
    return list(keys.values())


def fetch_jwks(url: str, timeout: float = FETCH_TIMEOUT) -> bytes:
    """GET ``url`` (blocking; run it in a thread). Raises OSError/ValueError on any failure."""
    request = urllib.request.Request(url, headers={"accept": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if response.status != 200:
            raise ValueError(f"JWKS fetch: HTTP {response.status}")
        body: bytes = response.read(MAX_JWKS_BYTES + 1)
    if len(body) > MAX_JWKS_BYTES:
        raise ValueError("JWKS larger than the size cap")
    return body


def _same_or_new(old: VerifyKey | None, new: VerifyKey) -> VerifyKey:
    if old is not None and old.alg == new.alg and old.key == new.key:
        return old
    return new


class _Provider:
    __slots__ = ("config", "fetching", "last_attempt", "last_success", "principal")

    def __init__(self, config: IdentityProvider) -> None:
        self.config = config
        self.principal = provider_principal(config)
        self.fetching: asyncio.Task[bool] | None = None
        self.last_attempt = float("-inf")
        self.last_success = float("-inf")


class ProviderKeys:
    """Keeps each provider's keys in the verifier fresh (see the module docstring)."""

    __slots__ = ("_providers", "_tasks", "fetch", "verifier")

    def __init__(
        self,
        providers: list[IdentityProvider],
        verifier: JWTVerifierPy,
        fetch: Callable[[str], bytes] = fetch_jwks,
    ) -> None:
        self.verifier = verifier
        self.fetch = fetch
        self._providers = {p.issuer: _Provider(p) for p in providers}
        self._tasks: list[asyncio.Task[None]] = []
        for provider in self._providers.values():
            # Known from the start with no keys: a token names the issuer, misses its kid, and
            # that triggers a fetch (instead of an "unknown issuer" nobody acts on).
            self._install(provider, [])

    def __contains__(self, issuer: object) -> bool:
        return issuer in self._providers

    def _install(self, provider: _Provider, keys: list[VerifyKey]) -> None:
        config = provider.config
        current = self.verifier.issuers().get(config.issuer)
        if current is not None:
            # Keep the key objects that did not change, so their cached tokens stay cached.
            keys = [_same_or_new(current.keys.get(k.kid), k) for k in keys]
        self.verifier.set_issuer(
            config.issuer,
            audience=config.audience,
            keys=keys,
            principal=provider.principal,
            typ=config.typ or None,
        )

    async def start(self) -> None:
        """Start the scheduled refresh of every provider (the first fetch happens at once)."""
        for provider in self._providers.values():
            self._tasks.append(asyncio.create_task(self._schedule(provider)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _schedule(self, provider: _Provider) -> None:
        while True:
            ok = await self.refresh(provider.config.issuer, force=True)
            interval = provider.config.refresh_interval
            await asyncio.sleep(interval if ok else min(interval, RETRY_AFTER_FAILURE))

    async def refresh(self, issuer: str, *, force: bool = False) -> bool:
        """Fetch ``issuer``'s JWKS now (unless one was fetched less than
        ``min_refresh_interval`` ago and ``force`` is False). True when a new set is in place.
        Concurrent callers share one fetch."""
        provider = self._providers.get(issuer)
        if provider is None:
            return False
        if provider.fetching is not None:
            return await asyncio.shield(provider.fetching)
        since = time.monotonic() - provider.last_attempt
        if not force and since < provider.config.min_refresh_interval:
            return False
        provider.fetching = asyncio.create_task(self._fetch(provider))
        try:
            return await asyncio.shield(provider.fetching)
        finally:
            provider.fetching = None

    async def _fetch(self, provider: _Provider) -> bool:
        config = provider.config
        provider.last_attempt = time.monotonic()
        try:
            body = await asyncio.to_thread(self.fetch, config.jwks_url)
            keys = parse_jwks(body, list(config.algorithms))
            if not keys:
                raise ValueError("JWKS has no usable key")
        except (OSError, ValueError, urllib.error.URLError) as exc:
            log.warning(
                "JWKS of %s not refreshed (%s); keeping the last good set", config.issuer, exc
            )
            return False
        self._install(provider, keys)
        provider.last_success = time.monotonic()
        log.info("JWKS of %s: %d key(s)", config.issuer, len(keys))
        return True
