"""Per-caller caching with real tokens through real gateways: ``GET /api/v1/users/me``.

Gateways G1 and G2 (Granian, one worker each: an L1 hit is then certain to be one) share the
database, the Redis prefix, the cache-key secret and the token keys. Users register and log in
for real; every request carries a real access token, checked by the token stage. G3 serves the
same route through the Litestar handler (fast paths off) with a Redis prefix of its own, to
compare its bytes with the fast handler's.
"""

from __future__ import annotations

import json
import pathlib
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis
from cryptography.hazmat.primitives.asymmetric import ed25519
from tests.acceptance.conftest import Gateway, admin_headers, start_gateway, stop_gateway
from tests.acceptance.test_catalog_api import assert_problem

from identity_helpers import pem_private

pytestmark = pytest.mark.acceptance

ME = "/api/v1/users/me"
SECRET = "acceptance-per-caller-secret"


class Caller:
    """A registered, logged-in user: the profile at registration and a real access token."""

    def __init__(self, gw: Gateway) -> None:
        self.address = f"198.18.{secrets.randbelow(250)}.{secrets.randbelow(250) + 1}"
        self.email = f"caller-{uuid.uuid4().hex[:12]}@example.com"
        self.password = secrets.token_urlsafe(12)
        self.name = f"Caller {secrets.token_hex(3)}"
        r = httpx.post(
            gw.url + "/api/v1/auth/register",
            json={"email": self.email, "password": self.password, "name": self.name},
            headers={"x-forwarded-for": self.address},
        )
        assert r.status_code == 201, r.text
        self.id: str = r.json()["id"]
        self.token = self.login(gw)

    def login(self, gw: Gateway) -> str:
        r = httpx.post(
            gw.url + "/api/v1/auth/login",
            json={"email": self.email, "password": self.password},
            headers={"x-forwarded-for": self.address},
        )
        assert r.status_code == 200, r.text
        self.token = str(r.json()["access_token"])
        return self.token

    def headers(self, **extra: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}", **extra}

    def get(self, gw: Gateway, **extra: str) -> httpx.Response:
        return httpx.get(gw.url + ME, headers=self.headers(**extra))


def is_profile_of(r: httpx.Response, caller: Caller, *others: Caller) -> dict[str, Any]:
    """A 200 with ``caller``'s own profile, marked private, nothing of ``others`` in it."""
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    assert (doc["id"], doc["email"]) == (caller.id, caller.email)
    for other in others:
        assert other.id not in r.text and other.email not in r.text
    cache_control = r.headers["cache-control"]
    assert cache_control.startswith("private, ") and "public" not in cache_control
    assert r.headers["etag"] and r.headers["content-type"] == "application/json"
    return doc


def profile_env(
    gateway_env: dict[str, str], key_file: str, prefix: str, **extra: str
) -> dict[str, str]:
    return {
        **gateway_env,
        "CYGATE_REDIS_PREFIX": prefix,
        "CYGATE_CACHE_KEY_SECRET": SECRET,
        "CYGATE_JWT_KEY_FILES": key_file,
        # Each worker reads the revocation feed every 0.05 s: a revoked token is refused by
        # the other gateways within that (the tests wait for it).
        "CYGATE_JWT_REVOCATION_CACHE_SECONDS": "0.05",
        "CYGATE_ARGON2_TIME_COST": "1",
        "CYGATE_ARGON2_MEMORY_COST": "1024",
        "CYGATE_TRUSTED_PROXIES": "127.0.0.1",
        "CYGATE_METRICS_ACCESS": "loopback",
        **extra,
    }


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder: pathlib.Path = tmp_path_factory.mktemp("me-keys")
    return pem_private(ed25519.Ed25519PrivateKey.generate(), folder / "ed25519.pem")


@pytest.fixture(scope="module")
def shared_prefix(redis_prefix: str) -> str:
    return f"{redis_prefix}me-{secrets.token_hex(3)}:"


