"""The proxy in a real gateway process (Granian) in front of real upstream servers: the route
file, reloads (bad file kept out, good file live without dropping requests in flight, SIGHUP),
``/admin/routes``, metrics summed over workers, and a 200 MB body each way in bounded memory."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tests.acceptance.conftest import Gateway, admin_headers, start_gateway, stop_gateway
from tests.conftest import SUITE_RATE_LIMITS
from tests.upstream_servers import Upstream, running_upstreams

pytestmark = pytest.mark.acceptance


def route_doc(a: Upstream, b: Upstream, *, extra_route: bool = False) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "upstreams": {
            "svc": {
                "targets": [a.url, b.url],
                "timeouts": {"total": 30},
                "breaker": {"failure_threshold": 3, "open_seconds": 30},
                "retry": {"attempts": 0},
                "outlier": {"consecutive_failures": 1000},
            },
        },
        "routes": [
            {"path": "/svc/{rest:path}", "upstream": "svc", "strip_prefix": "/svc",
             "max_body_bytes": 300_000_000},
        ],
    }  # fmt: skip
    if extra_route:
        doc["routes"].append(
            {"path": "/new/{rest:path}", "upstream": "svc", "strip_prefix": "/new"}
        )
    return doc


def write(path: pathlib.Path, doc: dict[str, Any] | str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    os.replace(tmp, path)  # NOTE: what an operator's editor or config tool does: atomic


@pytest.fixture(scope="module")
def ups() -> Iterator[list[Upstream]]:
    with running_upstreams("a", "b") as servers:
        yield servers


@pytest.fixture(scope="module")
def proxy_gw(
    gateway_env: dict[str, str], ups: list[Upstream], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, pathlib.Path]]:
    path = tmp_path_factory.mktemp("routes") / "routes.json"
    write(path, route_doc(*ups))
    gw = start_gateway(
        gateway_env,
        workers=2,
        extra_env={"CYGATE_ROUTES_FILE": str(path), "CYGATE_ROUTES_RELOAD_INTERVAL": "0.2"},
    )
    try:
        yield gw, path
    finally:
        output = stop_gateway(gw)
        assert "Traceback" not in output, output


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_proxied_request_and_admin_view(proxy_gw: tuple[Gateway, pathlib.Path]) -> None:
    gw, _ = proxy_gw
    with gw.client() as c:
        r = c.get("/svc/echo", params={"q": "1"})
        assert r.status_code == 200 and r.json()["target"] == "/echo?q=1"
        assert r.headers["x-request-id"] and "x-hop" not in r.headers
        missing = c.get("/nothing/here")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        view = c.get("/admin/routes", headers=admin_headers(gw)).json()
        assert view["upstreams"]["svc"]["circuit"]["state"] == "closed"
        assert [t["url"] for t in view["upstreams"]["svc"]["targets"]] == [
            u["url"] for u in view["upstreams"]["svc"]["targets"]
        ]
        names = {r["name"] for r in view["routes"]}
        assert "* /svc/{rest:path}" in names and "GET /api/v1/products/{product_id:uuid}" in names
        assert view["last_reload_error"] is None


def test_admin_routes_carries_the_admin_policy(proxy_gw: tuple[Gateway, pathlib.Path]) -> None:
    """The route asks the edge's token stage for an admin (loopback-only is tested in
    tests/unit/upstream/test_admin.py: every peer of this process is loopback)."""
    gw, _ = proxy_gw
    with gw.client() as c:
        assert c.get("/admin/routes").status_code == 401  # the token stage enforces it
        view = c.get("/admin/routes", headers=admin_headers(gw)).json()
    entry = next(r for r in view["routes"] if r["path"] == "/admin/routes")
    assert entry["auth"] is True and entry["roles"] == ["admin"]


def _raw_get(port: int, target: bytes, host: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(
            b"GET " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data.split(b"\r\n\r\n", 1)[1]


def test_absolute_form_target_never_picks_an_upstream(
    proxy_gw: tuple[Gateway, pathlib.Path], ups: list[Upstream]
) -> None:
    gw, _ = proxy_gw
    port = int(gw.url.rsplit(":", 1)[1])
    before = sum(u.requests for u in ups)
    status, _ = _raw_get(port, b"http://169.254.169.254/latest/meta-data", b"169.254.169.254")
    assert status == 404  # no route for the path: answered by the gateway, nothing forwarded
    assert sum(u.requests for u in ups) == before
    # The authority in the target is ignored: the path picks a configured route, which goes
    # to a configured target with that target's own Host.
    status, body = _raw_get(port, b"http://evil.example/svc/echo", b"evil.example")
    assert status == 200
    doc = json.loads(body)
    assert doc["server"] in ("a", "b")
    sent = dict(doc["headers"])
    assert sent["host"] in {u.url.removeprefix("http://") for u in ups}


def test_metrics_are_summed_over_workers(proxy_gw: tuple[Gateway, pathlib.Path]) -> None:
    gw, _ = proxy_gw
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        for _ in range(40):  # new connections: spread over both workers
            assert httpx.get(gw.url + "/svc/echo").status_code == 200

        def counted() -> bool:
            text = c.get("/metrics").text
            line = next(
                (ln for ln in text.splitlines()
                 if ln.startswith('cygate_upstream_requests_total{upstream="svc"')
                 and 'outcome="ok"' in ln),
                "",
            )  # fmt: skip
            return bool(line) and int(line.rsplit(" ", 1)[1]) >= 40

        wait_for(counted, timeout=5)


def test_reload_bad_file_keeps_old_table_good_file_goes_live_without_dropping(
    proxy_gw: tuple[Gateway, pathlib.Path], ups: list[Upstream]
) -> None:
    gw, path = proxy_gw
    c = gw.client(headers=admin_headers(gw))
    version = c.get("/admin/routes").json()["version"]
    assert c.get("/new/echo").status_code == 404

    # 1. a broken file: the old table keeps serving, and the reason is shown
    write(path, "{ this is not json")
    wait_for(lambda: c.get("/admin/routes").json()["last_reload_error"] is not None)
    assert "not valid JSON" in c.get("/admin/routes").json()["last_reload_error"]
    assert c.get("/svc/echo").status_code == 200
    # a file that parses but is wrong (a metadata address) is refused the same way
    bad = route_doc(*ups, extra_route=True)
    bad["upstreams"]["svc"]["targets"].append("http://169.254.169.254")
    write(path, bad)
    wait_for(
        lambda: "169.254.169.254" in (c.get("/admin/routes").json()["last_reload_error"] or "")
    )
    assert c.get("/new/echo").status_code == 404
    assert c.get("/svc/echo").status_code == 200

    # 2. a good file while slow requests are in flight: they finish, the new route is live
    results: list[int] = []

    def slow() -> None:
        with httpx.Client(base_url=gw.url, timeout=20) as own:
            results.append(own.get("/svc/slow/1500").status_code)

    threads = [threading.Thread(target=slow) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    write(path, route_doc(*ups, extra_route=True))
    wait_for(lambda: c.get("/new/echo").status_code == 200)
    for t in threads:
        t.join(20)
    assert results == [200, 200, 200, 200]
    view = c.get("/admin/routes").json()
    assert view["version"] > version and view["last_reload_error"] is None
    # both workers have the new table
    for _ in range(20):
        assert httpx.get(gw.url + "/new/echo").status_code == 200
    write(path, route_doc(*ups))
    wait_for(lambda: c.get("/new/echo").status_code == 404)
    c.close()


def test_sighup_reloads_when_polling_is_off(
    gateway_env: dict[str, str], ups: list[Upstream], tmp_path: pathlib.Path
) -> None:
    path = tmp_path / "routes.toml"
    path.write_text(
        f'[upstreams.svc]\ntargets = ["{ups[0].url}"]\n'
        '[[routes]]\npath = "/one/{rest:path}"\nupstream = "svc"\nstrip_prefix = "/one"\n'
    )
    gw = start_gateway(
        gateway_env,
        workers=1,
        extra_env={"CYGATE_ROUTES_FILE": str(path), "CYGATE_ROUTES_RELOAD_INTERVAL": "0"},
    )
    try:
        with gw.client() as c:
            assert c.get("/one/echo").status_code == 200
            path.write_text(path.read_text().replace("/one", "/two"))
            time.sleep(0.5)
            assert c.get("/two/echo").status_code == 404  # no polling: nothing yet
            os.kill(gw.proc.pid, signal.SIGHUP)
            wait_for(lambda: c.get("/two/echo").status_code == 200)
            assert c.get("/one/echo").status_code == 404
    finally:
        output = stop_gateway(gw)
    assert "Traceback" not in output, output


def test_a_reload_applies_the_routes_rate_limits(
    gateway_env: dict[str, str], ups: list[Upstream], tmp_path: pathlib.Path
) -> None:
    """A rate-limit class that a reloaded file gives a route applies at once, and a reload that
    keeps it keeps the quota used; a file naming an unknown class is refused (the old table,
    and its limit, stay); taking the class away lifts the limit. (Plans were once made at
    start-up only.)"""
    path = tmp_path / "routes.toml"
    route = '[[routes]]\npath = "/one/{rest:path}"\nupstream = "svc"\nstrip_prefix = "/one"\n'
    head = f'[upstreams.svc]\ntargets = ["{ups[0].url}"]\n'
    path.write_text(head + route)
    gw = start_gateway(
        gateway_env,
        workers=1,
        extra_env={
            "CYGATE_ROUTES_FILE": str(path),
            "CYGATE_ROUTES_RELOAD_INTERVAL": "0",
            "CYGATE_RATE_LIMITS": json.dumps(
                {**SUITE_RATE_LIMITS, "tight": {"rate": 5, "period": 600, "mode": "local"}}
            ),
            # the route starts with no limit at all: not even the default one
            "CYGATE_RATE_LIMIT_DEFAULT_CLASS": "",
        },
    )

    def reload(text: str) -> None:
        path.write_text(text)
        os.kill(gw.proc.pid, signal.SIGHUP)

    try:
        with gw.client() as c, gw.client(headers=admin_headers(gw)) as admin:
            first = c.get("/one/echo")
            assert first.status_code == 200 and "ratelimit-limit" not in first.headers
            reload(head + route + 'rate_limit = "tight"\n')
            wait_for(lambda: "ratelimit-limit" in c.get("/one/echo").headers)
            codes = [c.get("/one/echo").status_code for _ in range(8)]
            assert codes.count(429) >= 4 and codes[-1] == 429, codes  # 5 per 600 s, one key
            refused = c.get("/one/echo")
            assert refused.headers["content-type"].startswith("application/problem+json")

            # a reload that keeps the class keeps the quota used so far (no reset)
            two = route.replace("/one", "/two")
            reload(head + route + 'rate_limit = "tight"\n' + two)
            wait_for(lambda: c.get("/two/echo").status_code == 200)
            assert c.get("/one/echo").status_code == 429

            reload(head + route + 'rate_limit = "nope"\n')
            wait_for(
                lambda: "nope" in (admin.get("/admin/routes").json()["last_reload_error"] or "")
            )
            assert c.get("/one/echo").status_code == 429  # the old table and its limit stay

            reload(head + route)
            wait_for(lambda: c.get("/one/echo").status_code == 200)
            assert "ratelimit-limit" not in c.get("/one/echo").headers
    finally:
        output = stop_gateway(gw)
    assert "Traceback" not in output, output


def test_bad_route_file_stops_the_start_with_a_clear_message(
    gateway_env: dict[str, str], tmp_path: pathlib.Path
) -> None:
    path = tmp_path / "routes.json"
    path.write_text(json.dumps({"upstreams": {"m": {"targets": ["http://169.254.169.254"]}}}))
    with pytest.raises(RuntimeError) as info:
        start_gateway(gateway_env, workers=1, extra_env={"CYGATE_ROUTES_FILE": str(path)})
    assert "invalid route file" in str(info.value) and "metadata" in str(info.value)


def _tree_peak_rss_kib(pid: int) -> dict[int, int]:
    """VmHWM (peak resident set) of the process and its children, by pid."""
    out = {}
    pids = [pid]
    children = pathlib.Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        for line in pathlib.Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                out[p] = int(line.split()[1])
    return out


def test_200_mb_each_way_streams_in_bounded_memory(
    gateway_env: dict[str, str], ups: list[Upstream], tmp_path: pathlib.Path
) -> None:
    path = tmp_path / "routes.json"
    write(path, route_doc(*ups))
    gw = start_gateway(gateway_env, workers=1, extra_env={"CYGATE_ROUTES_FILE": str(path)})
    size = 200 * 1024 * 1024
    try:
        with gw.client() as c:
            c.get("/svc/echo")
            before = _tree_peak_rss_kib(gw.proc.pid)
            got = 0
            t0 = time.perf_counter()
            with c.stream("GET", f"/svc/big/{size}", timeout=120) as r:
                assert r.status_code == 200 and r.headers["content-length"] == str(size)
                for chunk in r.iter_raw(1 << 20):
                    got += len(chunk)
            down_s = time.perf_counter() - t0
            assert got == size

            block = os.urandom(1 << 20)
            digest = hashlib.sha256()

            def body() -> Iterator[bytes]:
                for _ in range(200):
                    digest.update(block)
                    yield block

            t0 = time.perf_counter()
            r = c.put("/svc/upload", content=body(), timeout=120)
            up_s = time.perf_counter() - t0
            assert r.status_code == 200, r.text
            assert r.json()["body_size"] == size
            assert r.json()["body_sha256"] == digest.hexdigest()
            after = _tree_peak_rss_kib(gw.proc.pid)
        growth_mib = max(after[p] - before.get(p, after[p]) for p in after) / 1024
        print(
            f"\n200 MiB down in {down_s:.2f} s, up in {up_s:.2f} s; "
            f"peak RSS growth of the gateway's processes: {growth_mib:.1f} MiB "
            f"(peaks after, KiB: {after})"
        )
        assert growth_mib < 48, f"peak RSS grew by {growth_mib:.1f} MiB"
    finally:
        output = stop_gateway(gw)
    assert "Traceback" not in output, output
