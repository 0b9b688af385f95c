"""The Redis Cluster settings and node lists, without a server (a cluster is in
tests/integration/test_redis_cluster_stores.py; ``cygate serve``'s one-line start-up errors in
tests/acceptance/test_redis_cluster_gateways.py)."""

from __future__ import annotations

import socket
import time

import pytest

from cygate.infra.redis import check_cluster, cluster_nodes, create_redis
from cygate.settings import SettingsError, load_settings


def test_cluster_is_off_by_default_and_a_boolean() -> None:
    assert load_settings({}).redis.cluster is False
    for text, value in (("true", True), ("false", False), ("1", True), ("0", False)):
        assert load_settings({"CYGATE_REDIS_CLUSTER": text}).redis.cluster is value
    for bad in ("maybe", "yes please", ""):
        with pytest.raises(SettingsError) as err:
            load_settings({"CYGATE_REDIS_CLUSTER": bad})
        assert "redis_cluster (CYGATE_REDIS_CLUSTER=" in str(err.value)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"CYGATE_REDIS_URL": "redis://127.0.0.1:7000,127.0.0.1:7001/0"},
         "several nodes in redis_url need redis_cluster=true"),
        ({"CYGATE_REDIS_CLUSTER": "true", "CYGATE_REDIS_URL": "unix:///tmp/redis.sock"},
         "redis_cluster needs a redis:// or rediss:// redis_url"),
    ],
)  # fmt: skip
def test_url_and_cluster_must_agree(env: dict[str, str], expected: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(env)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_node_lists() -> None:
    assert cluster_nodes("redis://10.0.0.5:7000/0") == [("10.0.0.5", 7000)]
    assert cluster_nodes("rediss://u:p%40w@a:7000, b:7001/0") == [("a", 7000), ("b", 7001)]
    assert cluster_nodes("redis://redis-0.redis/0") == [("redis-0.redis", 6379)]
    assert cluster_nodes("redis://[::1]:7000") == [("::1", 7000)]
    for bad in ("redis://a:notaport/0", "redis://a:0/0", "redis://,/0", "unix:///x"):
        with pytest.raises(ValueError, match=r"node|unix"):
            cluster_nodes(bad)


def test_the_cluster_client_keeps_credentials_and_timeouts() -> None:
    settings = load_settings(
        {"CYGATE_REDIS_CLUSTER": "true", "CYGATE_REDIS_URL": "redis://app:s%3Acret@a:7000,b:7001/0"}
    ).redis
    handle = create_redis(settings)
    assert handle.cluster
    nodes = list(handle.client.nodes_manager.startup_nodes.values())  # type: ignore[union-attr]
    assert {(n.host, n.port) for n in nodes} == {("a", 7000), ("b", 7001)}
    kwargs = nodes[0].connection_kwargs
    assert (kwargs["username"], kwargs["password"]) == ("app", "s:cret")
    assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == settings.timeout
    assert not create_redis(load_settings({}).redis).cluster


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_check_cluster_names_every_dead_node_quickly() -> None:
    ports = [_dead_port(), _dead_port()]
    url = f"redis://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}/0"
    start = time.monotonic()
    error = check_cluster(load_settings({"CYGATE_REDIS_CLUSTER": "true",
                                         "CYGATE_REDIS_URL": url}).redis)  # fmt: skip
    assert error is not None and error.startswith("redis_cluster: no node of redis_url answers")
    assert all(f"127.0.0.1:{p} (ConnectionError)" in error for p in ports)
    assert time.monotonic() - start < 5
    assert check_cluster(load_settings({"CYGATE_REDIS_URL": url.split(",")[0]}).redis) is None


def test_check_cluster_bounds_a_node_that_never_answers() -> None:
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        settings = load_settings({"CYGATE_REDIS_CLUSTER": "true", "CYGATE_REDIS_TIMEOUT": "0.2",
                                  "CYGATE_REDIS_URL": f"redis://127.0.0.1:{port}/0"})  # fmt: skip
        start = time.monotonic()
        error = check_cluster(settings.redis)
        took = time.monotonic() - start
    assert error is not None and f"127.0.0.1:{port} (TimeoutError)" in error
    assert took < 3  # at least a second per node (redis_timeout is raised to 1 s here)
