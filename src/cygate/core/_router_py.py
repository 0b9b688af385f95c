"""Request routing, the pure-Python reference.

Two things live here, each with a compiled twin in :mod:`cygate.core._router_c`:

- :func:`normalize_path` turns the raw request path (ASGI ``raw_path``) into the one canonical
  spelling the router and every policy (rate limits, ACLs) see, so that ``/api%2Fv1/./x/`` can
  never slip past a rule written for ``/api/v1/x``.
- :class:`RouterPy` is a segment radix tree over (optional host) + method + canonical path.

The exceptions, the match kinds and the :class:`RouteMatch` result type are defined here only;
the compiled module imports them, so both implementations raise and return the same things.

Matching rules, in one place (the compiled twin follows them exactly):

- At each node the candidates are tried in the order static segment > segment parameter >
  ``path`` wildcard, with backtracking: when a branch dead-ends deeper (or ends on a route that
  does not take the method), the next candidate is tried. The first route that takes the method
  wins.
- For the method, a route's own method wins, then HEAD falls back to GET, then ``"*"``.
- When no route takes the method but some route has the path: ``METHOD_NOT_ALLOWED`` with the
  union of the methods of every such route (``HEAD`` added where ``GET`` is).
- Otherwise, when the path would match a route if a typed parameter (int/uuid) had passed its
  check: ``BAD_PARAM`` naming that parameter (the first one, in precedence order).
- Otherwise ``NOT_FOUND``.
- Host routes are searched first, then the host-less ones, as one search.

NOTE: a tree position holds at most one segment parameter (two with different names or types
conflict at ``add``), so "typed param > str param" never has to choose between siblings; the
parameter is simply tried after the static children and before the wildcard.
"""

from __future__ import annotations

import re
from enum import IntEnum
from typing import Any, NamedTuple

__all__ = [
    "BAD_PARAM",
    "FOUND",
    "MAX_PARAMS",
    "METHOD_NOT_ALLOWED",
    "NOT_FOUND",
    "MatchKind",
    "PathError",
    "RouteConflict",
    "RouteMatch",
    "RouterPy",
    "normalize_path",
]


class PathError(ValueError):
    """The request path cannot be made canonical (the gateway answers 400)."""


class RouteConflict(ValueError):
    """A route cannot be added: bad pattern syntax, a duplicate, or clashing parameters."""


class MatchKind(IntEnum):
    """What :meth:`RouterPy.match` found."""

    FOUND = 0
    NOT_FOUND = 1
    METHOD_NOT_ALLOWED = 2
    BAD_PARAM = 3


FOUND = MatchKind.FOUND
NOT_FOUND = MatchKind.NOT_FOUND
METHOD_NOT_ALLOWED = MatchKind.METHOD_NOT_ALLOWED
BAD_PARAM = MatchKind.BAD_PARAM


class RouteMatch(NamedTuple):
    """The answer of ``Router.match``; immutable, and often a shared pre-built instance."""

    kind: MatchKind
    """One of FOUND, NOT_FOUND, METHOD_NOT_ALLOWED, BAD_PARAM."""
    value: Any
    """FOUND: the value given to ``add`` (typed Any, so callers need no cast); else None."""
    params: dict[str, str] | None
    """FOUND: the raw parameter strings (a fresh dict) when the route has parameters, else None."""
    allowed: tuple[str, ...]
    """METHOD_NOT_ALLOWED: the sorted methods for the ``Allow`` header; else ()."""
    bad_param: str | None
    """BAD_PARAM: the name of the typed parameter that failed its check; else None."""


NOT_FOUND_MATCH: RouteMatch = RouteMatch(NOT_FOUND, None, None, (), None)

# ---------------------------------------------------------------------------------------------
# Path normalisation
# ---------------------------------------------------------------------------------------------

_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
# Anything that makes a path non-canonical apart from a trailing slash: an escape, an empty
# segment or a dot segment.
_NEEDS_WORK = re.compile(rb"%|//|/\.\.?(?:/|\Z)")
_HEX = frozenset(b"0123456789abcdefABCDEF")


def _percent_decode(raw: bytes) -> bytes:
    parts = raw.split(b"%")
    out = [parts[0]]
    for part in parts[1:]:
        if len(part) < 2 or part[0] not in _HEX or part[1] not in _HEX:
            raise PathError(f"bad percent-escape in path: %{part[:2]!r}")
        out.append(bytes((int(part[:2], 16),)))
        out.append(part[2:])
    return b"".join(out)


