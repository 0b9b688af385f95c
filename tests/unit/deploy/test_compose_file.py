"""deploy/compose.yaml against the compose specification's JSON schema (the copy check-jsonschema
vendors), and what the laptop set-up promises: three gateways behind HAProxy, the migration as a
one-shot the gateways wait for, health checks, settings that load, commands the CLI accepts, no
secret written in the file, Prometheus and Grafana fed from deploy/prometheus and deploy/grafana."""

from __future__ import annotations

import functools
import importlib.resources
import json
import re
from typing import Any

import jsonschema
import pytest
import yaml

from cygate.settings import load_settings
from deploy_helpers import DEPLOY, assert_cli_accepts, image_entrypoint, secret_setting_names

pytestmark = pytest.mark.once

COMPOSE = DEPLOY / "compose.yaml"
HAPROXY = DEPLOY / "haproxy" / "haproxy.cfg"
GATEWAYS = ("gateway-1", "gateway-2", "gateway-3")
# Services built from the project's image (entrypoint `cygate`).
CYGATE = (*GATEWAYS, "migrate", "worker", "processor", "seed")
Doc = dict[str, Any]


@functools.cache
def compose() -> Doc:
    """The file as compose reads it (YAML merge keys resolved)."""
    doc: Doc = yaml.safe_load(COMPOSE.read_text())
    return doc


def service(name: str) -> Doc:
    svc: Doc = compose()["services"][name]
    return svc


def test_the_file_is_valid_against_the_compose_specification() -> None:
    schema = json.loads(
        (
            importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
            / "compose-spec.json"
        ).read_text()
    )
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in
              validator.iter_errors(compose())]  # fmt: skip
    assert not errors, errors
    # The check sees a broken file: an unknown key in a service.
    broken = json.loads(json.dumps(compose()))
    broken["services"]["gateway-1"]["restart_policy"] = "always"
    assert not validator.is_valid(broken)


def test_every_part_is_there() -> None:
    assert set(compose()["services"]) == {
        "postgres",
        "redis",
        "state-init",
        "migrate",
        "seed",
        *GATEWAYS,
        "worker",
        "processor",
        "lb",
        "prometheus",
        "grafana",
    }


