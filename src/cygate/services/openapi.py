"""The published contract: the OpenAPI 3.1 document at ``/schema/openapi.json``, as served.

Litestar generates the document from the handlers (their parameters, bodies, return types and
``responses``); what the edge adds to every route from the route's policy is added here from the
same policy (``RoutePolicy``: token, roles, rate limit, cache rule, body kind), so the document
and the behaviour come from one source:

- every status an operation can answer, with its RFC 9457 ``application/problem+json`` body
  (``errors`` on 422), the OAuth endpoints' RFC 6749 error object on their 400/401;
- the bearer security scheme on the operations that need a token (none on public ones);
- the response headers (``X-Request-ID`` everywhere, ``RateLimit-*`` on rate-limited routes,
  ``ETag``/``Cache-Control``/``X-Cache``/``Age`` on cacheable ones, ``Retry-After``,
  ``WWW-Authenticate``, ``Allow``, ``Idempotent-Replayed``);
- the operations the edge answers without Litestar: ``HEAD`` of every ``GET`` and ``OPTIONS``
  of every path;
- strict request bodies (``additionalProperties: false`` where the body type refuses unknown
  fields), required ``Idempotency-Key`` and ``If-Match`` where their absence is refused, and the
  form bodies of ``/auth/token`` and ``/auth/revoke``.

Handlers declare what only they know with :func:`problems` and :func:`answers` (Litestar's own
``responses``); :class:`ContractJSON` is the render plugin that serves the finished document.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin

import msgspec
import orjson
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.plugins import JsonRenderPlugin

from cygate.edge.body import BODY_FORM
from cygate.edge.cache_entry import HIT_L1, HIT_L2, MISS, STALE
from cygate.edge.problem import PROBLEM_CONTENT_TYPE
from cygate.services.idempotency import MAX_KEY_LENGTH

if TYPE_CHECKING:
    from litestar import Request
    from litestar.handlers import HTTPRouteHandler

    from cygate.edge.context import RoutePolicy

__all__ = [
    "BEARER",
    "ContractJSON",
    "FieldError",
    "OAuthError",
    "Operation",
    "ProblemDetails",
    "ValidationProblem",
    "answers",
    "finish_document",
    "problems",
]

BEARER = "bearer"
"""The name of the security scheme: an access token (RFC 9068 JWT) in ``Authorization``."""

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"


class FieldError(msgspec.Struct, frozen=True):
    field: str
    """Where: ``body.<name>``, ``query.<name>``, ``path.<name>``, ``header.<name>``."""
    message: str


class ProblemDetails(msgspec.Struct, frozen=True):
    """RFC 9457 problem details, as ``cygate.edge.problem.problem_body`` writes them."""

    type: str
    title: str
    status: int
    detail: str
    instance: str
    request_id: str
    """The request's ``X-Request-ID``: quote it when reporting a problem."""


class ValidationProblem(ProblemDetails, frozen=True):
    """A 422: what was wrong, field by field."""

    errors: list[FieldError]


class OAuthError(msgspec.Struct, frozen=True, omit_defaults=True):
    """RFC 6749 §5.2 error response of the token and revocation endpoints."""

    error: Literal["invalid_request", "invalid_client", "invalid_grant", "unsupported_grant_type"]
    error_description: str | None = None


_WHY: dict[int, str] = {
    304: "Not modified: the entity tag in If-None-Match still matches",
    400: "Bad request (a required header missing or malformed, or a body that is not JSON)",
    401: "A valid access token is required (RFC 6750)",
    403: "Not allowed for this caller",
    404: "Not found (or not the caller's)",
    405: "Method not allowed on this path",
    409: "Conflict with the resource's current state",
    412: "The If-Match entity tag is stale",
    413: "The request body is larger than this route accepts",
    415: "The request body is not JSON",
    422: "The request is well formed but invalid: each field that is wrong is named",
    428: "If-Match is required (the ETag from GET, or *)",
    429: "Too many requests: wait Retry-After seconds",
    503: "Temporarily unavailable (a dependency is down): retry after Retry-After seconds",
}


def problems(*statuses: int, **why: str) -> dict[int, ResponseSpec]:
    """Handler ``responses=`` for the refusals a handler itself raises (the edge's come from
    the route policy). ``why`` overrides a status's description (``s409="..."``)."""
    return {
        s: ResponseSpec(
            data_container=None,
            description=why.get(f"s{s}", _WHY.get(s, HTTPStatus(s).phrase)),
        )
        for s in statuses
    }


