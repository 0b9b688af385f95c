"""What the deployment tests (tests/unit/deploy) share: where deploy/ is, which settings are
secrets, what the image runs, and whether a command line is one the CLI accepts."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest

from cygate.cli import main as cygate_main
from cygate.settings import ENV_PREFIX, load_settings

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
DOCKERFILE = REPO / "Dockerfile"


def secret_setting_names() -> frozenset[str]:
    """The settings ``cygate check-config`` masks, as CYGATE_* names: a deployment must take
    each of them from a secret store, never from a literal. Found by setting every string
    field to a value with a password in it and seeing which come back masked."""
    probe = load_settings(
        {},
        metrics_access="token",
        metrics_token="probe-token",
        cache_key_secret="probe-secret",
        payment_webhook_secret="probe-secret",
        admin_email="probe@example.com",
        admin_password="probe-password",
        database_url="postgresql://user:probe@db/cygate",
        redis_url="redis://user:probe@redis:6379/0",
    )
    plain = {
        "metrics_token": "probe-token",
        "cache_key_secret": "probe-secret",
        "payment_webhook_secret": "probe-secret",
        "admin_password": "probe-password",
    }
    names = set()
    for name, value in probe.redacted().items():
        if isinstance(value, str) and "***" in value:
            names.add(name)
    assert set(plain) <= names, names  # the probe masks what it should
    return frozenset(f"{ENV_PREFIX}{name.upper()}" for name in names)


def dockerfile_instruction(name: str) -> str:
    """The argument of the runtime stage's last ``name`` instruction (USER, ENTRYPOINT ...)."""
    runtime = DOCKERFILE.read_text().split(" AS runtime", 1)[1]
    found = re.findall(rf"^{name}\s+(.+)$", runtime, flags=re.MULTILINE)
    assert found, f"no {name} in the Dockerfile's runtime stage"
    return str(found[-1]).strip()


def image_entrypoint() -> list[str]:
    value = json.loads(dockerfile_instruction("ENTRYPOINT"))
    assert isinstance(value, list)
    return [str(v) for v in value]


def image_uid() -> int:
    return int(dockerfile_instruction("USER").split(":", 1)[0])


def assert_cli_accepts(args: list[str]) -> None:
    """``cygate <args>`` is a command line the CLI parses: the same words with ``--help`` appended
    make it print the subcommand's help and exit 0 (argparse rejects an unknown subcommand or
    option, or a bad value, before it gets to ``--help``)."""
    out = io.StringIO()
    with (
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(io.StringIO()) as err,
        pytest.raises(SystemExit) as exited,
    ):
        cygate_main([*args, "--help"])
    assert exited.value.code == 0, f"cygate {' '.join(args)}: {err.getvalue()}"
    assert "usage: cygate" in out.getvalue()
