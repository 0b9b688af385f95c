"""The policy stage: attribute-based policies (Cedar) for the routes that name a policy action.

A route opts in by its handler's ``opt={"policy": "<action>"}`` (``RoutePolicy.policy``), and
may name a resource loader with ``opt={"policy_resource": "<Type>"}``. For such a route the
stage asks Cedar (``cedarpy``) whether

- **principal** ``User::"<sub>"`` (``Anonymous::""`` without a token), with attributes
  ``roles`` (a set) and the token's custom claims (``Principal.claims``: ``category_ids``, ...),
- may take **action** ``Action::"<action>"``
- on **resource** ``<Type>::"<path parameters>"``: with a loader (a service registers it under
  ``<Type>``, e.g. the catalog's ``Product``), the attributes it loads (``category_id``);
  without one, ``Route::"<route name>"`` whose attributes are the path parameters,
- in **context** ``{"method", "client_ip", "time"}`` (seconds since the epoch).

Deny is a 403 problem+json. Cedar denies by default: a policy file must ``permit`` what it
allows (admins included). Routes that name no action never reach Cedar.

Decisions are remembered in a bounded table keyed by (principal id, roles and claims, action,
resource type, id and attributes): PERF, a repeated decision is one dict lookup on a tuple key.
A policy set that reads ``context`` is not remembered (the time and address change). The table
is emptied whenever the set changes.

The files are read at start-up (a file that does not parse is :class:`PolicyError`, a
``ValueError``: ``cygate serve`` and ``check-config`` print one line and exit 2) and, every
``reload_interval`` seconds, their modification times are compared: a changed set is parsed and
installed; one that does not parse leaves the previous set in force, logged at warning and
counted in ``cygate_policy_reload_errors_total``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cygate.edge.problem import Problem

if TYPE_CHECKING:
    from cygate.edge.context import EdgeContext, Principal

__all__ = [
    "PolicyError",
    "PolicyLoader",
    "PolicySet",
    "PolicyStage",
    "load_policy_set",
]

log = logging.getLogger("cygate.edge.policy")

PolicyLoader = Callable[[str], Awaitable[Mapping[str, Any] | None]]
"""A resource's attributes by its id (the route's path parameters), or None when it does not
exist (then the resource has no attributes: a policy that reads one does not permit)."""

_DENIED = "the access policy does not allow this request"


class PolicyError(ValueError):
    """A policy file is missing, unreadable or not valid Cedar. ``str(err)``: one line."""


class PolicySet:
    """The text of the policy files, as parsed, and what the stage needs to know of it."""

    __slots__ = ("mtimes", "parsed", "reads_context", "text")

    def __init__(self, text: str, mtimes: tuple[float, ...]) -> None:
        # PERF: cedarpy is imported where a policy set is first made: without policy files no
        # process of the gateway loads it (~3.5 MiB each; docs/deployment.md, Memory).
        import cedarpy

        self.text = text
        self.parsed = cedarpy.PolicySet.from_str(text)
        """Parsed once (PERF: an evaluation does not parse the set again)."""
        self.mtimes = mtimes
        """Each file's modification time when it was read (what a reload compares)."""
        self.reads_context = "context" in text
        """The set may depend on the request's context: its decisions are not remembered."""


def _mtimes(files: Sequence[str]) -> tuple[float, ...]:
    try:
        return tuple(os.stat(f).st_mtime_ns / 1e9 for f in files)
    except OSError as exc:
        raise PolicyError(f"policy file not readable: {exc}") from None


def load_policy_set(files: Sequence[str]) -> PolicySet:
    """Read and parse the policy files; :class:`PolicyError` when one does not parse."""
    import cedarpy  # only with policy files (see PolicySet)

    mtimes = _mtimes(files)
    parts: list[str] = []
    for path in files:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise PolicyError(f"policy file {path} not readable: {exc}") from None
        try:
            cedarpy.PolicySet.from_str(text)
        except ValueError as exc:  # the parser's message
            first = (str(exc).strip().splitlines() or ["a parse error"])[0]
            raise PolicyError(f"policy file {path} is not valid Cedar: {first}") from None
        parts.append(text)
    return PolicySet("\n".join(parts), mtimes)


