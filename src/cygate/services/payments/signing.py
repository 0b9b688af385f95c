"""Webhook signatures shared by the gateway (verifies) and the processor simulator (signs).

``Cygate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``. Binding the
timestamp into the MAC lets the receiver refuse replays of old deliveries (stale ``t``) without
keeping every body it ever saw; several ``v1=`` values may be sent during a secret rotation.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import pathlib
import secrets

__all__ = ["SIGNATURE_HEADER", "SignatureError", "load_secret", "sign", "verify"]

SIGNATURE_HEADER = "cygate-signature"


class SignatureError(Exception):
    """The signature header is missing, malformed, wrong, or its timestamp is stale."""


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """The header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: bytes, body: bytes, header: str | None, *, now: float, tolerance: int) -> int:
    """Check ``header`` for ``body``; returns its timestamp or raises :class:`SignatureError`."""
    if not header:
        raise SignatureError("missing signature")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if name == "t" and value.isdigit() and len(value) <= 12:
            timestamp = int(value)
        elif name == "v1" and len(value) == 64:
            candidates.append(value)
    if timestamp is None or not candidates:
        raise SignatureError("malformed signature")
    expected = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    # NOTE: compare_digest on every candidate: the time taken does not say which one matched.
    if not any(hmac.compare_digest(expected, c) for c in candidates):
        raise SignatureError("signature does not match")
    if abs(now - timestamp) > tolerance:
        raise SignatureError("stale timestamp")
    return timestamp


def load_secret(value: str, path: str) -> bytes:
    """``value`` when set, else the secret in ``path``, created with a random one at first use.

    The gateway (every worker) and the simulator started by ``make run`` read the same file,
    so they agree without the secret ever being written into the repository or a command line.
    """
    if value:
        return value.encode("utf-8")
    file = pathlib.Path(path)
    if not file.exists():
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
        tmp.write_text(secrets.token_urlsafe(32) + "\n")
        tmp.chmod(0o600)
        # NOTE: link() fails when another process won the race; its secret is then the one.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, file)
        tmp.unlink()
    secret = file.read_text().strip()
    if not secret:
        raise ValueError(f"the webhook secret file {file} is empty")
    return secret.encode("utf-8")