def answers(
    status: int, model: Any, description: str, media_type: str = "application/json"
) -> dict[int, ResponseSpec]:
    """Handler ``responses=`` for a success answer whose body the handler encodes itself (a
    handler returning bytes would otherwise be documented as a string)."""
    return {
        status: ResponseSpec(
            data_container=model,
            description=description,
            media_type=media_type,
            generate_examples=False,
        )
    }


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation of the route table, and what the document needs to know of it."""

    method: str
    path: str
    """As in the document: ``/api/v1/products/{product_id}``."""
    policy: RoutePolicy
    handler: HTTPRouteHandler
    rate_limited: bool


_TYPED = re.compile(r"\{(\w+):\w+\}")


def document_path(pattern: str) -> str:
    """``/api/v1/products/{product_id:uuid}`` → ``/api/v1/products/{product_id}``."""
    return _TYPED.sub(r"{\1}", pattern)


# -- the post-processing ------------------------------------------------------------------------

_REF = "#/components/schemas/"
_CONVENTIONS = (
    "cygate's REST API. Every refusal is RFC 9457 application/problem+json with the request's "
    "`request_id` (422s name each wrong field in `errors`); the OAuth endpoints answer RFC 6749 "
    "error objects. Strings never hold NUL (U+0000): a body, form or query value with one is a "
    "422. Lists take `limit` (1..100) and an opaque `cursor` (a `next_cursor` the server "
    "issued). Writes that move money need an `Idempotency-Key`; a replay carries "
    "`Idempotent-Replayed: true`. Rate-limited answers carry `RateLimit-*` headers."
)
_NO_DB = frozenset({"/healthz", "/.well-known/jwks.json", "/schema/openapi.json", "/schema"})
"""Operations that need neither PostgreSQL nor Redis (everything else may answer 503)."""


def _header(description: str, schema: dict[str, Any], *, required: bool = False) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": schema}


_INT = {"type": "integer", "minimum": 0}
_STR = {"type": "string"}
_HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": _header(
        "The request's id (the client's when well formed, else minted)", _STR, required=True
    ),
    "RateLimit-Limit": _header("Requests allowed in the window", _INT),
    "RateLimit-Remaining": _header("Requests left in the window", _INT),
    "RateLimit-Reset": _header("Seconds until the window resets", _INT),
    "RateLimit-Policy": _header("The limit and its window (`<limit>;w=<seconds>`)", _STR),
    "Retry-After": _header("Seconds to wait before retrying", _INT),
    "ETag": _header("The entity tag of the representation", _STR),
    "Cache-Control": _header("Caching directives", _STR),
    "X-Cache": _header(
        "Whether the gateway's cache answered (and from which tier)",
        {"type": "string", "enum": [v.decode() for v in (HIT_L1, HIT_L2, MISS, STALE)]},
    ),
    "Age": _header("Seconds the cached answer has been stored", _INT),
    "WWW-Authenticate": _header("The authentication scheme (RFC 6750 / RFC 7617)", _STR),
    "Allow": _header("The methods of this path", _STR, required=True),
    "Location": _header("The URL of the created resource", _STR),
    "Idempotent-Replayed": _header(
        "`true` when this is the stored answer to an earlier request with the same Idempotency-Key",
        {"type": "string", "enum": ["true"]},
    ),
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _schema_components() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        (ProblemDetails, ValidationProblem, OAuthError), ref_template=_REF + "{name}"
    )
    for schema in components.values():
        schema.pop("title", None)
    # (extra members may follow: a 403 of an account without MFA says so, a 503 names what is down)
    return components


def _problem_content(status: int, oauth: bool) -> dict[str, Any]:
    if oauth and status in (400, 401):
        return {"application/json": {"schema": _ref("OAuthError")}}
    name = "ValidationProblem" if status == 422 else "ProblemDetails"
    return {PROBLEM_CONTENT_TYPE: {"schema": _ref(name)}}


def _statuses(op: Operation, params: list[dict[str, Any]], has_body: bool) -> set[int]:
    """What the edge and the framework answer for this route, from its policy."""
    policy = op.policy
    out: set[int] = set()
    if any(p.get("in") in ("path", "query", "header") for p in params):
        out.add(422)  # a parameter that does not parse or breaks its bounds
    if any(p.get("in") == "path" for p in params):
        out.add(400)  # a path that does not normalise (a bad escape, an encoded slash...)
    if op.method in ("POST", "PUT", "PATCH", "DELETE"):
        # the edge reads a write's body first: over the route's limit 413; a JSON route refuses
        # any other media type with 415, a body or not in the document
        out |= {413} if policy.body == BODY_FORM else {413, 415}
    if has_body:
        out |= {400} if policy.body == BODY_FORM else {400, 422}
    if policy.auth:
        out.add(401)
    if policy.roles or policy.policy:
        out.add(403)
    if op.rate_limited:
        out.add(429)
    if policy.cache and op.method == "GET":
        out.add(304)
    if op.path not in _NO_DB:
        out.add(503)
    return out


def _body_structs(types: Iterable[Any]) -> Iterator[type[msgspec.Struct]]:
    """The body structs (and the structs inside them)."""
    seen: set[type] = set()
    stack = list(types)
    while stack:
        tp = stack.pop()
        origin = get_origin(tp)
        if origin is not None:
            stack.extend(get_args(tp))
            continue
        if not (isinstance(tp, type) and issubclass(tp, msgspec.Struct)) or tp in seen:
            continue
        seen.add(tp)
        yield tp
        stack.extend(f.type for f in msgspec.structs.fields(tp))


def _body_schemas(types: Iterable[Any]) -> dict[str, Any]:
    """The request bodies' schemas as msgspec, which decodes them, states them (Litestar's
    generator drops the bounds of list items and mapping keys): strict where the struct
    refuses unknown fields; a change with every field optional must change something."""
    structs = list(_body_structs(types))
    if not structs:
        return {}
    _, components = msgspec.json.schema_components(structs, ref_template=_REF + "{name}")
    for struct in structs:
        schema = components.get(struct.__name__)
        if schema is None:
            continue
        schema.pop("title", None)
        config = struct.__struct_config__
        if config.forbid_unknown_fields:
            schema["additionalProperties"] = False
        fields = msgspec.structs.fields(struct)
        if fields and all(f.default is msgspec.UNSET for f in fields):
            schema["minProperties"] = 1  # (the writers refuse a body that changes nothing)
    return components


def _body_type(handler: HTTPRouteHandler) -> Any:
    data = handler.parsed_fn_signature.parameters.get("data")
    if data is None:
        return None
    # JSONBody[X] / Annotated[X, Body()]: the struct is the annotation's first argument
    annotation = data.annotation
    return annotation


def _form_body(forms: tuple[type, ...]) -> dict[str, Any]:
    _, components = msgspec.json.schema_components(forms, ref_template=_REF + "{name}")
    variants = []
    for form in forms:
        schema = components[form.__name__]
        schema.pop("title", None)
        # (no additionalProperties: false: RFC 6749 §3.2, unknown parameters are ignored)
        variants.append(schema)
    schema = variants[0] if len(variants) == 1 else {"oneOf": variants}
    return {"required": True, "content": {FORM_CONTENT_TYPE: {"schema": schema}}}


def _links(doc: dict[str, Any]) -> None:
    """Links from a created resource to what takes its id (stateful testing, clients)."""
    by_path = doc["paths"]

    def op_id(path: str, method: str) -> str | None:
        found = by_path.get(path, {}).get(method)
        return found.get("operationId") if found else None

    plans = (
        ("/api/v1/products", "post", "201", "/api/v1/products/{product_id}", "product_id"),
        ("/api/v1/categories", "post", "201", "/api/v1/categories/{category_id}", "category_id"),
        ("/api/v1/orders", "post", "201", "/api/v1/orders/{order_id}", "order_id"),
        ("/api/v1/orders", "post", "201", "/api/v1/orders/{order_id}/cancel", "order_id"),
        ("/api/v1/orders", "post", "201", "/api/v1/orders/{order_id}/payments", "order_id"),
    )
    for source, method, status, target, param in plans:
        response = by_path.get(source, {}).get(method, {}).get("responses", {}).get(status)
        if response is None:
            continue
        for target_method in ("get", "patch", "delete", "post"):
            target_id = op_id(target, target_method)
            if target_id is None:
                continue
            response.setdefault("links", {})[target_id] = {
                "operationId": target_id,
                "parameters": {param: "$response.body#/id"},
            }


def finish_document(doc: dict[str, Any], operations: Iterable[Operation]) -> dict[str, Any]:
    """The generated document completed from the route table; ``doc`` is not changed."""
    doc = copy.deepcopy(doc)
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.update(_schema_components())
    components["securitySchemes"] = {
        BEARER: {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "An access token from /api/v1/auth/login or /api/v1/auth/token "
            "(RFC 9068; its keys at /.well-known/jwks.json)",
        }
    }
    paths: dict[str, dict[str, Any]] = doc.setdefault("paths", {})
    bodies: list[Any] = []
    methods_of: dict[str, set[str]] = {}
    ops = list(operations)
    for op in ops:
        methods_of.setdefault(op.path, set()).add(op.method)
    for op in ops:
        item = paths.get(op.path, {}).get(op.method.lower())
        if item is None:
            continue  # not in the schema (include_in_schema=False): the test says which
        _finish_operation(item, op, bodies)
        if op.method == "GET":
            paths[op.path]["head"] = _head_of(item)
    for path, methods in methods_of.items():
        if path in paths:
            paths[path]["options"] = _options(path, methods, paths[path])
    schemas.update(_body_schemas(bodies))
    _links(doc)
    doc["openapi"] = "3.1.0"
    doc.setdefault("info", {})["description"] = _CONVENTIONS
    return doc


def _finish_operation(item: dict[str, Any], op: Operation, bodies: list[Any]) -> None:
    params: list[dict[str, Any]] = item.setdefault("parameters", [])
    responses: dict[str, Any] = item.setdefault("responses", {})
    handler_opt = op.handler.opt
    forms: tuple[type, ...] = handler_opt.get("form", ())
    oauth = op.policy.body == BODY_FORM
    if forms:
        item["requestBody"] = _form_body(forms)
    has_body = "requestBody" in item
    body_type = _body_type(op.handler)
    if body_type is not None:
        bodies.append(body_type)
    declared = {int(s) for s in responses}
    # Litestar's own 400 (its ValidationException shape) is not what the server sends: the
    # edge and the exception handlers answer 422 problem+json; 400 stays only where it happens.
    if 400 in declared and not handler_opt.get("problems_400"):
        generated = responses["400"].get("content", {}).get("application/json", {})
        if "status_code" in str(generated.get("schema", {})):
            del responses["400"]
            declared.discard(400)
    headers = {p["name"].lower() for p in params if p.get("in") == "header"}
    if "idempotency-key" in headers:
        declared |= {400, 409, 422}
    statuses = declared | _statuses(op, params, has_body)
    for p in params:
        name = p["name"].lower()
        schema = p.get("schema", {})
        if name == "idempotency-key":
            p["required"] = True
            p["schema"] = {"type": "string", "pattern": f"^[!-~]{{1,{MAX_KEY_LENGTH}}}$"}
        elif name == "if-match" and 428 in statuses:
            p["required"] = True
            p["schema"] = {"type": "string", "minLength": 1, "maxLength": 1024, "pattern": r"\S"}
        elif "oneOf" in schema and p.get("in") == "query":
            _bounds_of_optional(p, op.handler)
    if op.policy.cache and op.method == "GET":
        params.append(
            {
                "name": "If-None-Match",
                "in": "header",
                "required": False,
                "description": "An ETag from an earlier answer: 304 while it still matches",
                "schema": {"type": "string"},
            }
        )
    item["security"] = [{BEARER: []}] if op.policy.auth else []
    for status in sorted(statuses):
        key = str(status)
        response = responses.setdefault(
            key, {"description": _WHY.get(status, HTTPStatus(status).phrase)}
        )
        if status >= 400:
            response["content"] = _problem_content(status, oauth)
        elif status == 304:
            response.pop("content", None)
        hdrs = response.setdefault("headers", {})
        _response_headers(hdrs, status, op, "idempotency-key" in headers)
    for key, response in responses.items():
        if int(key) < 300:
            _fix_success(response)


_BOUNDS = (
    ("ge", "minimum"),
    ("le", "maximum"),
    ("gt", "exclusiveMinimum"),
    ("lt", "exclusiveMaximum"),
    ("min_length", "minLength"),
    ("max_length", "maxLength"),
)


def _bounds_of_optional(param: dict[str, Any], handler: HTTPRouteHandler) -> None:
    """``oneOf: [X, null]`` of an optional query parameter: Litestar puts the bounds beside
    the ``oneOf`` and drops a bound of 0 (``ge=0``); they go on the non-null variant, from
    the handler's own declaration (the ``null`` variant stays: ``?x=null`` is taken as absent)."""
    field = handler.parsed_fn_signature.parameters.get(param["name"])
    kwargs = getattr(field, "kwarg_definition", None)
    schema = param["schema"]
    for _, key in _BOUNDS:
        schema.pop(key, None)
    for variant in schema["oneOf"]:
        if variant.get("type") == "null" or kwargs is None:
            continue
        for attr, key in _BOUNDS:
            value = getattr(kwargs, attr, None)
            if value is not None:
                variant[key] = value