def _claims_json(claims: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    return {name: list(value) if isinstance(value, tuple) else value for name, value in claims}


class PolicyStage:
    """An edge stage (``stage(ctx)``); see the module docstring."""

    __slots__ = (
        "_decisions",
        "_next_check",
        "cache_size",
        "files",
        "loaders",
        "on_decision",
        "on_reload_error",
        "policies",
        "reload_interval",
    )

    def __init__(
        self,
        files: Sequence[str],
        *,
        cache_size: int = 10_000,
        reload_interval: float = 2.0,
        loaders: Mapping[str, PolicyLoader] | None = None,
        on_reload_error: Callable[[], None] | None = None,
        on_decision: Callable[[bool], None] | None = None,
    ) -> None:
        self.files = tuple(files)
        self.policies = load_policy_set(self.files)  # PolicyError at start-up: fatal
        self.cache_size = cache_size
        self.reload_interval = reload_interval
        self.loaders: dict[str, PolicyLoader] = dict(loaders or {})
        """Resource type -> its attribute loader (a service's ``policy_loaders``)."""
        self.on_reload_error = on_reload_error
        self.on_decision = on_decision
        self._decisions: dict[tuple[Any, ...], bool] = {}
        self._next_check = time.monotonic() + reload_interval

    # -- reload ------------------------------------------------------------------------------

    def maybe_reload(self, now: float | None = None) -> bool:
        """Compare the files' modification times (at most every ``reload_interval`` seconds)
        and install a changed set; True when one was installed. A set that does not load keeps
        the previous one (logged at warning, counted)."""
        now = time.monotonic() if now is None else now
        if not self.reload_interval or now < self._next_check:
            return False
        self._next_check = now + self.reload_interval
        return self.reload()

    def reload(self) -> bool:
        """Load the files now when their modification times changed; True when installed."""
        try:
            if _mtimes(self.files) == self.policies.mtimes:
                return False
            policies = load_policy_set(self.files)
        except PolicyError as exc:
            log.warning("policy reload failed, the previous policies stay in force: %s", exc)
            if self.on_reload_error is not None:
                self.on_reload_error()
            return False
        self.policies = policies
        self.forget()
        log.info("policies reloaded from %s", ", ".join(self.files))
        return True

    # -- decisions ---------------------------------------------------------------------------

    @property
    def remembered(self) -> int:
        """Decisions in the table now."""
        return len(self._decisions)

    def forget(self) -> None:
        """Empty the decision table (a reload does; so does the uncached benchmark)."""
        self._decisions = {}

    def __call__(self, ctx: EdgeContext) -> Awaitable[None] | None:
        policy = ctx.policy
        action = policy.policy
        if action is None:
            return None
        if self.reload_interval:
            self.maybe_reload()
        resource_type = policy.policy_resource
        params = ctx.params or {}
        if resource_type is not None and resource_type in self.loaders:
            return self._with_loaded(ctx, action, resource_type, params)
        attrs = tuple(sorted(params.items()))
        resource_id = policy.name if resource_type is None else "/".join(v for _, v in attrs)
        self._enforce(ctx, action, resource_type or "Route", resource_id, attrs)
        return None

    async def _with_loaded(
        self, ctx: EdgeContext, action: str, resource_type: str, params: dict[str, str]
    ) -> None:
        resource_id = "/".join(params.values())
        loaded = await self.loaders[resource_type](resource_id)
        attrs = tuple(sorted((loaded or {}).items()))
        self._enforce(ctx, action, resource_type, resource_id, attrs)

    def _enforce(
        self,
        ctx: EdgeContext,
        action: str,
        resource_type: str,
        resource_id: str,
        resource_attrs: tuple[tuple[str, Any], ...],
    ) -> None:
        allowed = self.decide(
            ctx.principal, action, resource_type, resource_id, resource_attrs, ctx
        )
        if self.on_decision is not None:
            self.on_decision(allowed)
        if not allowed:
            raise Problem(403, _DENIED)

    def decide(
        self,
        principal: Principal | None,
        action: str,
        resource_type: str,
        resource_id: str,
        resource_attrs: tuple[tuple[str, Any], ...] = (),
        ctx: EdgeContext | None = None,
    ) -> bool:
        """Whether the policies allow it (remembered: see the module docstring)."""
        policies = self.policies
        if principal is None:
            key: tuple[Any, ...] = (
                "",
                None,
                (),
                action,
                resource_type,
                resource_id,
                resource_attrs,
            )
        else:
            # PERF: one flat tuple (no nested one to build and hash on a remembered decision)
            key = (
                principal.sub,
                principal.roles,
                principal.claims,
                action,
                resource_type,
                resource_id,
                resource_attrs,
            )
        if policies.reads_context:
            return self._evaluate(policies, key, ctx)
        decisions = self._decisions
        allowed = decisions.get(key)
        if allowed is None:
            allowed = self._evaluate(policies, key, ctx)
            if len(decisions) >= self.cache_size:
                decisions.clear()
            decisions[key] = allowed
        return allowed

    @staticmethod
    def _evaluate(policies: PolicySet, key: tuple[Any, ...], ctx: EdgeContext | None) -> bool:
        """One Cedar evaluation (no table) of a :meth:`decide` key."""
        sub, roles, claims, action, resource_type, resource_id, resource_attrs = key
        if sub:
            principal_uid = {"type": "User", "id": sub}
            principal_attrs: dict[str, Any] = {"roles": sorted(roles), **_claims_json(claims)}
        else:
            principal_uid = {"type": "Anonymous", "id": ""}
            principal_attrs = {"roles": []}
        resource_uid = {"type": resource_type, "id": resource_id}
        entities = [
            {"uid": principal_uid, "attrs": principal_attrs, "parents": []},
            {"uid": resource_uid, "attrs": _claims_json(resource_attrs), "parents": []},
        ]
        context: dict[str, Any] = {"time": int(time.time())}
        if ctx is not None:
            context["method"] = ctx.method
            context["client_ip"] = ctx.client_ip
        request = {
            "principal": f'{principal_uid["type"]}::"{_escape(principal_uid["id"])}"',
            "action": f'Action::"{_escape(action)}"',
            "resource": f'{resource_type}::"{_escape(resource_id)}"',
            "context": context,
        }
        import cedarpy  # loaded by the PolicySet already: a look-up in sys.modules

        result = cedarpy.is_authorized(request, policies.parsed, entities)
        return bool(result.allowed)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')
