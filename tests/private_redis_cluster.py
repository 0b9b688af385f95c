"""A private Redis Cluster (3 masters) a test starts, restarts nodes of, and stops.

Each node is a ``redis-server --cluster-enabled yes`` on a free port, persistence off, in a
temp folder of its own (its ``nodes.conf`` survives a restart, so a restarted node comes back
with its slots); ``redis-cli --cluster create`` joins them. Skips (with the reason) where
redis-server or redis-cli is missing or cannot run in cluster mode.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest
import redis

__all__ = ["PrivateRedisCluster"]


def _free_port() -> int:
    # NOTE: a cluster node also listens on port + 10000 (the cluster bus): keep both free.
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def _cluster_info(reply: object) -> dict[str, str]:
    if isinstance(reply, dict):
        return {str(k): str(v) for k, v in reply.items()}
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    return dict(line.split(":", 1) for line in text.split() if ":" in line)


class PrivateRedisCluster:
    """``masters`` nodes joined into one cluster; :meth:`restart` stops and starts one."""

    def __init__(self, masters: int = 3, node_timeout_ms: int = 1000) -> None:
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if server is None or cli is None:
            pytest.skip("redis-server and redis-cli are needed for a Redis Cluster")
        self.server, self.cli = server, cli
        self.node_timeout_ms = node_timeout_ms
        self.ports = [_free_port() for _ in range(masters)]
        self.dir = tempfile.mkdtemp(prefix="cygate-redis-cluster-")
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """A URL naming the first node (the others are learned from it)."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def _start_node(self, port: int) -> None:
        folder = os.path.join(self.dir, str(port))
        os.makedirs(folder, exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [self.server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", folder, "--protected-mode", "no",
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", str(self.node_timeout_ms)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.procs[port].poll() is not None:
                pytest.skip(f"redis-server does not run in cluster mode here (port {port})")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"cluster node {port} did not start")

    def start(self) -> PrivateRedisCluster:
        try:
            return self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> PrivateRedisCluster:
        for port in self.ports:
            self._start_node(port)
        nodes = [f"127.0.0.1:{p}" for p in self.ports]
        done = subprocess.run(
            [self.cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            timeout=30,
        )
        if done.returncode != 0:
            pytest.skip(f"redis-cli --cluster create failed: {done.stderr.decode()[-200:]}")
        self.wait_ok()
        return self

    def wait_ok(self, timeout: float = 15.0) -> None:
        """Until every node says cluster_state:ok and knows every other node."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self._ok(port) for port in self.ports):
                return
            time.sleep(0.05)
        raise RuntimeError("the private Redis Cluster did not reach cluster_state:ok")

    def _ok(self, port: int) -> bool:
        try:
            with self.node(port) as c:
                info = _cluster_info(c.execute_command("CLUSTER INFO"))
                return bool(
                    info.get("cluster_state") == "ok"
                    and int(info.get("cluster_known_nodes", 0)) == len(self.ports)
                )
        except (redis.RedisError, OSError):
            return False

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.ports[0], socket_timeout=2)

    def port_of(self, key: str) -> int:
        """The port of the master that holds ``key``."""
        with self.client() as c:
            return int(c.get_node_from_key(key).port)

    def stop_node(self, port: int) -> None:
        proc = self.procs.pop(port, None)
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self, port: int) -> None:
        """Stop one node (its data is gone: persistence is off) and start it again; it rejoins
        with its slots from its nodes.conf."""
        self.stop_node(port)
        self._start_node(port)
        self.wait_ok()

    def close(self) -> None:
        for port in list(self.procs):
            self.stop_node(port)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PrivateRedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