def _response_headers(hdrs: dict[str, Any], status: int, op: Operation, idempotent: bool) -> None:
    hdrs["X-Request-ID"] = _HEADERS["X-Request-ID"]
    if op.rate_limited and status not in (401, 403, 304):
        for name in ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"):
            hdrs[name] = _HEADERS[name]
        hdrs["RateLimit-Policy"] = _HEADERS["RateLimit-Policy"]
    if status in (429, 503):
        hdrs["Retry-After"] = _HEADERS["Retry-After"]
    if status == 401:
        hdrs["WWW-Authenticate"] = _HEADERS["WWW-Authenticate"]
    if op.policy.cache and op.method == "GET" and status in (200, 304):
        for name in ("ETag", "Cache-Control", "X-Cache", "Age"):
            hdrs[name] = _HEADERS[name]
    if idempotent:
        hdrs["Idempotent-Replayed"] = _HEADERS["Idempotent-Replayed"]
    for name, header in list(hdrs.items()):
        # Litestar documents a handler's ResponseHeader in its own casing; keep one spelling
        canonical = next((h for h in _HEADERS if h.lower() == name.lower()), None)
        if canonical is not None and canonical != name:
            del hdrs[name]
            hdrs.setdefault(canonical, {**_HEADERS[canonical], **header})


