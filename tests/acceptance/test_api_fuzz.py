"""API fuzzing: schemathesis over the whole OpenAPI document of a running gateway, as a customer
and as an admin; the one check is that no answer is a server error (5xx).

The gateway is a private one (its own database, seeded small, and Redis prefix), so what the
fuzzer creates, changes or deletes never reaches the other acceptance tests. A bounded run here
(``CYGATE_FUZZ_API_SECONDS`` per caller, default 45); ``make fuzz-api`` runs it longer.
The figures (operations, cases, time, failures) are printed, and written as JSON next to
schemathesis's own reports when ``CYGATE_FUZZ_API_REPORT_DIR`` is set.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from tests.acceptance.conftest import Gateway, admin_headers, start_gateway, stop_gateway
from tests.payment_helpers import running_simulator

from cygate.infra import seed as seeding
from cygate.infra.db import apply_migrations, drop_database, ensure_database

pytestmark = pytest.mark.acceptance

SECONDS = int(os.environ.get("CYGATE_FUZZ_API_SECONDS", "45"))
HOOKS = Path(__file__).with_name("fuzz_hooks.py")
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.fixture(scope="module")
def fuzz_gateway(gateway_env: dict[str, str]) -> Iterator[Gateway]:
    dsn = gateway_env["CYGATE_DATABASE_URL"].rsplit("/", 1)[0] + (
        f"/cygate_fuzz_{secrets.token_hex(4)}"
    )

    async def setup() -> None:
        await ensure_database(dsn)
        conn = await asyncpg.connect(dsn)
        try:
            await apply_migrations(conn)
            await seeding.seed(conn, categories=6, products=60, users=2, rng_seed=11)
        finally:
            await conn.close()

    asyncio.run(setup())
    # A processor simulator of its own: the stateful phase can pay for an order it placed, and a
    # gateway pointed at no processor answers that with an honest 503 (a server error to the run).
    with running_simulator() as sim:
        env = {
            **gateway_env,
            "CYGATE_PAYMENT_PROCESSOR_URL": sim.url,
            "CYGATE_DATABASE_URL": dsn,
            "CYGATE_REDIS_PREFIX": gateway_env["CYGATE_REDIS_PREFIX"] + "fuzz:",
            # tokens outlive the longest run (make fuzz-api)
            "CYGATE_ACCESS_TOKEN_TTL": str(max(900, 4 * SECONDS)),
            # Limits generous enough that generated logins and registrations reach the handlers and
            # their SQL instead of a 429 after the tenth (what a 429 protects is tested elsewhere).
            "CYGATE_RATE_LIMITS": json.dumps(
                {
                    name: {"rate": 1_000_000, "period": 60, "key": [key]}
                    for name, key in (
                        ("api", "caller"),
                        ("login", "ip"),
                        ("token", "ip"),
                        ("register", "ip"),
                    )
                }
            ),
            "CYGATE_LOGIN_MAX_FAILURES_PER_ADDRESS": "1000000",
            "CYGATE_LOGIN_MAX_FAILURES_PER_ACCOUNT": "10000",
        }
        gw = start_gateway(env)
        try:
            yield gw
        finally:
            output = stop_gateway(gw)
            asyncio.run(drop_database(dsn))
            if "Traceback" in output:
                print(output)


def _customer(gw: Gateway) -> tuple[dict[str, str], str]:
    email = f"fuzz-{uuid.uuid4().hex[:12]}@example.com"
    password = secrets.token_urlsafe(14)
    with gw.client() as c:
        r = c.post(
            "/api/v1/auth/register", json={"email": email, "password": password, "name": "F"}
        )
        assert r.status_code == 201, r.text
        user_id = r.json()["id"]
        r = c.post("/api/v1/auth/login", json={"email": email, "password": password})
        assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}, user_id


def _fuzz(
    gw: Gateway, name: str, headers: dict[str, str], protected: list[str], out: Path
) -> dict[str, Any]:
    """One schemathesis run as one caller; its JSON report."""
    report = out / f"{name}.json"
    command = [
        str(SCHEMATHESIS), "run", f"{gw.url}/schema/openapi.json",
        "--checks", "not_a_server_error,problem_details",
        "--max-time", str(SECONDS),
        "--workers", "2",
        "--request-timeout", "10",
        "--suppress-health-check", "all",
        "--exclude-name", "DELETE /api/v1/users/me",  # would erase the account it runs as
        "--seed", str(int.from_bytes(secrets.token_bytes(4), "big")),
        "--report", "json,ndjson",
        "--report-json-path", str(report),
        "--report-ndjson-path", str(out / f"{name}.ndjson"),
        "--output-truncate", "false",
    ]  # fmt: skip
    for key, value in headers.items():
        command += ["--header", f"{key}: {value}"]
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": str(HOOKS),
        "CYGATE_FUZZ_PROTECTED_IDS": ",".join(protected),
    }
    run = subprocess.run(
        command,
        env=env,
        cwd=out,  # (schemathesis keeps a cache folder in its working directory)
        capture_output=True,
        text=True,
        timeout=SECONDS * 3 + 300,
        check=False,
    )
    (out / f"{name}.log").write_text(run.stdout + run.stderr)
    assert report.exists(), run.stdout[-4000:] + run.stderr[-4000:]
    doc: dict[str, Any] = json.loads(report.read_text())
    doc["output_tail"] = run.stdout[-6000:]
    return doc


@pytest.mark.timeout(SECONDS * 6 + 600)
def test_no_server_error_anywhere(
    fuzz_gateway: Gateway, tmp_path_factory: pytest.TempPathFactory
) -> None:
    gw = fuzz_gateway
    out = Path(os.environ.get("CYGATE_FUZZ_API_REPORT_DIR") or tmp_path_factory.mktemp("fuzz"))
    out.mkdir(parents=True, exist_ok=True)
    customer, customer_id = _customer(gw)
    admin = admin_headers(gw)
    with gw.client() as c:
        admin_id = c.get("/api/v1/users/me", headers=admin).json()["id"]
    protected = [customer_id, admin_id]
    figures = {}
    for name, headers in (("customer", customer), ("admin", admin)):
        doc = _fuzz(gw, name, headers, protected, out)
        figures[name] = {
            "operations": doc["operations"],
            "cases": doc["test_cases"]["generated"],
            "seconds": doc["running_time"],
            "failures": doc["failures"],
            "errors": doc["errors"],
        }
        print(f"schemathesis as {name}: {json.dumps(figures[name])}")
        assert not doc["failures"], doc["output_tail"]
        assert doc["operations"]["tested"] >= 25, doc["output_tail"]
    (out / "figures.json").write_text(json.dumps(figures, indent=2))
    # the accounts it ran as are untouched
    with gw.client() as c:
        me = c.get("/api/v1/users/me", headers=admin)
        assert me.status_code == 200 and "admin" in me.json()["roles"]
        assert c.get("/api/v1/users/me", headers=customer).status_code == 200
        assert httpx.get(gw.url + "/readyz").status_code == 200
