"""The OpenAPI document as ``create_app`` builds it (no server): what ``services/openapi.py``
derives from each route's policy, checked operation by operation against the route table."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cygate.app import create_app
from cygate.services.openapi import ContractJSON, finish_document, problems
from cygate.settings import load_settings

_METHODS = ("get", "head", "post", "put", "patch", "delete", "options")


@pytest.fixture(scope="module")
def built() -> tuple[Any, dict[str, Any]]:
    edge = create_app(load_settings({}, cache_key_secret="unit-test-secret"))
    config = edge.app.openapi_config
    assert config is not None
    contract = next(p for p in config.render_plugins if isinstance(p, ContractJSON))
    generated = edge.app.openapi_schema.to_schema()
    doc = json.loads(contract.render(None, generated))  # type: ignore[arg-type]
    return edge, doc


def _ops(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (m.upper(), path): op
        for path, item in doc["paths"].items()
        for m, op in item.items()
        if m in _METHODS
    }


def test_every_route_is_an_operation_with_the_edge_statuses(built: Any) -> None:
    edge, doc = built
    ops = _ops(doc)
    checked = 0
    for _host, method, pattern, policy in edge.router.routes():
        path = pattern
        for name in ("uuid", "str", "int", "path"):
            path = path.replace(f":{name}}}", "}")
        if path.startswith("/schema"):
            continue
        op = ops[(method, path)]
        statuses = {int(s) for s in op["responses"]}
        assert bool(op["security"]) == policy.auth, (method, path)
        if policy.auth:
            assert 401 in statuses and op["security"] == [{"bearer": []}]
        if policy.roles:
            assert 403 in statuses, (method, path)
        if "{" in path:
            assert {400, 422} <= statuses, (method, path)
        for status, response in op["responses"].items():
            assert response["headers"]["X-Request-ID"]["required"] is True
            if int(status) >= 400:
                (media_type,) = response["content"]
                assert media_type in ("application/problem+json", "application/json")
            if int(status) < 300:
                for media_type, media in (response.get("content") or {}).items():
                    if "json" in media_type:
                        assert media["schema"] not in ({"type": "string"}, {}), (method, path)
        if method == "GET":
            assert ("HEAD", path) in ops
        assert ("OPTIONS", path) in ops
        checked += 1
    assert checked >= 40


def test_required_headers_bodies_and_media_types(built: Any) -> None:
    _, doc = built
    ops = _ops(doc)
    for key in (("POST", "/api/v1/orders"), ("POST", "/api/v1/orders/{order_id}/payments")):
        (header,) = [p for p in ops[key]["parameters"] if p["name"] == "idempotency-key"]
        assert header["required"] is True and header["schema"]["pattern"] == "^[!-~]{1,255}$"
        assert "Idempotent-Replayed" in ops[key]["responses"]["201"]["headers"]
    for method in ("PATCH", "DELETE"):
        op = ops[(method, "/api/v1/products/{product_id}")]
        (if_match,) = [p for p in op["parameters"] if p["name"] == "if-match"]
        assert if_match["required"] is True and "428" in op["responses"]
    category = ops[("PATCH", "/api/v1/categories/{category_id}")]
    assert not next(p for p in category["parameters"] if p["name"] == "if-match")["required"]
    for path in ("/api/v1/auth/token", "/api/v1/auth/revoke"):
        op = ops[("POST", path)]
        assert list(op["requestBody"]["content"]) == ["application/x-www-form-urlencoded"]
        assert list(op["responses"]["400"]["content"]) == ["application/json"]
        assert op["security"] == []
    jwks = ops[("GET", "/.well-known/jwks.json")]["responses"]["200"]["content"]
    assert list(jwks) == ["application/jwk-set+json"]
    schemas = doc["components"]["schemas"]
    for name in ("RegisterIn", "OrderIn", "OrderItemIn", "ProductIn", "PaymentIn", "RolesIn"):
        assert schemas[name]["additionalProperties"] is False, name
    assert schemas["ProductPatch"]["minProperties"] == 1
    assert schemas["PurgeRequest"]["properties"]["tags"]["items"]["minLength"] == 1
    problem = schemas["ValidationProblem"]
    assert {"type", "title", "status", "detail", "instance", "request_id", "errors"} <= set(
        problem["required"]
    )
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    products = ops[("GET", "/api/v1/products")]
    assert {"ETag", "X-Cache", "RateLimit-Limit"} <= set(products["responses"]["200"]["headers"])
    assert "Retry-After" in products["responses"]["429"]["headers"]
    (low,) = [p for p in products["parameters"] if p["name"] == "min_price_cents"]
    assert {"type": "integer", "minimum": 0, "maximum": 10**12} in low["schema"]["oneOf"]
    link = ops[("POST", "/api/v1/orders")]["responses"]["201"]["links"]
    assert any(v["parameters"] == {"order_id": "$response.body#/id"} for v in link.values())


def test_a_json_success_documented_as_a_string_is_refused() -> None:
    doc = {
        "paths": {
            "/x": {
                "get": {
                    "responses": {
                        "200": {
                            "description": "d",
                            "content": {"application/json": {"schema": {"type": "string"}}},
                        }
                    }
                }
            }
        }
    }
    edge = create_app(load_settings({}, cache_key_secret="unit-test-secret"))
    from cygate.app import operations  # the real route table's first route, reused

    limiter: Any = type("NoLimits", (), {"plan_for": staticmethod(lambda name: None)})()
    (op, *_) = operations(edge.app, edge.router, limiter)
    doc["paths"] = {op.path: {op.method.lower(): doc["paths"]["/x"]["get"]}}
    with pytest.raises(ValueError, match="bare string"):
        finish_document(doc, [op])


def test_problems_names_each_status() -> None:
    specs = problems(404, 409, s409="taken")
    assert specs[409].description == "taken" and specs[404].data_container is None
