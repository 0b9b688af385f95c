"""The client address: the socket peer unless it is a trusted proxy; spoofing never works."""

from __future__ import annotations

import pytest

from cygate.edge.context import TrustedProxies

TRUSTED = TrustedProxies(["10.0.0.1", "192.168.0.0/16", "::1"])


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        ("203.0.113.9", None, "203.0.113.9"),
        ("203.0.113.9", b"1.2.3.4", "203.0.113.9"),  # untrusted peer: header ignored
        ("10.0.0.1", b"1.2.3.4", "1.2.3.4"),
        ("10.0.0.1", b"6.6.6.6, 1.2.3.4", "1.2.3.4"),  # the client prepended a lie
        ("10.0.0.1", b"1.2.3.4, 192.168.5.5", "1.2.3.4"),  # a chain of trusted proxies
        ("192.168.1.2", b"1.2.3.4", "1.2.3.4"),  # trusted by network
        ("10.0.0.1", b"not-an-ip", "10.0.0.1"),
        ("10.0.0.1", b"", "10.0.0.1"),
        ("10.0.0.1", b"10.0.0.1, 192.168.0.9", "10.0.0.1"),  # only proxies: the peer
        ("::1", b"2001:db8::1", "2001:db8::1"),
        ("10.0.0.2", b"1.2.3.4", "10.0.0.2"),
    ],
)
def test_client_ip(peer: str, xff: bytes | None, expected: str) -> None:
    assert TRUSTED.client_ip(peer, xff) == expected


def test_empty_trusts_nobody() -> None:
    none = TrustedProxies()
    assert not none
    assert none.client_ip("10.0.0.1", b"1.2.3.4") == "10.0.0.1"
