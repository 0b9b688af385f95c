"""Helpers for the identity tests: PEM files of test keys, RFC 7638 thumbprints (written here
independently of cygate's), and a real HTTP server that plays an identity provider's JWKS
endpoint (and records every request it gets)."""

from __future__ import annotations

import base64
import hashlib
import json
import pathlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

__all__ = ["JWKSServer", "jwk", "pem_private", "pem_public", "thumbprint"]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _uint(value: int) -> str:
    return _b64(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def jwk(public: Any, kid: str | None = None, alg: str | None = None) -> dict[str, str]:
    """The public JWK of a key (RFC 7517/7518/8037)."""
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        out = {"kty": "OKP", "crv": "Ed25519", "x": _b64(raw)}
    elif isinstance(public, ec.EllipticCurvePublicKey):
        n = public.public_numbers()
        out = {
            "kty": "EC",
            "crv": "P-256",
            "x": _b64(n.x.to_bytes(32, "big")),
            "y": _b64(n.y.to_bytes(32, "big")),
        }
    else:
        assert isinstance(public, rsa.RSAPublicKey)
        n = public.public_numbers()
        out = {"kty": "RSA", "n": _uint(n.n), "e": _uint(n.e)}
    if kid is not None:
        out["kid"] = kid
    if alg is not None:
        out["alg"] = alg
    return out


def thumbprint(public: Any) -> str:
    """RFC 7638: SHA-256 over the required members, sorted, no whitespace."""
    members = {"OKP": ("crv", "kty", "x"), "EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n")}
    key = jwk(public)
    required = {name: key[name] for name in members[key["kty"]]}
    text = json.dumps(required, separators=(",", ":"), sort_keys=True)
    return _b64(hashlib.sha256(text.encode()).digest())


def pem_private(key: Any, path: pathlib.Path) -> str:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(path)


def pem_public(key: Any, path: pathlib.Path) -> str:
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return str(path)


class JWKSServer:
    """A real HTTP server on a free port: ``GET /jwks.json`` answers ``self.body`` with
    ``self.status``; every request's path is recorded in ``self.requests``."""

    def __init__(self) -> None:
        self.body: bytes = b'{"keys": []}'
        self.status = 200
        self.requests: list[str] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    server.requests.append(self.path)
                    status, body = server.status, server.body
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def set_keys(self, *keys: dict[str, str]) -> None:
        with self._lock:
            self.body = json.dumps({"keys": list(keys)}).encode()
            self.status = 200

    def fetches(self) -> int:
        with self._lock:
            return sum(1 for p in self.requests if p.startswith("/jwks.json"))

    @contextmanager
    def running(self) -> Iterator[JWKSServer]:
        self._thread.start()
        try:
            yield self
        finally:
            self._httpd.shutdown()
            self._httpd.server_close()