@pytest.fixture(scope="module")
def gateways(
    gateway_env: dict[str, str], key_file: str, shared_prefix: str, seeded: object
) -> Iterator[tuple[Gateway, Gateway, Gateway]]:
    """G1 and G2 sharing L2; G3 with the Litestar handler and an L2 of its own."""
    gws: list[Gateway] = []
    try:
        for seed in ("1", "2"):
            env = profile_env(gateway_env, key_file, shared_prefix, PYTHONHASHSEED=seed)
            gws.append(start_gateway(env, workers=1))
        own = f"{shared_prefix}litestar-"
        env = profile_env(gateway_env, key_file, own, CYGATE_EDGE_FAST_PATHS="false")
        gws.append(start_gateway(env, workers=1))
        yield gws[0], gws[1], gws[2]
    finally:
        outputs = [stop_gateway(gw) for gw in gws]  # every one stopped before any assert
        for output in outputs:
            assert "Traceback" not in output, output


# -- isolation through L1 and L2 ---------------------------------------------------------------


def test_a_and_b_in_turn_through_l1_and_l2_never_see_each_other(
    gateways: tuple[Gateway, Gateway, Gateway],
) -> None:
    g1, g2, _ = gateways
    a, b = Caller(g1), Caller(g1)
    steps = [  # (gateway, caller, X-Cache expected)
        (g1, a, "miss"),
        (g1, a, "hit-l1"),
        (g1, b, "miss"),  # B's own key: never A's entry
        (g1, b, "hit-l1"),
        (g2, a, "hit-l2"),
        (g2, b, "hit-l2"),
        (g2, a, "hit-l1"),
        (g2, b, "hit-l1"),
        (g1, b, "hit-l1"),
    ]
    bodies: dict[str, bytes] = {}
    for gw, caller, expected in steps:
        r = caller.get(gw)
        other = b if caller is a else a
        doc = is_profile_of(r, caller, other)
        assert r.headers["x-cache"] == expected, (caller.email, gw.url, r.headers["x-cache"])
        assert doc["name"] == caller.name
        assert bodies.setdefault(caller.id, r.content) == r.content
    assert bodies[a.id] != bodies[b.id]


def test_one_callers_etag_never_gives_another_a_304(
    gateways: tuple[Gateway, Gateway, Gateway],
) -> None:
    g1, g2, _ = gateways
    a, b = Caller(g1), Caller(g1)
    a_etag = a.get(g1).headers["etag"]
    b_etag = b.get(g1).headers["etag"]
    assert a_etag != b_etag
    for gw in (g1, g2):
        for inm in (a_etag, f"W/{a_etag}", f'"x", {a_etag}'):
            r = b.get(gw, **{"if-none-match": inm})
            is_profile_of(r, b, a)  # a full 200 with B's own body
        mine = a.get(gw, **{"if-none-match": a_etag})
        assert (mine.status_code, mine.content) == (304, b"")
        assert mine.headers["etag"] == a_etag
        assert mine.headers["cache-control"].startswith("private, ")


def test_host_accept_and_forwarded_host_never_poison_others(
    gateways: tuple[Gateway, Gateway, Gateway],
) -> None:
    g1, g2, _ = gateways
    a, b = Caller(g1), Caller(g1)
    weird = {
        "host": "evil.example",
        "x-forwarded-host": "evil.example",
        "accept": "text/html",
        "x-forwarded-proto": "http",
    }
    # A's entry is stored by a request with weird headers (they are not in the key, and the
    # handler cannot read them: the start-up check proves it), then read normally.
    stored = a.get(g1, **weird)
    is_profile_of(stored, a, b)
    assert stored.headers["x-cache"] == "miss"
    for gw, label in ((g1, "hit-l1"), (g2, "hit-l2")):
        normal = a.get(gw)
        is_profile_of(normal, a, b)
        assert normal.headers["x-cache"] == label and normal.content == stored.content
        assert "evil" not in normal.text
        assert all("evil" not in v and "text/html" not in v for v in normal.headers.values())
    # B with the same weird headers gets B's own profile, stored under B's key; and B's normal
    # read on the other gateway is B's too.
    for gw in (g1, g2):
        is_profile_of(b.get(gw, **weird), b, a)
        is_profile_of(b.get(gw), b, a)
    # Every spelling of one caller's request is one entry: varied Accept, Host, forwarded host.
    for headers in ({"accept": "application/json"}, {"host": "other.example"}, {"accept": "*/*"}):
        r = a.get(g1, **headers)
        is_profile_of(r, a, b)
        assert r.headers["x-cache"] == "hit-l1"


