"""The API contract: schemathesis over the whole OpenAPI document of a running gateway, as a
customer and as an admin, with every check (status codes, content types, response schemas and
headers, negative and positive data, missing headers, ignored auth, unsupported methods, no 5xx,
and :func:`fuzz_hooks.problem_details`) and every phase, stateful included: zero failures.

The gateway is a private one (its own database, seeded small, and Redis prefix), so what the
fuzzer creates, changes or deletes never reaches the other acceptance tests. A bounded run here
(``CYGATE_FUZZ_API_SECONDS`` per caller, default 25); ``make contract`` and ``make fuzz-api``
run it longer. ``schemathesis.toml`` beside this file widens a check for named operations only,
each with its reason. The figures (operations, cases, time, failures) are printed, and written
as JSON next to schemathesis's own reports when ``CYGATE_FUZZ_API_REPORT_DIR`` is set.
It exercises nothing that differs between the compiled core and its twins (marker ``once``).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.acceptance.conftest import (
    Gateway,
    admin_headers,
    private_data,
    start_gateway,
    stop_gateway,
)
from tests.acceptance.contract_helpers import (
    DOCS_ROUTES,
    documented,
    route_path,
    undocumented_answers,
)
from tests.payment_helpers import running_simulator

# (HTTP contract only: nothing compiled-vs-pure specific; the compiled pass runs it)
pytestmark = [pytest.mark.acceptance, pytest.mark.once]

SECONDS = int(os.environ.get("CYGATE_FUZZ_API_SECONDS", "25"))
HOOKS = Path(__file__).with_name("fuzz_hooks.py")
CONFIG = Path(__file__).with_name("schemathesis.toml")
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.fixture(scope="module")
def fuzz_gateway(gateway_env: dict[str, str]) -> Iterator[Gateway]:
    # A processor simulator of its own: the stateful phase can pay for an order it placed, and a
    # gateway pointed at no processor answers that with an honest 503 (a server error to the run).
    with (
        private_data(gateway_env, "fuzz", categories=6, products=60, users=2, rng_seed=11) as own,
        running_simulator() as sim,
    ):
        env = {
            **own,
            "CYGATE_PAYMENT_PROCESSOR_URL": sim.url,
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
        str(SCHEMATHESIS), "--config-file", str(CONFIG), "run", f"{gw.url}/schema/openapi.json",
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
def test_contract_holds_all_checks_stateful(
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


def test_document_and_behaviour_agree(fuzz_gateway: Gateway) -> None:
    """The document against the route table the gateway runs (GET /admin/routes) and against
    every (route, status) it answered since it started (its /metrics): after the contract run
    above, that is every status schemathesis and the other tests of this module drew out."""
    gw = fuzz_gateway
    admin = admin_headers(gw)
    with gw.client() as c:
        doc = c.get("/schema/openapi.json").json()
        table = c.get("/admin/routes", headers=admin).json()["routes"]
    ops = documented(doc)
    assert doc["openapi"].startswith("3.1")
    served: dict[tuple[str, str], dict[str, Any]] = {}
    for route in table:
        if route["upstream"] != "local" or route["path"].startswith(DOCS_ROUTES):
            continue
        for method in route["methods"].split(","):
            served[(method.strip(), route_path(route["path"]))] = route
    # every route is documented, with its edge-served HEAD and OPTIONS, and nothing else is
    expected = set(served)
    expected |= {("HEAD", p) for m, p in served if m == "GET"}
    expected |= {("OPTIONS", p) for _, p in served}
    assert set(ops) == expected, (
        f"documented, not served: {sorted(set(ops) - expected)}; "
        f"served, not documented: {sorted(expected - set(ops))}"
    )
    for key, route in served.items():
        op = ops[key]
        needs_token = bool(op["security"])
        assert needs_token == route["auth"], (key, op["security"])
        statuses = {int(s) for s in op["responses"]}
        if route["auth"]:
            assert 401 in statuses, key
        if route["roles"]:
            assert 403 in statuses, key
    # every status each route answered is documented for it
    seen, undocumented = undocumented_answers(gw.url)
    assert len(seen) > 60, sorted(seen)  # the contract run above reached most operations
    assert not undocumented, f"answered but not documented: {undocumented}"
