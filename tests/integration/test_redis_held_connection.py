"""infra.redis.HeldConnection against a private redis-server the tests stop, restart and pause."""

from __future__ import annotations

import asyncio
import hashlib
import time

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from tests.private_redis import PrivateRedis

from cygate.infra.redis import HeldConnection, create_redis
from cygate.infra.settings import RedisSettings

pytestmark = pytest.mark.integration

COUNT = "return redis.call('INCR', KEYS[1])"
SHA = hashlib.sha1(COUNT.encode()).hexdigest()
BROKEN = "return redis.call('NOSUCHCOMMAND')"
BROKEN_SHA = hashlib.sha1(BROKEN.encode()).hexdigest()


def _clients(server: PrivateRedis) -> int:
    return len(server.client().client_list())


async def test_the_first_call_after_a_restart_reconnects_and_succeeds() -> None:
    """Redis restarted (its scripts gone, the held socket dead): the next call opens a new
    connection, loads the script and answers, with no error for its caller."""
    with PrivateRedis() as server:
        handle = create_redis(RedisSettings(url=server.url, timeout=2.0))
        held = HeldConnection(handle.client, 2.0)
        try:
            assert await held.evalsha(SHA, COUNT, [b"n"], []) == 1  # NOSCRIPT, then loaded
            assert await held.evalsha(SHA, COUNT, [b"n"], []) == 2
            for _ in range(2):  # twice: each restart kills the connection the last call held
                server.stop()
                server.start()
                assert await held.evalsha(SHA, COUNT, [b"n"], []) == 1  # new server, new data
                assert await held.evalsha(SHA, COUNT, [b"n"], []) == 2
            assert server.client().script_exists(SHA) == [True]
        finally:
            await held.close()
            await handle.close()


async def test_a_stopped_redis_fails_at_once_and_a_paused_one_within_the_timeout() -> None:
    server = PrivateRedis()
    server.start()
    handle = create_redis(RedisSettings(url=server.url, timeout=0.3))
    held = HeldConnection(handle.client, 0.3)
    try:
        assert await held.evalsha(SHA, COUNT, [b"n"], []) == 1
        server.stop()
        start = time.perf_counter()
        with pytest.raises((RedisConnectionError, OSError)):
            await held.evalsha(SHA, COUNT, [b"n"], [])  # the retry's new connection is refused
        assert time.perf_counter() - start < 0.3
        server.start()
        assert await held.evalsha(SHA, COUNT, [b"n"], []) == 1
        server.pause()
        start = time.perf_counter()
        with pytest.raises(asyncio.TimeoutError):
            await held.evalsha(SHA, COUNT, [b"n"], [])
        assert 0.25 < time.perf_counter() - start < 1.0
        server.resume()
        # The timed-out call ran when Redis woke up (2); its reply, left on the dropped
        # connection, is never taken for this one's (3).
        assert await held.evalsha(SHA, COUNT, [b"n"], []) == 3
    finally:
        await held.close()
        await handle.close()
        server.close()


async def test_an_error_reply_keeps_the_connection() -> None:
    with PrivateRedis() as server:
        handle = create_redis(RedisSettings(url=server.url, timeout=2.0))
        held = HeldConnection(handle.client, 2.0)
        try:
            assert await held.evalsha(SHA, COUNT, [b"n"], []) == 1
            clients = _clients(server)
            with pytest.raises(ResponseError):
                await held.evalsha(BROKEN_SHA, BROKEN, [], [])
            assert await held.evalsha(SHA, COUNT, [b"n"], []) == 2
            assert _clients(server) == clients  # no connection of its own opened meanwhile
        finally:
            await held.close()
            await handle.close()
