"""``https://`` upstream targets: the proxy verifies the target's certificate (the upstream's
``tls.ca_file`` or the system's CAs) for the target's host or the pinned ``server_name``, shows
its client certificate when the target asks (mutual TLS), keeps connections alive, and answers a
failed verification with a 502 problem and a log line, never by falling back to plain HTTP.

The servers are real (asyncio + ssl on loopback); ``trustme`` makes the certificates.
"""

from __future__ import annotations

import datetime
import logging
import pathlib
import ssl
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trustme
from proxy_harness import call, close_table, make_edge

from cygate.upstream.config import RouteFileError, validate_route_file
from upstream_servers import Upstream


class Pki:
    """A CA, the upstream's certificate (127.0.0.1 and svc.internal) and a client
    certificate, as PEM files under ``root``."""

    def __init__(self, root: pathlib.Path) -> None:
        self.ca = trustme.CA()
        self.ca_file = root / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.server = self.ca.issue_cert("127.0.0.1", "svc.internal")
        client = self.ca.issue_cert("gateway@cygate.test")
        self.client_cert = root / "client.pem"
        self.client_key = root / "client-key.pem"
        client.cert_chain_pems[0].write_to_path(str(self.client_cert))
        client.private_key_pem.write_to_path(str(self.client_key))
        other = trustme.CA()
        self.other_ca_file = root / "other-ca.pem"
        other.cert_pem.write_to_path(str(self.other_ca_file))

    def server_context(self, *, require_client_cert: bool) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server.configure_cert(ctx)
        if require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            self.ca.configure_trust(ctx)
        return ctx


@pytest.fixture
def pki(tmp_path: pathlib.Path) -> Pki:
    return Pki(tmp_path)


@pytest.fixture
async def mtls_server(pki: Pki) -> AsyncIterator[Upstream]:
    """An https upstream that refuses a client without a certificate from the test CA."""
    server = await Upstream("tls").start(tls=pki.server_context(require_client_cert=True))
    try:
        yield server
    finally:
        await server.stop()


def _config(url: str, tls: dict[str, Any] | None) -> dict[str, Any]:
    upstream: dict[str, Any] = {"targets": [url], "retry": {"attempts": 0}}
    if tls is not None:
        upstream["tls"] = tls
    return {
        "upstreams": {"svc": upstream},
        "routes": [{"path": "/svc/{rest:path}", "upstream": "svc", "strip_prefix": "/svc"}],
    }


def _mtls(pki: Pki, **more: Any) -> dict[str, Any]:
    return {
        "ca_file": str(pki.ca_file),
        "cert_file": str(pki.client_cert),
        "key_file": str(pki.client_key),
        **more,
    }


async def test_mutual_tls_to_an_https_upstream_with_keep_alive(
    pki: Pki, mtls_server: Upstream
) -> None:
    edge, table = make_edge(_config(mtls_server.url, _mtls(pki)))
    try:
        for _ in range(3):
            r = await call(edge, "GET", "/svc/echo/x")
            assert r.status == 200, r.body
            assert r.json()["target"] == "/echo/x"
        assert mtls_server.connections == 1  # one TLS connection, kept alive
        # The proxy showed its client certificate.
        names = mtls_server.peer_certs[0].get("subjectAltName", ())
        assert ("email", "gateway@cygate.test") in names, mtls_server.peer_certs
        headers = {k: v for k, v in r.json()["headers"]}
        assert headers["host"] == mtls_server.url.removeprefix("https://")
    finally:
        await close_table(table)


async def test_a_pinned_server_name_is_sent_and_verified(pki: Pki, mtls_server: Upstream) -> None:
    tls = _mtls(pki, server_name="svc.internal")
    edge, table = make_edge(_config(mtls_server.url, tls))
    try:
        r = await call(edge, "GET", "/svc/echo")
        assert r.status == 200, r.body
    finally:
        await close_table(table)
    edge, table = make_edge(_config(mtls_server.url, _mtls(pki, server_name="other.internal")))
    try:
        r = await call(edge, "GET", "/svc/echo")
        assert r.status == 502
        assert r.json()["detail"] == "upstream 'svc' failed: tls"
    finally:
        await close_table(table)


