"""Settings: defaults, the file, the environment, and one clear line for each bad value."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from cygate.settings import FLAT_NAMES, Settings, SettingsError, flat_name, load_settings


def test_defaults() -> None:
    s = load_settings({})
    assert s == Settings()
    assert s.server.port == 8000 and s.http.max_body_bytes == 1024 * 1024


def test_environment_overrides_file(tmp_path: pathlib.Path) -> None:
    cfg = tmp_path / "cygate.toml"
    cfg.write_text('port = 9001\nworkers = 3\ntrusted_proxies = ["10.0.0.1"]\n')
    s = load_settings({"CYGATE_CONFIG": str(cfg), "CYGATE_PORT": "9002"})
    assert (s.server.port, s.server.workers, s.http.trusted_proxies) == (9002, 3, ["10.0.0.1"])


def test_list_from_environment() -> None:
    assert load_settings({"CYGATE_TRUSTED_PROXIES": "10.0.0.1, 10.0.0.2"}).http.trusted_proxies == [
        "10.0.0.1",
        "10.0.0.2",
    ]
    assert load_settings({"CYGATE_TRUSTED_PROXIES": '["::1"]'}).http.trusted_proxies == ["::1"]


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
    assert load_settings({}).cache.unsubscribed_max_age == 3.0
    for value, expected in (("0", 0.0), ("0.25", 0.25), ("300", 300.0)):
        env = {"CYGATE_CACHE_UNSUBSCRIBED_MAX_AGE": value}
        assert load_settings(env).cache.unsubscribed_max_age == expected


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
    assert s.cache.rules["mine"].ttl == 10 and s.cache.rules["mine"].scope == "private"
    cfg = tmp_path / "cygate.toml"
    cfg.write_text('[cache_rules.list]\nttl = 60\nquery = ["limit"]\ntags = ["products"]\n')
    s = load_settings({"CYGATE_CONFIG": str(cfg)})
    assert s.cache.rules["list"].query == ["limit"] and s.cache.rules["list"].max_age == 60


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
    assert not off.cache.enabled


# -- flat names -> sections --------------------------------------------------------------------


def test_every_flat_name_maps_to_one_section_field() -> None:
    assert len(FLAT_NAMES) == 142
    defaults = Settings()
    for flat, (section, field) in FLAT_NAMES.items():
        assert flat_name(section, field) == flat
        assert getattr(getattr(defaults, section), field) == defaults.flat()[flat]
    assert list(defaults.redacted())[:3] == ["environment", "host", "port"]


@pytest.mark.parametrize(
    ("flat", "raw", "section", "field", "value"),
    [
        ("DB_POOL_MAX", "7", "database", "pool_max", 7),
        ("DATABASE_URL", "postgresql://h/d", "database", "url", "postgresql://h/d"),
        (
            "DATABASE_REPLICA_URLS",
            '["postgresql://r1/d", "postgresql://r2/d"]',
            "database",
            "replica_urls",
            ["postgresql://r1/d", "postgresql://r2/d"],
        ),
        ("DATABASE_REPLICA_MAX_LAG", "2.5", "database", "replica_max_lag", 2.5),
        ("CACHE_KEY_SECRET", "k", "cache", "key_secret", "k"),
        ("EDGE_HIT_PATH", "false", "http", "hit_path", False),
        ("HTTP_BODY_TIMEOUT", "5", "http", "body_timeout", 5.0),
        ("RATE_LIMIT_MAX_KEYS", "9", "rate_limit", "max_keys", 9),
        ("IDENTITY_PROVIDERS", "[]", "identity", "providers", []),
        ("MFA_KEY_FILE", "/k/mfa.key", "identity", "mfa_key_file", "/k/mfa.key"),
        ("MFA_REQUIRED_ROLES", '["admin"]', "identity", "mfa_required_roles", ["admin"]),
        ("MFA_TOKEN_TTL", "60", "identity", "mfa_token_ttl", 60),
        ("MFA_TOTP_ISSUER", "Shop", "identity", "mfa_totp_issuer", "Shop"),
        ("ORDER_TTL_SECONDS", "60", "orders", "ttl_seconds", 60),
        ("IDEMPOTENCY_TTL_SECONDS", "60", "idempotency", "ttl_seconds", 60),
        ("PAYMENT_PROCESSOR_TIMEOUT", "1", "payments", "processor_timeout", 1.0),
        ("EVENTS_BLOCK", "0.5", "events", "block", 0.5),
        ("ROUTES_FILE", "r.toml", "routes", "file", "r.toml"),
        ("METRICS_DIR", "/tmp/m", "metrics", "dir", "/tmp/m"),
    ],
)
def test_flat_names_reach_their_section(
    flat: str, raw: str, section: str, field: str, value: object, tmp_path: pathlib.Path
) -> None:
    from_env = load_settings({f"CYGATE_{flat}": raw})
    assert getattr(getattr(from_env, section), field) == value
    cfg = tmp_path / "cygate.toml"
    cfg.write_text(
        f"{flat.lower()} = {raw if raw[0] in '[0123456789' or raw == 'false' else repr(raw)}\n"
    )
    from_file = load_settings({"CYGATE_CONFIG": str(cfg)})
    assert getattr(getattr(from_file, section), field) == value
    from_override = load_settings({}, **{flat.lower(): value})
    assert getattr(getattr(from_override, section), field) == value


@pytest.mark.parametrize(
    ("source", "flat"),
    [
        ({"env": {"CYGATE_DB_POOL_MAX": "0"}}, "db_pool_max"),
        ({"env": {"CYGATE_EDGE_HIT_PATH": "maybe"}}, "edge_hit_path"),
        ({"overrides": {"payment_processor_timeout": 90}}, "payment_processor_timeout"),
        ({"overrides": {"order_ttl_seconds": 0}}, "order_ttl_seconds"),
        ({"toml": "events_block = -1\n"}, "events_block"),
        ({"toml": "[rate_limits.x]\nrate = 0\n"}, "rate_limits"),
        ({"env": {"CYGATE_RATE_LIMIT_DEFAULT_CLASS": "nope"}}, "rate_limit_default_class"),
        ({"env": {"CYGATE_PAYMENT_RECOVERY_AFTER": "1"}}, "payment_recovery_after"),
        ({"env": {"CYGATE_FAULT": "payment:after_commit"}}, "fault"),
        ({"env": {"CYGATE_REFRESH_TOKEN_TTL": "99999999"}}, "refresh_token_ttl"),
    ],
)
def test_a_bad_value_names_the_flat_setting(
    source: dict[str, object], flat: str, tmp_path: pathlib.Path
) -> None:
    env: dict[str, str] = dict(source.get("env", {}))  # type: ignore[call-overload]
    if "toml" in source:
        cfg = tmp_path / "cygate.toml"
        cfg.write_text(str(source["toml"]))
        env["CYGATE_CONFIG"] = str(cfg)
    overrides: dict[str, object] = dict(source.get("overrides", {}))  # type: ignore[call-overload]
    with pytest.raises(SettingsError) as info:
        load_settings(env, **overrides)
    message = str(info.value)
    assert message.startswith(f"invalid setting {flat} ("), message
    assert "\n" not in message and "$." not in message


def test_unknown_flat_names_are_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(SettingsError, match="unknown setting CYGATE_CACHE_KEY_SECRETT"):
        load_settings({"CYGATE_CACHE_KEY_SECRETT": "x"})
    for nested in ("cache", "key_secret", "pool_max"):  # section and field names are not flat
        with pytest.raises(SettingsError, match="unknown setting"):
            load_settings({f"CYGATE_{nested.upper()}": "1"})
        with pytest.raises(SettingsError, match=f"unknown setting '{nested}' in the config file"):
            load_settings({}, **{nested: 1})
    cfg = tmp_path / "cygate.toml"
    cfg.write_text("[cache]\nkey_secret = 'x'\n")
    with pytest.raises(SettingsError, match="unknown setting 'cache' in the config file"):
        load_settings({"CYGATE_CONFIG": str(cfg)})


def test_check_config_prints_the_flat_names() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cygate", "check-config"],
        env={"CYGATE_DB_POOL_MAX": "9", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    assert set(printed) == set(FLAT_NAMES) and printed["db_pool_max"] == 9
