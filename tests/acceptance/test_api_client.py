"""A client generated from the published document (openapi-python-client) runs a customer's flow
against a running gateway: register, log in, refresh, browse, search, order under an
Idempotency-Key (and replay it), pay (the processor simulator), cancel another order.

The client is generated into a temporary folder from ``/schema/openapi.json`` as served, then
imported: a document a generator cannot turn into a working client fails here. HTTP only:
nothing compiled-vs-pure specific (marker ``once``).
"""

from __future__ import annotations

import importlib
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from tests.acceptance.conftest import Gateway
from tests.acceptance.test_api_fuzz import fuzz_gateway  # noqa: F401  (a private gateway)

# (HTTP contract only: nothing compiled-vs-pure specific; the compiled pass runs it)
pytestmark = [pytest.mark.acceptance, pytest.mark.once]

GENERATOR = Path(sys.executable).with_name("openapi-python-client")
PACKAGE = "cygate_generated_client"


@pytest.fixture(scope="module")
def generated(
    fuzz_gateway: Gateway,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ModuleType]:
    out = tmp_path_factory.mktemp("client")
    document = out / "openapi.json"
    document.write_bytes(httpx.get(fuzz_gateway.url + "/schema/openapi.json").content)
    run = subprocess.run(
        [str(GENERATOR), "generate", "--path", str(document), "--meta", "none",
         "--output-path", str(out / PACKAGE)],
        cwd=out, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(out))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def _api(name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.api.{name}")


def _models() -> Any:
    return importlib.import_module(f"{PACKAGE}.models")


def test_generated_client_runs_a_customer_flow(
    generated: ModuleType,
    fuzz_gateway: Gateway,  # noqa: F811
) -> None:
    anon = generated.Client(base_url=fuzz_gateway.url, raise_on_unexpected_status=True)
    with anon:
        _flow(generated, anon, fuzz_gateway.url)


def _flow(generated: ModuleType, anon: Any, url: str) -> None:
    m = _models()
    email = f"client-{uuid.uuid4().hex[:12]}@example.com"
    password = secrets.token_urlsafe(14)

    # register, log in
    user = _api("identity.api_v1_auth_register_register").sync(
        client=anon, body=m.RegisterIn(email=email, password=password, name="Gen")
    )
    assert isinstance(user, m.User) and user.email == email and "customer" in user.roles
    tokens = _api("identity.api_v1_auth_login_login").sync(
        client=anon, body=m.LoginIn(email=email, password=password)
    )
    assert isinstance(tokens, m.TokenOut) and tokens.token_type == "Bearer"
    # a taken email is a documented 409 problem, decoded as one
    taken = _api("identity.api_v1_auth_register_register").sync(
        client=anon, body=m.RegisterIn(email=email, password=password, name="Gen")
    )
    assert isinstance(taken, m.ProblemDetails) and taken.status == 409

    # refresh (form-encoded, RFC 6749)
    refreshed = _api("identity.api_v1_auth_token_token").sync(
        client=anon,
        body=m.ApiV1AuthTokenTokenBodyType0(
            grant_type=m.ApiV1AuthTokenTokenBodyType0GrantType.REFRESH_TOKEN,
            refresh_token=tokens.refresh_token,
        ),
    )
    assert isinstance(refreshed, m.TokenOut), refreshed
    assert refreshed.refresh_token != tokens.refresh_token  # rotated
    me = generated.AuthenticatedClient(
        base_url=url, token=refreshed.access_token, raise_on_unexpected_status=True
    )
    with me:
        _customer_flow(m, anon, me)


def _customer_flow(m: Any, anon: Any, me: Any) -> None:
    profile = _api("identity.api_v1_users_me_me").sync(client=me)
    assert isinstance(profile, m.User) and "customer" in profile.roles

    # browse, search
    page = _api("catalog.api_v1_products_products").sync(client=anon, limit=5)
    assert isinstance(page, m.ProductPage) and len(page.items) == 5
    stocked = [p for p in page.items if p.stock > 2]
    assert stocked, page
    product = _api("catalog.api_v1_products_product_id_product").sync(stocked[0].id, client=anon)
    assert isinstance(product, m.Product) and product.id == stocked[0].id
    word = product.name.split()[0]
    found = _api("catalog.api_v1_search_search").sync(client=anon, q=word, limit=10)
    assert isinstance(found, m.SearchPage) and found.items, word

    # order under an Idempotency-Key; the same request again is the stored answer
    place = _api("orders.api_v1_orders_place")
    body = m.OrderIn(
        items=[m.OrderItemIn(product_id=product.id, quantity=1)], shipping_address="1 Main St"
    )
    key = uuid.uuid4().hex
    first = place.sync_detailed(client=me, body=body, idempotency_key=key)
    assert first.status_code == 201 and isinstance(first.parsed, m.Order), first.content
    order = first.parsed
    assert order.status == "pending" and order.total_cents == product.price_cents
    again = place.sync_detailed(client=me, body=body, idempotency_key=key)
    assert again.status_code == 201 and again.parsed.id == order.id
    assert again.headers.get("idempotent-replayed") == "true"

    # pay it (the processor simulator captures)
    paid = _api("payments.api_v1_orders_order_id_payments_pay").sync(
        order.id,
        client=me,
        body=m.PaymentIn(payment_method_token="tok_approve"),
        idempotency_key=uuid.uuid4().hex,
    )
    assert isinstance(paid, m.PaymentOut), paid
    assert paid.order_id == order.id and paid.status == "captured"
    # a paid order cannot be cancelled: a documented 409 problem
    refused = _api("orders.api_v1_orders_order_id_cancel_cancel").sync(order.id, client=me)
    assert isinstance(refused, m.ProblemDetails) and refused.status == 409

    # cancel another order
    other = place.sync(client=me, body=body, idempotency_key=uuid.uuid4().hex)
    assert isinstance(other, m.Order)
    cancelled = _api("orders.api_v1_orders_order_id_cancel_cancel").sync(other.id, client=me)
    assert isinstance(cancelled, m.Order) and cancelled.status == "cancelled"
    mine = _api("orders.api_v1_orders_list_orders").sync(client=me)
    assert isinstance(mine, m.OrderPage)
    assert {o.id: o.status for o in mine.items} == {order.id: "paid", other.id: "cancelled"}
