"""Settings: defaults, the file, the environment, and one clear line for each bad value."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from cygate.settings import Settings, SettingsError, load_settings


def test_defaults() -> None:
    s = load_settings({})
    assert s == Settings()
    assert s.port == 8000 and s.max_body_bytes == 1024 * 1024


def test_environment_overrides_file(tmp_path: pathlib.Path) -> None:
    cfg = tmp_path / "cygate.toml"
    cfg.write_text('port = 9001\nworkers = 3\ntrusted_proxies = ["10.0.0.1"]\n')
    s = load_settings({"CYGATE_CONFIG": str(cfg), "CYGATE_PORT": "9002"})
    assert (s.port, s.workers, s.trusted_proxies) == (9002, 3, ["10.0.0.1"])


def test_list_from_environment() -> None:
    assert load_settings({"CYGATE_TRUSTED_PROXIES": "10.0.0.1, 10.0.0.2"}).trusted_proxies == [
        "10.0.0.1",
        "10.0.0.2",
    ]
    assert load_settings({"CYGATE_TRUSTED_PROXIES": '["::1"]'}).trusted_proxies == ["::1"]


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"CYGATE_PORT": "abc"}, "port"),
        ({"CYGATE_PORT": "70000"}, "port"),
        ({"CYGATE_WORKERS": "0"}, "workers"),
        ({"CYGATE_DATABASE_URL": "mysql://x/y"}, "database_url"),
        ({"CYGATE_REDIS_URL": "http://x"}, "redis_url"),
        ({"CYGATE_LOG_LEVEL": "loud"}, "log_level"),
        ({"CYGATE_ACCESS_LOG": "maybe"}, "access_log"),
        ({"CYGATE_DB_POOL_MIN": "99"}, "db_pool_min"),
        ({"CYGATE_METRICS_ACCESS": "token"}, "metrics_token"),
        ({"CYGATE_MAX_BODY_BYTES": "-1"}, "max_body_bytes"),
        ({"CYGATE_TRUSTED_PROXIES": "[not json"}, "TRUSTED_PROXIES"),
        ({"CYGATE_PROT": "8000"}, "CYGATE_PROT"),
        ({"CYGATE_CACHE_UNSUBSCRIBED_MAX_AGE": "-1"}, "cache_unsubscribed_max_age"),
        ({"CYGATE_CACHE_UNSUBSCRIBED_MAX_AGE": "301"}, "cache_unsubscribed_max_age"),
        ({"CYGATE_CACHE_UNSUBSCRIBED_MAX_AGE": "1e9"}, "cache_unsubscribed_max_age"),
        ({"CYGATE_CACHE_UNSUBSCRIBED_MAX_AGE": "inf"}, "cache_unsubscribed_max_age"),
        ({"CYGATE_CACHE_UNSUBSCRIBED_MAX_AGE": "nan"}, "cache_unsubscribed_max_age"),
        ({"CYGATE_CACHE_UNSUBSCRIBED_MAX_AGE": "3s"}, "cache_unsubscribed_max_age"),
        ({"CYGATE_HTTP_HEADER_TIMEOUT": "0"}, "http_header_timeout"),
        ({"CYGATE_HTTP_BODY_TIMEOUT": "0.5"}, "http_body_timeout"),
        ({"CYGATE_HTTP_BODY_TIMEOUT": "never"}, "http_body_timeout"),
        ({"CYGATE_RESPAWN_FAILED_WORKERS": "maybe"}, "respawn_failed_workers"),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], names: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(env)
    message = str(info.value)
    assert names in message
    assert "\n" not in message


def test_secrets_never_echoed() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({"CYGATE_DATABASE_URL": "mysql://user:hunter2@db/x"})
    assert "hunter2" not in str(info.value)
    s = load_settings({"CYGATE_DATABASE_URL": "postgresql://u:hunter2@db/x"})
    assert "hunter2" not in str(s.redacted())


def test_bad_config_file(tmp_path: pathlib.Path) -> None:
    cfg = tmp_path / "cygate.toml"
    cfg.write_text("port = [\n")
    with pytest.raises(SettingsError, match="invalid config file"):
        load_settings({"CYGATE_CONFIG": str(cfg)})
    cfg.write_text("colour = 'blue'\n")
    with pytest.raises(SettingsError, match="colour"):
        load_settings({"CYGATE_CONFIG": str(cfg)})
    with pytest.raises(SettingsError, match="no file"):
        load_settings({"CYGATE_CONFIG": str(tmp_path / "missing.toml")})


@pytest.mark.parametrize("command", ["check-config", "serve", "migrate"])
def test_cli_stops_with_one_line_not_a_traceback(command: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cygate", command],
        env={"CYGATE_PORT": "not-a-port", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "port" in lines[0]


@pytest.mark.parametrize("bound", ["-0.5", "86400"])
def test_a_negative_or_absurd_unsubscribed_bound_stops_the_gateway(bound: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cygate", "serve"],
        env={"CYGATE_CACHE_UNSUBSCRIBED_MAX_AGE": bound, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cache_unsubscribed_max_age" in lines[0], proc.stderr


def test_the_unsubscribed_bound_accepts_zero_and_fractions() -> None:
    assert load_settings({}).cache_unsubscribed_max_age == 3.0
    for value, expected in (("0", 0.0), ("0.25", 0.25), ("300", 300.0)):
        env = {"CYGATE_CACHE_UNSUBSCRIBED_MAX_AGE": value}
        assert load_settings(env).cache_unsubscribed_max_age == expected


def test_cli_check_config_prints_redacted() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cygate", "check-config"],
        env={"CYGATE_DATABASE_URL": "postgresql://u:s3cret@h/db", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "s3cret" not in proc.stdout and '"port": 8000' in proc.stdout


def test_cache_rules_from_the_environment_and_the_file(tmp_path: pathlib.Path) -> None:
    s = load_settings({"CYGATE_CACHE_RULES": '{"mine": {"ttl": 10, "scope": "private"}}'})
    assert s.cache_rules["mine"].ttl == 10 and s.cache_rules["mine"].scope == "private"
    cfg = tmp_path / "cygate.toml"
    cfg.write_text('[cache_rules.list]\nttl = 60\nquery = ["limit"]\ntags = ["products"]\n')
    s = load_settings({"CYGATE_CONFIG": str(cfg)})
    assert s.cache_rules["list"].query == ["limit"] and s.cache_rules["list"].max_age == 60


@pytest.mark.parametrize(
    "value",
    [
        '{"x": {"ttl": -1}}',
        '{"x": {"tll": 10}}',
        '{"x": {"scope": "everyone"}}',
        '{"x": {"headers": ["bad header"]}}',
        '{"x": {"tags": [""]}}',
        "[not json",
    ],
)
def test_bad_cache_rules_name_the_setting(value: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({"CYGATE_CACHE_RULES": value})
    assert "CACHE_RULES" in str(info.value).upper() and "\n" not in str(info.value)


def test_production_needs_a_cache_secret_and_hides_it() -> None:
    prod = {
        "CYGATE_ENVIRONMENT": "production",
        "CYGATE_JWT_KEY_FILES": "/keys/a.pem",
        "CYGATE_MFA_KEY_FILE": "/keys/mfa.key",
    }
    with pytest.raises(SettingsError, match="cache_key_secret"):
        load_settings(prod)
    s = load_settings({**prod, "CYGATE_CACHE_KEY_SECRET": "k3y"})
    assert s.redacted()["cache_key_secret"] == "***"
    off = load_settings({**prod, "CYGATE_CACHE_ENABLED": "false"})
    assert not off.cache_enabled