def _fix_success(response: dict[str, Any]) -> None:
    content = response.get("content") or {}
    for media_type, media in content.items():
        schema = media.get("schema")
        if "json" in media_type and schema in ({"type": "string"}, {}):
            raise ValueError(
                f"a success answer documented as a bare string: {response.get('description')}"
            )


def _head_of(get: dict[str, Any]) -> dict[str, Any]:
    head = copy.deepcopy(get)
    head["operationId"] = get.get("operationId", "") + "Head"
    head["summary"] = "Headers only of: " + get.get("summary", "")
    for response in head.get("responses", {}).values():
        response.pop("content", None)
        response.pop("links", None)
    return head


def _options(path: str, methods: set[str], item: dict[str, Any]) -> dict[str, Any]:
    allowed = sorted(methods | {"OPTIONS"} | ({"HEAD"} if "GET" in methods else set()))
    name = re.sub(r"[^A-Za-z0-9]+", " ", path).title().replace(" ", "")
    # the path parameters as the other operations of the path declare them (the edge checks
    # a typed parameter before it answers OPTIONS: 422)
    params = {
        p["name"]: p
        for op in item.values()
        if isinstance(op, dict)
        for p in op.get("parameters", [])
        if p.get("in") == "path"
    }
    responses: dict[str, Any] = {
        "200": {
            "description": f"Allowed: {', '.join(allowed)}",
            "headers": {"Allow": _HEADERS["Allow"], "X-Request-ID": _HEADERS["X-Request-ID"]},
        }
    }
    if params:
        for status in (400, 422):
            responses[str(status)] = {
                "description": _WHY[status] if status == 422 else "The path does not parse",
                "headers": {"X-Request-ID": _HEADERS["X-Request-ID"]},
                "content": _problem_content(status, oauth=False),
            }
    return {
        "summary": "The methods of this path (answered by the edge)",
        "operationId": f"Options{name}",
        "security": [],
        "parameters": [_edge_param(p, params.get(p)) for p in re.findall(r"\{(\w+)\}", path)],
        "responses": responses,
    }


