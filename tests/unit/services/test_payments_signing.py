"""Webhook signatures (``cygate.services.payments.signing``), checked against an HMAC computed
here independently, and the payments settings rules."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from cygate.services.payments.signing import SignatureError, load_secret, sign, verify
from cygate.settings import SettingsError, load_settings

SECRET = b"s3cret"
BODY = b'{"id":"evt_1"}'
NOW = 1_800_000_000


def _mac(secret: bytes, ts: int, body: bytes) -> str:
    return hmac.new(secret, f"{ts}.".encode() + body, hashlib.sha256).hexdigest()


def test_sign_is_hmac_sha256_over_timestamp_dot_body() -> None:
    assert sign(SECRET, BODY, NOW) == f"t={NOW},v1={_mac(SECRET, NOW, BODY)}"


def test_verify_accepts_a_good_signature_and_returns_its_time() -> None:
    assert verify(SECRET, BODY, sign(SECRET, BODY, NOW), now=NOW + 299, tolerance=300) == NOW


def test_verify_accepts_any_of_several_v1_values() -> None:
    header = f"t={NOW},v1={'0' * 64},v1={_mac(SECRET, NOW, BODY)}"
    assert verify(SECRET, BODY, header, now=NOW, tolerance=300) == NOW


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing"),
        ("", "missing"),
        ("v1=" + "a" * 64, "malformed"),
        (f"t={NOW}", "malformed"),
        (f"t=abc,v1={'a' * 64}", "malformed"),
        (f"t={NOW},v1=short", "malformed"),
        (f"t={NOW},v1={'a' * 64}", "does not match"),
        (f"t={NOW + 1},v1={_mac(SECRET, NOW, BODY)}", "does not match"),  # time not bound
        (f"t={NOW},v1={_mac(b'other', NOW, BODY)}", "does not match"),
        (f"t={NOW},v1={_mac(SECRET, NOW, BODY + b' ')}", "does not match"),
    ],
)
def test_verify_refuses(header: str | None, reason: str) -> None:
    with pytest.raises(SignatureError, match=reason):
        verify(SECRET, BODY, header, now=NOW, tolerance=300)


@pytest.mark.parametrize("skew", [-301, 301, -10_000])
def test_verify_refuses_stale_and_future_timestamps(skew: int) -> None:
    header = sign(SECRET, BODY, NOW + skew)
    with pytest.raises(SignatureError, match="stale"):
        verify(SECRET, BODY, header, now=NOW, tolerance=300)


def test_load_secret_prefers_the_value_then_creates_the_file_once(tmp_path: Path) -> None:
    assert load_secret("given", str(tmp_path / "unused")) == b"given"
    assert not (tmp_path / "unused").exists()
    path = str(tmp_path / "dir" / "secret")
    first = load_secret("", path)
    assert len(first) >= 32
    assert load_secret("", path) == first  # the gateway and the simulator agree
    assert (tmp_path / "dir" / "secret").stat().st_mode & 0o777 == 0o600


def test_load_secret_refuses_an_empty_file(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        load_secret("", str(tmp_path / "secret"))


def test_fault_is_only_honoured_in_test() -> None:
    with pytest.raises(SettingsError, match="fault"):
        load_settings({"CYGATE_FAULT": "payment:after_commit"})
    with pytest.raises(SettingsError, match="fault"):
        load_settings({"CYGATE_ENVIRONMENT": "test", "CYGATE_FAULT": "payment:elsewhere"})
    s = load_settings({"CYGATE_ENVIRONMENT": "test", "CYGATE_FAULT": "payment:after_charge"})
    assert s.payments.fault == "payment:after_charge"


def test_recovery_waits_longer_than_a_call_can_take() -> None:
    with pytest.raises(SettingsError, match="payment_recovery_after"):
        load_settings(
            {"CYGATE_PAYMENT_PROCESSOR_TIMEOUT": "10", "CYGATE_PAYMENT_RECOVERY_AFTER": "15"}
        )


@pytest.mark.parametrize("url", ["https://p.example", "ftp://x", "http://", "http://h/path?q"])
def test_processor_url_must_be_plain_http_base(url: str) -> None:
    with pytest.raises(SettingsError, match="PAYMENT_PROCESSOR_URL"):
        load_settings({"CYGATE_PAYMENT_PROCESSOR_URL": url})


def test_webhook_secret_is_masked() -> None:
    s = load_settings({"CYGATE_PAYMENT_WEBHOOK_SECRET": "shh-very-secret"})
    assert s.redacted()["payment_webhook_secret"] == "***"