async def test_a_wrong_ca_is_a_502_problem_and_a_log_line_never_plain_http(
    pki: Pki, mtls_server: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    tls = _mtls(pki, ca_file=str(pki.other_ca_file))
    edge, table = make_edge(_config(mtls_server.url, tls))
    try:
        with caplog.at_level(logging.WARNING, logger="cygate.proxy"):
            r = await call(edge, "GET", "/svc/echo")
        assert r.status == 502
        assert r.header(b"content-type") == b"application/problem+json"
        assert r.json()["detail"] == "upstream 'svc' failed: tls"
        lines = [rec.getMessage() for rec in caplog.records if rec.name == "cygate.proxy"]
        assert any("certificate not verified" in line for line in lines), lines
        assert mtls_server.requests == 0  # nothing was sent, in the clear or otherwise
    finally:
        await close_table(table)


async def test_the_system_store_does_not_trust_a_private_ca(mtls_server: Upstream) -> None:
    edge, table = make_edge(_config(mtls_server.url, None))
    try:
        r = await call(edge, "GET", "/svc/echo")
        assert r.status == 502 and r.json()["detail"] == "upstream 'svc' failed: tls"
        assert mtls_server.requests == 0
    finally:
        await close_table(table)


async def test_no_client_certificate_is_refused_by_the_upstream(
    pki: Pki, mtls_server: Upstream
) -> None:
    edge, table = make_edge(_config(mtls_server.url, {"ca_file": str(pki.ca_file)}))
    try:
        r = await call(edge, "GET", "/svc/echo")
        # TLS 1.3: the server's refusal arrives after the handshake, as the connection closes.
        assert r.status == 502, r.body
        assert mtls_server.requests == 0
    finally:
        await close_table(table)


def test_route_file_checks_for_tls(pki: Pki, tmp_path: pathlib.Path) -> None:
    def error(config: dict[str, Any]) -> str:
        with pytest.raises(RouteFileError) as exc:
            validate_route_file(config)
        return str(exc.value)

    assert "tls: set, but no target is https://" in error(
        _config("http://127.0.0.1:9", {"ca_file": str(pki.ca_file)})
    )
    assert "upstreams.svc.tls: cannot load ca_file" in error(
        _config("https://127.0.0.1:9", {"ca_file": str(tmp_path / "missing.pem")})
    )
    assert "cert_file and key_file go together" in error(
        _config("https://127.0.0.1:9", {"cert_file": str(pki.client_cert)})
    )
    assert "cannot load cert_file" in error(
        _config(
            "https://127.0.0.1:9",
            {"cert_file": str(pki.client_cert), "key_file": str(pki.ca_file)},
        )
    )
    assert "only http:// and https://" in error(_config("ftp://127.0.0.1:9", None))
    valid = validate_route_file(_config("https://127.0.0.1", None))
    target = valid.targets["svc"][0]
    assert (target.port, target.server_name, target.url) == (443, "127.0.0.1", "https://127.0.0.1")
    plain = validate_route_file(_config("http://127.0.0.1", None)).targets["svc"][0]
    assert plain.server_name is None and plain.port == 80


@pytest.mark.parametrize("kind", ["expired", "self-signed"])
async def test_an_expired_or_self_signed_upstream_certificate_is_a_502_never_plain_http(
    pki: Pki, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The upstream shows a certificate that is out of date (issued by the trusted CA) or signed
    by itself: verification fails, the client gets the 502 problem, nothing is sent."""
    now = datetime.datetime.now(datetime.UTC)
    if kind == "expired":
        leaf = pki.ca.issue_cert(
            "127.0.0.1",
            not_before=now - datetime.timedelta(days=30),
            not_after=now - datetime.timedelta(days=1),
        )
    else:
        leaf = trustme.CA().issue_cert("127.0.0.1")  # its own, untrusted chain
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(ctx)
    server = await Upstream("tls").start(tls=ctx)
    edge, table = make_edge(_config(server.url, {"ca_file": str(pki.ca_file)}))
    try:
        with caplog.at_level(logging.WARNING, logger="cygate.proxy"):
            r = await call(edge, "GET", "/svc/echo")
        assert r.status == 502, r.body
        assert r.header(b"content-type") == b"application/problem+json"
        assert r.json()["detail"] == "upstream 'svc' failed: tls"
        lines = [rec.getMessage() for rec in caplog.records if rec.name == "cygate.proxy"]
        expected = "expired" if kind == "expired" else "certificate not verified"
        assert any(expected in line for line in lines), lines
        assert server.requests == 0
    finally:
        await close_table(table)
        await server.stop()