def _edge_param(name: str, declared: dict[str, Any] | None) -> dict[str, Any]:
    """A path parameter as the edge checks it before answering OPTIONS: its type (a uuid) and
    nothing a handler checks later (an enum of known values): any segment without control
    characters matches the route."""
    schema = (declared or {}).get("schema", {})
    if schema.get("format") == "uuid":
        kept = {"type": "string", "format": "uuid"}
    else:
        kept = {"type": "string", "pattern": "^[^\\x00-\\x1f\\x7f]+$"}
    return {"name": name, "in": "path", "required": True, "schema": kept}


class ContractJSON(JsonRenderPlugin):
    """Serves the finished document at ``/schema/openapi.json`` (built on first request).

    ``operations`` is called then: the route table and its rate-limit plans exist by then."""

    def __init__(self, operations: Callable[[], Iterable[Operation]] | None = None) -> None:
        super().__init__()
        self.operations = operations
        self._rendered: bytes | None = None
        self._doc: dict[str, Any] | None = None

    def document(self, openapi_schema: dict[str, Any]) -> dict[str, Any]:
        if self._doc is None:
            ops = self.operations() if self.operations is not None else ()
            self._doc = finish_document(openapi_schema, ops)
        return self._doc

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        if self._rendered is None:
            self._rendered = orjson.dumps(self.document(openapi_schema))
        return self._rendered