def test_anonymous_and_bad_tokens_get_401_never_a_cached_body(
    gateways: tuple[Gateway, Gateway, Gateway],
) -> None:
    g1, g2, _ = gateways
    a = Caller(g1)
    for gw in (g1, g2):
        is_profile_of(a.get(gw), a)  # cached on both
    tampered = a.token[:-4] + ("AAAA" if not a.token.endswith("AAAA") else "BBBB")
    attempts: list[dict[str, str]] = [
        {},
        {"authorization": "Bearer"},
        {"authorization": f"Bearer {tampered}"},
        {"authorization": f"Basic {a.token}"},
        {"authorization": "Bearer not-a-token"},
    ]
    for gw in (g1, g2):
        for headers in attempts:
            for extra in ({}, {"if-none-match": "*"}, {"cache-control": "only-if-cached"}):
                r = httpx.get(gw.url + ME, headers={**headers, **extra})
                assert_problem(r, 401)
                assert a.email not in r.text and a.id not in r.text
                assert "x-cache" not in r.headers and "etag" not in r.headers
                assert r.headers["www-authenticate"].startswith("Bearer")


# -- invalidation ------------------------------------------------------------------------------


def test_rename_through_g1_is_seen_on_g2_at_once(
    gateways: tuple[Gateway, Gateway, Gateway],
) -> None:
    g1, g2, _ = gateways
    a, b = Caller(g1), Caller(g1)
    for gw in (g1, g2, g2):
        is_profile_of(a.get(gw), a)
        is_profile_of(b.get(gw), b)
    assert a.get(g2).headers["x-cache"] == "hit-l1"
    new_name = f"Renamed {secrets.token_hex(3)}"
    r = httpx.patch(g1.url + ME, json={"name": new_name}, headers=a.headers())
    assert r.status_code == 200 and r.json()["name"] == new_name
    start = time.perf_counter()
    reads = 0
    while True:
        reads += 1
        seen = a.get(g2)
        if is_profile_of(seen, a, b)["name"] == new_name:
            break
        # NOTE: a bound for a test that would otherwise hang; the entry's TTL is 60 s, so a
        # fresh name within it comes from the invalidation, never from expiry.
        assert time.perf_counter() - start < 5.0, "G2 kept the old name"
    elapsed = time.perf_counter() - start
    print(f"\nrename through G1 seen on G2 after {elapsed * 1000:.1f} ms ({reads} reads)")
    assert seen.headers["x-cache"] in ("miss", "hit-l2")  # reloaded, not the old L1 entry
    assert is_profile_of(a.get(g1), a, b)["name"] == new_name
    # B's entries are untouched by A's change.
    assert b.get(g2).headers["x-cache"] == "hit-l1" and b.get(g1).headers["x-cache"] == "hit-l1"


def test_role_change_by_admin_is_seen_everywhere(
    gateways: tuple[Gateway, Gateway, Gateway],
) -> None:
    g1, g2, _ = gateways
    a, b = Caller(g1), Caller(g1)
    for gw in (g1, g2):
        assert is_profile_of(a.get(gw), a)["roles"] == ["customer"]
        is_profile_of(b.get(gw), b)
    r = httpx.patch(
        g1.url + f"/api/v1/users/{a.id}/roles",
        json={"roles": ["customer", "catalog_manager"]},
        headers=admin_headers(g1),
    )
    assert r.status_code == 200, r.text
    old_token = a.token
    old = {"authorization": f"Bearer {old_token}"}
    for gw in (g1, g2):  # the change revoked A's tokens: no cached body for the old one
        r = once_revoked(lambda gw=gw: httpx.get(gw.url + ME, headers=old))
        assert_problem(r, 401)
        assert a.email not in r.text
    a.login(g2)
    for gw in (g2, g1):
        r = a.get(gw)
        assert is_profile_of(r, a, b)["roles"] == ["catalog_manager", "customer"]
        assert r.headers["x-cache"] in ("miss", "hit-l2")
    assert b.get(g2).headers["x-cache"] == "hit-l1"


