"""The route file: every rule that keeps a bad file from going live, with its message."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest

from cygate.edge.context import RoutePolicy
from cygate.upstream.config import (
    RouteFileError,
    address_refused,
    load_route_file,
    validate_route_file,
)
from cygate.upstream.table import ProxyPolicy, build_table


def cfg(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "upstreams": {"svc": {"targets": ["http://127.0.0.1:9"]}},
        "routes": [{"path": "/svc/{rest:path}", "upstream": "svc"}],
    }
    doc.update(over)
    return doc


def error_of(doc: dict[str, Any]) -> str:
    with pytest.raises(RouteFileError) as info:
        validate_route_file(doc)
    return str(info.value)


def test_a_good_file_validates_and_resolves() -> None:
    valid = validate_route_file(cfg())
    [target] = valid.targets["svc"]
    assert target.address == "127.0.0.1" and target.port == 9
    assert target.host_header == b"127.0.0.1:9"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (cfg(routes=[{"path": "/x", "upstream": "nope"}]), "routes[0].upstream: no upstream"),
        (cfg(routes=[{"path": "x", "upstream": "svc"}]), "must start with '/'"),
        (cfg(routes=[{"path": "/x", "upstream": "svc", "methods": ["FETCH"]}]), "not a method"),
        (cfg(routes=[{"path": "/x", "upstream": "svc", "bogus": 1}]), "unknown field"),
        (cfg(upstreams={"svc": {"targets": []}}), "at least one target"),
        (cfg(upstreams={"svc": {"targets": ["ws://127.0.0.1"]}}), "only http:// and https://"),
        (cfg(upstreams={"svc": {"targets": ["http://u:p@127.0.0.1"]}}), "must be http://host"),
        (
            cfg(upstreams={"svc": {"targets": ["http://127.0.0.1:9", "http://127.0.0.1:9"]}}),
            "listed twice",
        ),
        (
            cfg(upstreams={"svc": {"targets": ["http://127.0.0.1"], "hash_key": "cookie:x"}}),
            "hash_key",
        ),
        (
            cfg(upstreams={"svc": {"targets": ["http://127.0.0.1"], "timeouts": {"total": -1}}}),
            "upstreams.svc.timeouts.total",
        ),
        (
            cfg(
                upstreams={
                    "svc": {"targets": ["http://127.0.0.1"], "timeouts": {"read": 5, "total": 1}}
                }
            ),
            "read (5) exceeds total (1)",
        ),
        (
            cfg(
                routes=[
                    {"path": "/x", "upstream": "svc", "request_headers": {"set": {"host": "a"}}}
                ]
            ),
            "managed by the proxy",
        ),
        (
            cfg(
                routes=[{"path": "/x", "upstream": "svc", "request_headers": {"set": {"a b": "1"}}}]
            ),
            "not a valid header name",
        ),
        (
            cfg(
                routes=[
                    {"path": "/x", "upstream": "svc", "response_headers": {"set": {"x": "a\nb"}}}
                ]
            ),
            "control characters",
        ),
        (
            cfg(routes=[{"path": "/x/y", "upstream": "svc", "strip_prefix": "/z"}]),
            "not a prefix",
        ),
        (cfg(routes=[{"path": "/x", "upstream": "svc", "host": "A.example:80"}]), "host"),
        (
            cfg(routes=[{"path": "/x", "upstream": "svc"}, {"path": "/x", "upstream": "svc"}]),
            "a second route named",
        ),
        (
            cfg(routes=[{"path": "/x", "upstream": "local", "methods": ["GET"], "retries": 2}]),
            "proxy settings",
        ),
        (cfg(upstreams={"local": {"targets": ["http://127.0.0.1"]}}), "reserved"),
        ({"upstreams": [], "routes": []}, "Expected `object`"),
    ],
)
def test_bad_files_are_refused_with_the_place_named(doc: dict[str, Any], message: str) -> None:
    assert message in error_of(doc)


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest",
        "http://169.254.10.1:8080",
        "http://[fd00:ec2::254]",
        "http://[fe80::1]",
        "http://[::ffff:169.254.169.254]",
        "http://100.100.100.200",
        "http://0.0.0.0:80",
    ],
)
def test_metadata_and_link_local_targets_are_refused(url: str) -> None:
    message = error_of(cfg(upstreams={"svc": {"targets": [url]}}))
    assert "refused" in message and "allow_link_local" in message


def test_link_local_allowed_when_configured_explicitly() -> None:
    valid = validate_route_file(
        cfg(upstreams={"svc": {"targets": ["http://169.254.1.1"], "allow_link_local": True}})
    )
    assert valid.targets["svc"][0].address == "169.254.1.1"


def test_a_host_name_that_resolves_to_loopback_is_fine() -> None:
    valid = validate_route_file(cfg(upstreams={"svc": {"targets": ["http://localhost:9"]}}))
    assert address_refused(valid.targets["svc"][0].address) is None
    assert valid.targets["svc"][0].host_header == b"localhost:9"


def test_unresolvable_host_is_refused() -> None:
    assert "cannot resolve" in error_of(
        cfg(upstreams={"svc": {"targets": ["http://no-such-host.invalid"]}})
    )


def test_files_toml_and_json(tmp_path: pathlib.Path) -> None:
    toml = tmp_path / "routes.toml"
    toml.write_text(
        '[upstreams.svc]\ntargets = ["http://127.0.0.1:9"]\n'
        '[[routes]]\npath = "/a"\nupstream = "svc"\nmethods = ["GET"]\n'
    )
    assert load_route_file(toml).config.routes[0].path == "/a"
    js = tmp_path / "routes.json"
    js.write_text(json.dumps(cfg()))
    assert load_route_file(js).digest
    bad = tmp_path / "bad.toml"
    bad.write_text("[upstreams.svc\n")
    with pytest.raises(RouteFileError, match="not valid TOML"):
        load_route_file(bad)
    with pytest.raises(RouteFileError, match="cannot read"):
        load_route_file(tmp_path / "missing.json")


def test_table_conflicts_and_local_overrides() -> None:
    local = [(None, "GET", "/api/v1/items", RoutePolicy(name="GET /api/v1/items"))]
    doc = cfg(
        routes=[
            {"path": "/api/v1/items", "upstream": "local", "methods": ["GET"], "rate_limit": "x"},
            {"path": "/svc/{rest:path}", "upstream": "svc", "methods": ["GET", "POST"]},
        ]
    )
    table = build_table(local, validate_route_file(doc), max_body=100)
    match = table.router.match("GET", "/api/v1/items")
    assert match.value.rate_limit == "x" and match.value.target == "local"
    proxied = table.router.match("POST", "/svc/a/b").value
    assert isinstance(proxied, ProxyPolicy) and proxied.target == "svc"
    assert proxied.proxy.upstream is table.upstreams["svc"]
    assert table.router.match("GET", "/nothing").value is None

    with pytest.raises(RouteFileError, match="no local route"):
        build_table(
            local,
            validate_route_file(
                cfg(routes=[{"path": "/other", "upstream": "local", "methods": ["GET"]}])
            ),
            max_body=100,
        )
    with pytest.raises(RouteFileError, match=r"routes\[0\]"):
        build_table(
            local,
            validate_route_file(
                cfg(routes=[{"path": "/api/v1/items", "upstream": "svc", "methods": ["GET"]}])
            ),
            max_body=100,
        )


def test_unchanged_upstreams_survive_a_rebuild() -> None:
    valid = validate_route_file(cfg())
    first = build_table([], valid, max_body=1)
    second = build_table([], validate_route_file(cfg()), max_body=1, previous=first)
    assert second.upstreams["svc"] is first.upstreams["svc"]
    assert second.version == 2
    changed = cfg(
        upstreams={"svc": {"targets": ["http://127.0.0.1:9"], "balance": "least_outstanding"}}
    )
    third = build_table([], validate_route_file(changed), max_body=1, previous=second)
    assert third.upstreams["svc"] is not second.upstreams["svc"]
