"""Rate-limit settings: JSON in the environment, TOML tables, and one clear line per bad value."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from cygate.settings import SettingsError, load_settings


def test_json_env_and_derived_values() -> None:
    s = load_settings(
        {
            "CYGATE_RATE_LIMITS": '{"api": {"rate": 1000, "period": 3600, "burst": 20,'
            ' "key": ["caller", "route"], "mode": "batched"}}',
            "CYGATE_RATE_LIMIT_CLASSES": '{"public": ["api"]}',
            "CYGATE_RATE_LIMIT_ROUTES": '{"GET /api/v1/categories": "public"}',
        }
    )
    spec = s.rate_limit.all_rate_limits()["api"]
    assert spec.interval_ns == 3_600_000_000  # 3.6 s between requests at the sustained rate
    assert (spec.effective_burst, spec.effective_lease, spec.effective_lease_ttl) == (20, 2, 60)
    assert s.rate_limit.rate_limit_class("public") == ["api"]
    assert s.rate_limit.rate_limit_class("api") == ["api"]  # a limit is a class of one
    assert s.rate_limit.rate_limit_class("login") == ["login"]  # built in
    assert s.rate_limit.rate_limit_class("nope") is None
    assert spec.failure_for(frozenset({"public"})) == "open"
    assert spec.failure_for(frozenset({"login"})) == "local"


def test_interval_rounds_up() -> None:
    s = load_settings({"CYGATE_RATE_LIMITS": '{"x": {"rate": 3, "period": 1}}'})
    assert (
        s.rate_limit.all_rate_limits()["x"].interval_ns == 333_333_334
    )  # never more than 3 a second


def test_toml_tables(tmp_path: pathlib.Path) -> None:
    cfg = tmp_path / "cygate.toml"
    cfg.write_text(
        "[rate_limits.burst]\nrate = 20\nperiod = 1\n\n"
        '[rate_limits.hourly]\nrate = 1000\nperiod = 3600\nmode = "exact"\nfailure = "closed"\n\n'
        '[rate_limit_classes]\napi = ["burst", "hourly"]\n'
    )
    s = load_settings({"CYGATE_CONFIG": str(cfg)})
    assert s.rate_limit.rate_limit_class("api") == ["burst", "hourly"]
    assert s.rate_limit.all_rate_limits()["hourly"].failure == "closed"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("RATE_LIMITS", "{not json", "not a JSON document"),
        ("RATE_LIMITS", '{"x": {"rate": 0}}', ">= 1"),
        ("RATE_LIMITS", '{"x": {"rate": 5, "period": 0}}', "> 0"),
        ("RATE_LIMITS", '{"x": {"rate": 5, "mode": "exakt"}}', "exakt"),
        ("RATE_LIMITS", '{"x": {"rate": 5, "failure": "maybe"}}', "maybe"),
        ("RATE_LIMITS", '{"x": {"rate": 5, "key": ["cookie"]}}', "cookie"),
        ("RATE_LIMITS", '{"x": {"rate": 5, "colour": 1}}', "colour"),
        ("RATE_LIMITS", '{"x": {"rate": 5, "burst": 2, "lease": 3, "mode": "batched"}}', "lease"),
        ("RATE_LIMITS", '{"x": {"rate": 2000000, "mode": "exact"}}', "1000000 requests"),
        ("RATE_LIMITS", '{"": {"rate": 5}}', "bad limit name"),
        ("RATE_LIMIT_CLASSES", '{"a": ["nope"]}', "unknown limits"),
        ("RATE_LIMIT_ROUTES", '{"GET /x": "nope"}', "unknown class"),
        ("RATE_LIMIT_DEFAULT_CLASS", "nope", "unknown class"),
        ("RATE_LIMIT_REDIS_TIMEOUT", "0", "> 0"),
        ("RATE_LIMIT_MAX_KEYS", "0", ">= 1"),
    ],
)
def test_bad_values_are_one_clear_line(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message) as err:
        load_settings({f"CYGATE_{name}": value})
    assert "\n" not in str(err.value)


def test_cli_refuses_a_route_that_does_not_exist() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cygate", "check-config"],
        env={
            "CYGATE_RATE_LIMIT_ROUTES": '{"GET /api/v1/typo": "login"}',
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "GET /api/v1/typo" in lines[0]