def test_gateways_start_after_the_migration_and_the_balancer_after_healthy_gateways() -> None:
    migrate = service("migrate")
    assert migrate["command"] == ["migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in (*GATEWAYS, "worker"):
        depends = service(name)["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name
    for name in GATEWAYS:
        assert service(name)["depends_on"]["processor"]["condition"] == "service_healthy"
        assert service("lb")["depends_on"][name]["condition"] == "service_healthy"


def test_long_running_services_have_health_checks() -> None:
    for name in ("postgres", "redis", *GATEWAYS, "processor", "lb", "prometheus", "grafana"):
        check = service(name)["healthcheck"]
        assert check["test"][0] == "CMD", name
    for name in GATEWAYS:
        assert "/readyz" in " ".join(service(name)["healthcheck"]["test"])
    assert "/healthz" in " ".join(service("processor")["healthcheck"]["test"])


@pytest.mark.parametrize("name", CYGATE)
def test_cygate_services_run_commands_the_cli_accepts(name: str) -> None:
    svc = service(name)
    assert svc["image"] == service("gateway-1")["image"]
    assert svc["build"]["context"] == ".."
    assert "entrypoint" not in svc  # the image's: cygate
    assert image_entrypoint() == ["cygate"]
    assert_cli_accepts(svc["command"])


@pytest.mark.parametrize("name", [*GATEWAYS, "migrate", "worker", "seed"])
def test_cygate_services_get_settings_that_load(name: str) -> None:
    env = {k: str(v) for k, v in service(name)["environment"].items()}
    # What compose substitutes for ${VAR:-} when VAR is not set in the shell.
    env = {k: re.sub(r"\$\{[A-Z_]+:-\}", "", v) for k, v in env.items()}
    settings = load_settings(env)
    if name in GATEWAYS:
        assert settings.server.port == 8000
        assert settings.events.relay is False and settings.events.consumers == []
    if name == "worker":
        assert settings.events.consumers
    # Secrets generated once into the shared volume, so every instance uses the same ones.
    volumes = service(name).get("volumes", [])
    if settings.identity.jwt_key_dir.startswith("/state") and name != "seed":
        assert "cygate-state:/state" in volumes, name
        assert settings.cache.key_file.startswith("/state/")
        assert settings.payments.webhook_secret_file.startswith("/state/")
        # No mfa_key_file: the MFA key is generated as mfa.key in jwt_key_dir.
        assert not settings.identity.mfa_key_file


def test_the_processor_and_the_gateways_share_the_webhook_secret_file() -> None:
    processor = service("processor")
    secret_file = processor["environment"]["CYGATE_PAYMENT_WEBHOOK_SECRET_FILE"]
    for name in GATEWAYS:
        assert service(name)["environment"]["CYGATE_PAYMENT_WEBHOOK_SECRET_FILE"] == secret_file
    assert "cygate-state:/state" in processor["volumes"]
    command = processor["command"]
    assert command[command.index("--webhook-url") + 1].startswith("http://lb:8080/")
    port = command[command.index("--port") + 1]
    url = service("gateway-1")["environment"]["CYGATE_PAYMENT_PROCESSOR_URL"]
    assert url == f"http://processor:{port}"


def test_no_secret_is_written_in_the_file() -> None:
    secrets = secret_setting_names()
    for name, svc in compose()["services"].items():
        env = svc.get("environment", {})
        assert isinstance(env, dict), name
        for key, value in env.items():
            if key in secrets and key not in ("CYGATE_DATABASE_URL", "CYGATE_REDIS_URL"):
                # Only a pass-through from the shell, never a value.
                assert re.fullmatch(r"\$\{[A-Z_]+:-\}", str(value)), (name, key)
            assert "PASSWORD" not in key or re.fullmatch(r"\$\{[A-Z_]+:-\}", str(value)), key
        for key in ("CYGATE_DATABASE_URL", "CYGATE_REDIS_URL"):
            if key in env:
                assert not re.search(r"://[^/@]*:[^/@]*@", env[key]), (name, key)
    text = COMPOSE.read_text()
    assert "BEGIN" not in text and "PRIVATE KEY" not in text
    assert "secrets:" not in text


def test_the_balancer_spreads_over_the_three_gateways() -> None:
    lb = service("lb")
    assert lb["image"].startswith("haproxy:")
    assert "./haproxy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in lb["volumes"]
    assert lb["ports"] == ["127.0.0.1:8080:8080"]
    config = HAPROXY.read_text()
    servers = re.findall(r"^\s*server\s+(\S+)\s+(\S+)", config, flags=re.MULTILINE)
    assert servers == [(g, f"{g}:8000") for g in GATEWAYS]
    assert re.search(r"^\s*option httpchk GET /readyz$", config, flags=re.MULTILINE)
    assert re.search(r"^\s*bind :8080$", config, flags=re.MULTILINE)
    assert "retry-on conn-failure" in config and "option redispatch" in config
    # The gateways believe X-Forwarded-For from the balancer's fixed address only.
    address = lb["networks"]["cygate"]["ipv4_address"]
    for name in GATEWAYS:
        assert service(name)["environment"]["CYGATE_TRUSTED_PROXIES"] == address
    # Gateways fail readiness long enough for two failed checks, then drain, all within
    # compose's stop grace period.
    env = service("gateway-1")["environment"]
    delay, drain = float(env["CYGATE_SHUTDOWN_DELAY"]), float(env["CYGATE_SHUTDOWN_TIMEOUT"])
    check = re.search(r"check inter (\d+)s fall (\d+)", config)
    assert check and delay > int(check[1]) * int(check[2])
    assert float(service("gateway-1")["stop_grace_period"].rstrip("s")) > delay + drain


def test_gateways_run_with_a_read_only_root() -> None:
    for name in (*GATEWAYS, "migrate", "worker", "processor"):
        svc = service(name)
        assert svc["read_only"] is True, name
        assert "/tmp" in svc["tmpfs"], name
        assert "user" not in svc  # the image's non-root user


def test_prometheus_and_grafana_read_their_folders() -> None:
    prometheus = service("prometheus")
    assert "./prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    grafana = service("grafana")
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert "./grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana["volumes"]
    for name in (*GATEWAYS, "lb", "prometheus", "grafana"):
        assert service(name)["networks"] == ["cygate"] or "cygate" in service(name)["networks"]