def _decode_utf8(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PathError("path is not valid UTF-8") from None


def normalize_path(raw: bytes) -> str:
    """Return the canonical form of a raw request path (ASGI ``raw_path``, no query string).

    Percent-escapes are decoded once (``%2F`` becomes a separator), the result must be UTF-8
    without control characters, repeated slashes collapse, ``.`` and ``..`` segments are resolved
    (``..`` clamps at the root) and a trailing slash is dropped except for ``/`` itself.

    Raises :class:`PathError` when that is impossible.
    """
    if not raw.startswith(b"/"):
        raise PathError("path must start with '/'")
    if _CONTROL.search(raw) is not None:
        raise PathError("control character in path")
    if _NEEDS_WORK.search(raw) is None and (len(raw) == 1 or not raw.endswith(b"/")):
        # PERF: already canonical (the common case): one scan and one decode.
        return _decode_utf8(raw)
    decoded = _percent_decode(raw) if b"%" in raw else raw
    if _CONTROL.search(decoded) is not None:
        raise PathError("control character in path")
    segments: list[str] = []
    for segment in _decode_utf8(decoded).split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    return "/" + "/".join(segments)


# ---------------------------------------------------------------------------------------------
# Patterns
# ---------------------------------------------------------------------------------------------

T_STR = 0
T_INT = 1
T_UUID = 2
T_PATH = 3
_TYPES = {"str": T_STR, "int": T_INT, "uuid": T_UUID, "path": T_PATH}
MAX_PARAMS = 32
"""A pattern has at most this many parameters (the compiled matcher's fixed stack)."""

_INT_RE = re.compile(r"-?[0-9]{1,18}")
_UUID_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_METHOD_RE = re.compile(r"[A-Z][A-Z0-9_-]*")


def parse_pattern(pattern: str) -> tuple[str, list[tuple[str, str, int]]]:
    """Normalise a route pattern and split it into ``(kind, text, type)`` segments.

    ``kind`` is ``"static"`` (``text`` is the segment) or ``"param"`` (``text`` is the name).
    Raises :class:`RouteConflict` for bad syntax.
    """
    try:
        canonical = normalize_path(pattern.encode("utf-8"))
    except (PathError, UnicodeEncodeError) as exc:
        raise RouteConflict(f"bad route pattern {pattern!r}: {exc}") from None
    segments: list[tuple[str, str, int]] = []
    names: set[str] = set()
    parts = [] if canonical == "/" else canonical[1:].split("/")
    for index, part in enumerate(parts):
        if "{" not in part and "}" not in part:
            segments.append(("static", part, T_STR))
            continue
        if (
            not (part.startswith("{") and part.endswith("}"))
            or part.count("{") != 1
            or (part.count("}") != 1)
        ):
            raise RouteConflict(
                f"bad route pattern {pattern!r}: a parameter must be a whole segment "
                f"'{{name}}' or '{{name:type}}', got {part!r}"
            )
        name, _, type_name = part[1:-1].partition(":")
        if not name.isidentifier():
            raise RouteConflict(f"bad route pattern {pattern!r}: bad parameter name {name!r}")
        if type_name == "" and ":" in part:
            raise RouteConflict(f"bad route pattern {pattern!r}: empty type for {name!r}")
        ptype = _TYPES.get(type_name or "str")
        if ptype is None:
            raise RouteConflict(f"bad route pattern {pattern!r}: unknown type {type_name!r}")
        if ptype == T_PATH and index != len(parts) - 1:
            raise RouteConflict(f"bad route pattern {pattern!r}: '{{{part[1:-1]}}}' not last")
        if name in names:
            raise RouteConflict(f"bad route pattern {pattern!r}: parameter {name!r} twice")
        names.add(name)
        segments.append(("param", name, ptype))
    if len(names) > MAX_PARAMS:
        raise RouteConflict(f"bad route pattern {pattern!r}: more than {MAX_PARAMS} parameters")
    return canonical, segments


def check_param(ptype: int, segment: str) -> bool:
    """Whether ``segment`` is a valid value for a segment parameter of type ``ptype``."""
    if ptype == T_INT:
        return _INT_RE.fullmatch(segment) is not None
    if ptype == T_UUID:
        return _UUID_RE.fullmatch(segment) is not None
    return segment != ""


# ---------------------------------------------------------------------------------------------
# The tree
# ---------------------------------------------------------------------------------------------


class _Entry:
    """One route's target: its value and its pre-built FOUND answer (no-parameter routes)."""

    __slots__ = ("found", "value")

    def __init__(self, value: Any) -> None:
        self.value = value
        self.found: RouteMatch = RouteMatch(FOUND, value, None, (), None)


class _Leaf:
    """The routes that end at one tree position (or at one wildcard), by method."""

    __slots__ = ("allowed", "any", "methods", "not_allowed")

    def __init__(self) -> None:
        self.methods: dict[str, _Entry] = {}
        self.any: _Entry | None = None
        self.allowed: tuple[str, ...] = ()
        self.not_allowed: RouteMatch = NOT_FOUND_MATCH

    def add(self, method: str, entry: _Entry) -> None:
        if method == "*":
            self.any = entry
        else:
            self.methods[method] = entry
        allowed = set(self.methods)
        if "GET" in allowed:
            allowed.add("HEAD")
        self.allowed = tuple(sorted(allowed))
        self.not_allowed = RouteMatch(METHOD_NOT_ALLOWED, None, None, self.allowed, None)

    def has(self, method: str) -> bool:
        return (self.any is not None) if method == "*" else method in self.methods

    def lookup(self, method: str) -> _Entry | None:
        """The route for ``method``: its own, else GET for HEAD, else the ``"*"`` one."""
        entry = self.methods.get(method)
        if entry is None and method == "HEAD":
            entry = self.methods.get("GET")
        return self.any if entry is None else entry


class _Node:
    """One tree position: static children, at most one parameter child, a wildcard."""

    __slots__ = (
        "leaf",
        "param",
        "param_bad",
        "param_name",
        "param_type",
        "static",
        "wild_leaf",
        "wild_name",
    )

    def __init__(self) -> None:
        self.static: dict[str, _Node] = {}
        self.param: _Node | None = None
        self.param_name = ""
        self.param_type = T_STR
        self.param_bad: RouteMatch = NOT_FOUND_MATCH
        self.leaf: _Leaf | None = None
        self.wild_name = ""
        self.wild_leaf: _Leaf | None = None


class _Search:
    """The state of one match: where the first hits of each kind were found."""

    __slots__ = ("bad", "found", "method", "not_allowed", "params", "path", "segments")

    def __init__(self, method: str, path: str) -> None:
        self.method = method
        self.path = path
        self.segments = [] if path == "/" else path[1:].split("/")
        self.params: list[tuple[str, str]] = []
        self.found: _Entry | None = None
        self.not_allowed: list[_Leaf] = []
        self.bad: RouteMatch | None = None


def _terminal(leaf: _Leaf, search: _Search, bad: RouteMatch | None) -> bool:
    if bad is not None:
        # The shape matches but a typed parameter failed: remember the first such failure.
        if search.bad is None:
            search.bad = bad
        return False
    entry = leaf.lookup(search.method)
    if entry is not None:
        search.found = entry
        return True
    search.not_allowed.append(leaf)
    return False


def _walk(node: _Node, search: _Search, index: int, bad: RouteMatch | None) -> bool:
    """Depth-first search in precedence order; True once a route takes the method."""
    if bad is not None and search.bad is not None:
        return False  # a failed parameter was already recorded; nothing more to learn here
    segments = search.segments
    params = search.params
    if index == len(segments):
        if node.leaf is not None and _terminal(node.leaf, search, bad):
            return True
        if node.wild_leaf is not None:
            params.append((node.wild_name, ""))
            if _terminal(node.wild_leaf, search, bad):
                return True
            params.pop()
        return False
    segment = segments[index]
    child = node.static.get(segment)
    if child is not None and _walk(child, search, index + 1, bad):
        return True
    if node.param is not None:
        if check_param(node.param_type, segment):
            params.append((node.param_name, segment))
            if _walk(node.param, search, index + 1, bad):
                return True
            params.pop()
        elif node.param_type != T_STR and search.bad is None:
            _walk(node.param, search, index + 1, node.param_bad if bad is None else bad)
    if node.wild_leaf is not None:
        params.append((node.wild_name, "/".join(segments[index:])))
        if _terminal(node.wild_leaf, search, bad):
            return True
        params.pop()
    return False


class RouterPy:
    """Route table: ``add`` at start-up, then ``match`` per request (pure-Python twin)."""

    __slots__ = ("_hosts", "_root", "_routes")

    def __init__(self) -> None:
        self._root = _Node()
        self._hosts: dict[str, _Node] = {}
        self._routes: list[tuple[str | None, str, str, Any]] = []

    def add(self, method: str, pattern: str, value: Any, host: str | None = None) -> None:
        """Add a route; ``method`` is an upper-case HTTP method or ``"*"`` (any).

        ``pattern`` segments are static text, ``{name}``, ``{name:int}``, ``{name:uuid}`` or, as
        the last one, ``{name:path}`` (the rest of the path, possibly empty). Raises
        :class:`RouteConflict` on bad syntax, a duplicate route or clashing parameters.
        """
        if method != "*" and _METHOD_RE.fullmatch(method) is None:
            raise ValueError(f"method must be an upper-case HTTP method or '*', got {method!r}")
        if host is not None:
            host = host.lower()
        canonical, segments = parse_pattern(pattern)
        root = self._root if host is None else self._hosts.get(host, _Node())
        # Check everything before changing anything, so a rejected route leaves no trace.
        node: _Node | None = root
        for kind, text, ptype in segments:
            if node is None:
                break
            if kind == "static":
                node = node.static.get(text)
            elif ptype == T_PATH:
                if node.wild_leaf is not None and node.wild_name != text:
                    raise RouteConflict(
                        f"route {pattern!r}: wildcard {{{text}:path}} clashes with "
                        f"{{{node.wild_name}:path}} at the same position"
                    )
                if node.wild_leaf is not None and node.wild_leaf.has(method):
                    raise RouteConflict(f"duplicate route {method} {canonical} (host {host})")
                node = None
            else:
                if node.param is not None and (node.param_name, node.param_type) != (text, ptype):
                    raise RouteConflict(
                        f"route {pattern!r}: parameter {text!r} clashes with "
                        f"{node.param_name!r} at the same position"
                    )
                node = node.param
        else:
            if node is not None and node.leaf is not None and node.leaf.has(method):
                raise RouteConflict(f"duplicate route {method} {canonical} (host {host})")

        entry = _Entry(value)
        node = root
        for kind, text, ptype in segments:
            if kind == "static":
                node = node.static.setdefault(text, _Node())
            elif ptype == T_PATH:
                node.wild_name = text
                if node.wild_leaf is None:
                    node.wild_leaf = _Leaf()
                node.wild_leaf.add(method, entry)
                break
            else:
                if node.param is None:
                    node.param = _Node()
                    node.param_name = text
                    node.param_type = ptype
                    node.param_bad = RouteMatch(BAD_PARAM, None, None, (), text)
                node = node.param
        else:
            if node.leaf is None:
                node.leaf = _Leaf()
            node.leaf.add(method, entry)
        if host is not None:
            self._hosts[host] = root
        self._routes.append((host, method, canonical, value))

    def match(self, method: str, path: str, host: str | None = None) -> RouteMatch:
        """Find the route for a request.

        ``path`` must already be canonical (:func:`normalize_path`) and ``host`` lower-case
        without a port. Returns a :class:`RouteMatch`; see the module docstring for the rules.
        """
        search = _Search(method, path)
        if path.startswith("/"):
            if host is not None:
                root = self._hosts.get(host)
                if root is not None and _walk(root, search, 0, None):
                    return self._found(search)
            if _walk(self._root, search, 0, None):
                return self._found(search)
        if search.not_allowed:
            if len(search.not_allowed) == 1:
                return search.not_allowed[0].not_allowed
            allowed = sorted({m for leaf in search.not_allowed for m in leaf.allowed})
            return RouteMatch(METHOD_NOT_ALLOWED, None, None, tuple(allowed), None)
        if search.bad is not None:
            return search.bad
        return NOT_FOUND_MATCH

    @staticmethod
    def _found(search: _Search) -> RouteMatch:
        entry = search.found
        assert entry is not None
        if not search.params:
            return entry.found
        return RouteMatch(FOUND, entry.value, dict(search.params), (), None)

    def routes(self) -> list[tuple[str | None, str, str, Any]]:
        """Every route as ``(host, method, canonical pattern, value)``, in insertion order."""
        return list(self._routes)

    # The compiled twin builds its own tables from this tree (add stays in one place).
    def _trees(self) -> tuple[_Node, dict[str, _Node]]:
        return self._root, self._hosts