def test_after_erasure_the_old_token_gets_401_and_the_entries_are_gone(
    gateways: tuple[Gateway, Gateway, Gateway], shared_prefix: str
) -> None:
    g1, g2, _ = gateways
    a, b = Caller(g1), Caller(g1)
    for gw in (g1, g2):
        is_profile_of(a.get(gw), a)
        is_profile_of(b.get(gw), b)
    client = redis.Redis.from_url(_redis_url(g1))
    try:
        tag_sets = list(client.scan_iter(match=f"{shared_prefix}*:t:user:{a.id}"))
        assert len(tag_sets) == 1
        members = [m.decode() for m in client.smembers(tag_sets[0])]  # type: ignore[union-attr]
        entry_prefix = tag_sets[0].decode().rsplit(":t:", 1)[0] + ":e:"
        assert members and all(client.exists(entry_prefix + m) for m in members)
        r = httpx.delete(g1.url + ME, headers=a.headers())
        assert r.status_code == 204, r.text
        assert not any(client.exists(entry_prefix + m) for m in members)  # L2 entry gone
    finally:
        client.close()
    for gw in (g1, g2):
        for extra in ({}, {"if-none-match": "*"}):
            r = once_revoked(lambda gw=gw, extra=extra: a.get(gw, **extra))
            assert_problem(r, 401)
            assert a.email not in r.text and a.name not in r.text
            assert "x-cache" not in r.headers
        assert b.get(gw).headers["x-cache"] == "hit-l1"  # B keeps B's entries


def once_revoked(get: Callable[[], httpx.Response]) -> httpx.Response:
    """``get``'s answer once the token it sends is no longer accepted (waited for up to 2 s):
    another gateway learns a revocation at its next read of the feed (every 0.05 s here)."""
    deadline = time.monotonic() + 2
    while (r := get()).status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.02)
    return r


def _redis_url(gw: Gateway) -> str:
    return gw.env["CYGATE_REDIS_URL"]


# -- both paths, one answer; the start-up check -----------------------------------------------


def test_fast_handler_and_litestar_handler_give_the_same_bytes(
    gateways: tuple[Gateway, Gateway, Gateway],
) -> None:
    g1, _, g3 = gateways
    a = Caller(g1)
    fast = a.get(g1)
    litestar = a.get(g3)
    for r in (fast, litestar):
        is_profile_of(r, a)
        assert r.headers["x-cache"] == "miss"
    assert fast.content == litestar.content and fast.headers["etag"] == litestar.headers["etag"]
    for name in ("content-type", "content-length", "cache-control"):
        assert fast.headers[name] == litestar.headers[name]
    # The rule's: max-age=0 (revalidate each time), stale-if-error (own copy while failing).
    assert fast.headers.get_list("cache-control") == ["private, max-age=0, stale-if-error=300"]
    again = a.get(g3)
    assert again.headers["x-cache"] == "hit-l1" and again.content == litestar.content


def test_a_public_rule_for_the_profile_stops_the_gateway(
    gateway_env: dict[str, str], key_file: str, shared_prefix: str
) -> None:
    public = json.dumps({"me": {"ttl": 60, "max_age": 0}})
    env = profile_env(gateway_env, key_file, shared_prefix, CYGATE_CACHE_RULES=public)
    with pytest.raises(RuntimeError, match="exited") as failure:
        gw = start_gateway(env, workers=1)
        stop_gateway(gw)  # pragma: no cover - only if the check let it start
    assert "users/me reads the caller" in str(failure.value)
    assert "must be private" in str(failure.value)
