"""Every Redis store of cygate on a real 3-master Redis Cluster (tests/private_redis_cluster):
the rate-limit script (one call and pipelined batches, keys on every shard), L2 entries, leases,
tag sets and invalidation (by tags and by keys alone) with the subscription's count, the
revocation list, the login limiter, the event stream and its consumer group, and a node restart.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from tests.events_helpers import connect
from tests.integration.test_cache_l2 import ITEM_KEY_ROUTE, instances, wait_until
from tests.integration.test_identity_parts import verifier
from tests.integration.test_ratelimit_redis import request, stage_for
from tests.private_redis_cluster import PrivateRedisCluster

from cygate.infra.outbox import emit
from cygate.infra.redis import RedisHandle, create_redis
from cygate.services.events.consumer import ConsumerRunner
from cygate.services.events.relay import Relay
from cygate.services.events.stream import Event, events_redis, stream_key
from cygate.services.identity.limiter import LoginLimiter
from cygate.services.identity.revocation import Revocations
from cygate.settings import Settings, load_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateRedisCluster]:
    with PrivateRedisCluster() as c:
        yield c


def cluster_settings(cluster: PrivateRedisCluster, **extra: str) -> Settings:
    return load_settings(
        {
            "CYGATE_REDIS_URL": cluster.url,
            "CYGATE_REDIS_CLUSTER": "true",
            "CYGATE_REDIS_PREFIX": f"t{secrets.token_hex(3)}:",
            **extra,
        }
    )


@pytest.fixture
async def handle(cluster: PrivateRedisCluster) -> AsyncIterator[RedisHandle]:
    h = create_redis(cluster_settings(cluster).redis)
    try:
        yield h
    finally:
        await h.close()


async def test_the_client_is_a_cluster_client_and_readyz_asks_the_cluster(
    handle: RedisHandle,
) -> None:
    assert handle.cluster
    assert await handle.ping()
    await handle.client.initialize()  # type: ignore[misc]
    assert len(handle.client.get_primaries()) == 3  # type: ignore[union-attr]


# -- rate limits ------------------------------------------------------------------------------


async def test_exact_limits_on_every_shard_across_three_instances(
    cluster: PrivateRedisCluster,
) -> None:
    settings = cluster_settings(cluster)
    handles = [create_redis(settings.redis) for _ in range(3)]
    stages = []
    for h in handles:
        stage, _ = stage_for(
            {"rate": 5, "period": 60, "mode": "exact"}, rate_limit_redis_timeout="5"
        )
        await stage.bind(h)
        stages.append(stage)
    # 12 clients (peers): their keys spread over the three masters; 40 concurrent requests each,
    # through three "instances": pipelined batches whose keys are on several shards.
    peers = [f"203.0.113.{i}" for i in range(12)]
    try:
        results = await asyncio.gather(
            *(request(stages[i % 3], peers[i % 12]) for i in range(12 * 40))
        )
        per_peer: dict[str, int] = {}
        for i, (status, _) in enumerate(results):
            per_peer[peers[i % 12]] = per_peer.get(peers[i % 12], 0) + (status == 200)
        assert per_peer == dict.fromkeys(peers, 5)
        store = stages[0].store
        assert store is not None
        shards = {cluster.port_of(store.key("g", p)) for p in peers}
        assert len(shards) == 3  # the keys really are on every master
        assert store.batches < store.calls  # and some calls went as pipelines
    finally:
        for h in handles:
            await h.close()


async def test_one_key_failing_in_a_pipelined_call_fails_that_decision_only(
    cluster: PrivateRedisCluster,
) -> None:
    """On a cluster the decisions of one round trip are a pipeline of one-key calls: a key
    whose value is not a TAT fails its own request (closed: 503), the others are decided and
    the circuit stays closed."""
    h = create_redis(cluster_settings(cluster).redis)
    stage, _ = stage_for({"rate": 5, "period": 60, "mode": "exact", "failure": "closed"},
                         rate_limit_redis_timeout="5")  # fmt: skip
    await stage.bind(h)
    store = stage.store
    assert store is not None
    peers = [f"198.18.0.{i}" for i in range(30)]
    await h.client.set(store.key("g", "i:" + peers[12]), "not a number")
    try:
        results = await asyncio.gather(*(request(stage, p) for p in peers))
        statuses = [s for s, _ in results]
        assert statuses[12] == 503
        assert statuses[:12] + statuses[13:] == [200] * 29
        assert store.usable and store.batches < store.calls
    finally:
        await h.close()


async def test_limits_resume_after_a_node_restart(cluster: PrivateRedisCluster) -> None:
    h = create_redis(cluster_settings(cluster).redis)
    stage, _ = stage_for({"rate": 3, "period": 60, "mode": "exact"}, rate_limit_redis_timeout="1",
                         rate_limit_redis_backoff="0.2")  # fmt: skip
    await stage.bind(h)
    try:
        assert [(await request(stage))[0] for _ in range(4)] == [200, 200, 200, 429]
        store = stage.store
        assert store is not None
        port = cluster.port_of(store.key("g", "203.0.113.7"))
        # its data (the limit's state) and its scripts are gone
        await asyncio.to_thread(cluster.restart, port)
        statuses: list[int] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            statuses = [(await request(stage, "198.51.100.9"))[0] for _ in range(4)]
            if statuses == [200, 200, 200, 429] and store.circuit.usable:
                break
        assert statuses == [200, 200, 200, 429]  # global again (NOSCRIPT reloaded the script)
    finally:
        await h.close()


# -- cache L2 ---------------------------------------------------------------------------------


async def test_l2_entries_leases_tags_and_purges_on_a_cluster(
    cluster: PrivateRedisCluster,
) -> None:
    prefix = f"c{secrets.token_hex(3)}:"
    async with instances(cluster.url, prefix, redis_cluster=True) as (app, (a, b)):
        first = await a.get("/items/1")
        await wait_until(lambda: a.metrics.counter("cygate_cache_stores_total").value == 1)
        from_l2 = await b.get("/items/1")
        assert (first.x_cache, from_l2.x_cache) == ("miss", "hit-l2")
        assert first.body == from_l2.body and app.calls["/items/1"] == 1
        # a purge by tag: the entry goes from L2 and both L1s; both instances heard it
        key = a.cache.key_for(ITEM_KEY_ROUTE, "/items/1")
        deleted, heard = await a.cache.invalidate_tags(["item:1"])
        assert (deleted, heard) == (1, 1)
        await wait_until(lambda: key not in b.cache.l1, 1.0)
        assert a.cache.l2 is not None and await a.cache.l2.get(key) is None
        app.version = 2
        assert (await b.get("/items/1")).json()["v"] == 2
        # a purge by keys alone (no tag set among its keys) runs on the slot's node too
        await wait_until(lambda: b.metrics.counter("cygate_cache_stores_total").value == 1)
        deleted, heard = await b.cache.invalidate_keys([key])
        assert (deleted, heard) == (1, 1)
        await wait_until(lambda: key not in a.cache.l1 and key not in b.cache.l1, 1.0)
        # (redis-py sends a script without keys to a random node: eight purges by keys each
        # land on the slot's node only because the script names it)
        for _ in range(8):
            assert (await a.cache.invalidate_keys([secrets.token_bytes(16)]))[1] == 1
        # every key of L2 is in the one slot of its hash tag
        assert a.cache.l2 is not None
        slots = {cluster.port_of(a.cache.l2.gen_key)}
        slots.add(cluster.port_of(a.cache.l2.entry_prefix + key.hex()))
        assert len(slots) == 1


async def test_l2_subscriptions_follow_a_restarted_node(cluster: PrivateRedisCluster) -> None:
    prefix = f"c{secrets.token_hex(3)}:"
    settings = {"redis_cluster": True, "cache_l2_retry_after": 0.2}
    async with instances(cluster.url, prefix, **settings) as (_, (a, b)):
        assert a.cache.l2 is not None
        await b.get("/items/3")
        port = cluster.port_of(a.cache.l2.gen_key)
        # (in a thread: the subscriptions must see the restart as it happens)
        await asyncio.to_thread(cluster.restart, port)

        def subscribers() -> int:
            with cluster.node(port) as c:
                return len(c.client_list(_type="pubsub"))

        for _ in range(200):  # both subscribed there again
            if subscribers() == 2:
                break
            await asyncio.sleep(0.05)
        assert subscribers() == 2
        key = a.cache.key_for(ITEM_KEY_ROUTE, "/items/3")

        async def purged() -> tuple[int, int]:
            for _ in range(50):
                try:
                    return await a.cache.invalidate_tags(["item:3"])
                except Exception:  # the circuit may still be open for a moment
                    await asyncio.sleep(0.1)
            raise AssertionError("the purge never went through")

        _, heard = await purged()
        assert heard == 1
        await wait_until(lambda: key not in b.cache.l1, 1.0)


# -- identity ---------------------------------------------------------------------------------


async def test_revocations_and_login_limits_on_a_cluster(handle: RedisHandle) -> None:
    a, b = (
        Revocations(handle, verifier(), interval=60),
        Revocations(handle, verifier(), interval=60),
    )
    exp = int(time.time()) + 600
    jtis = [f"jti-{i}-{secrets.token_hex(2)}" for i in range(20)]
    await a.revoke([(j, exp) for j in jtis])  # the feed's script: both keys in one slot
    assert await b.refresh()
    assert all(j in b.revoked for j in jtis)
    await a.revoke([("short", time.time() + 0.2)])
    await asyncio.sleep(0.3)
    assert await b.refresh()  # trims the expired one
    assert await handle.client.xlen(a.keys[0]) == len(jtis)
    limiter = LoginLimiter(handle, window=60, per_account=2, per_address=3)
    other = LoginLimiter(handle, window=60, per_account=2, per_address=3)
    await limiter.failed("a@x.io", "10.0.0.1")
    await other.failed("a@x.io", "10.0.0.2")
    assert not (await limiter.check("a@x.io", "10.0.0.3")).allowed
    await other.succeeded("a@x.io", "10.0.0.3")
    assert (await limiter.check("a@x.io", "10.0.0.3")).allowed


# -- events -----------------------------------------------------------------------------------


class Collect:
    """A consumer that keeps what it is given."""

    name = "collect"
    transactional = False

    def __init__(self) -> None:
        self.events: list[Event] = []

    def wants(self, event: Event) -> bool:
        return True

    async def apply(self, conn: Any, event: Event) -> None:
        self.events.append(event)


async def test_the_outbox_relay_stream_and_a_consumer_group_on_a_cluster(
    cluster: PrivateRedisCluster, test_db_dsn: str
) -> None:
    """The relay's pipelined XADDs go to the stream's shard, and a consumer group reads,
    applies and acknowledges them there. The outbox row is written and published in one
    transaction that is rolled back: the shared test database is left as it was (rows of
    others published here stay unpublished for their own relay)."""
    settings = cluster_settings(
        cluster, CYGATE_EVENTS_BLOCK="0.2", CYGATE_EVENTS_RELAY_BATCH="10000"
    )
    handle = events_redis(settings.events, settings.redis)
    relay = Relay(settings.events, handle, database=settings.database)
    handler = Collect()
    runner = ConsumerRunner(settings.events, handle, None, handler)
    await runner.ensure_group()
    task = asyncio.create_task(runner.run())
    conn = await connect(test_db_dsn)
    try:
        tx = conn.transaction()
        await tx.start()
        mine = await emit(conn, aggregate="test", aggregate_id=secrets.token_hex(4),
                          event_type="test.cluster", payload={"n": 1})  # fmt: skip
        while await relay.publish_batch(conn):
            pass
        await tx.rollback()
        await wait_until(lambda: mine in [e.id for e in handler.events], 10.0)
        assert [e.type for e in handler.events if e.id == mine] == ["test.cluster"]
        stream = stream_key(handle)
        pending: Any = None
        for _ in range(100):  # every message acknowledged: none pending in the group
            pending = await handle.client.xpending(stream, "collect")
            if pending["pending"] == 0:
                break
            await asyncio.sleep(0.05)
        assert pending["pending"] == 0
    finally:
        await conn.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await handle.close()
