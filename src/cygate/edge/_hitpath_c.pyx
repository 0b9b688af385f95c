# cython: language_level=3
"""The edge's fused hit path, compiled; see :mod:`cygate.edge._hitpath_py` (the reference: the
same decisions in the same order, the same answer, and None before any side effect whenever
the general edge must serve the request).

What compiling buys is what the server amplifies (docs/caching.md): objects. The header scan,
the id and trace checks, the bearer parse, the rate-limit key and the response head are built
in C; one clock read serves the metrics and L1 (``CLOCK_MONOTONIC``, the clock of both
``time.perf_counter`` and ``time.monotonic`` on Linux). It reads other modules through their
public interfaces only: the L1's node by ``L1.nodes`` (read as ``L1.get`` reads it: ``expires``,
``value``, the ``visited`` mark), the entry through its :class:`EntryHot` record
(``Entry.hot``, C fields kept by ``Entry.place`` and ``Entry.hit``), the revoked ``jti`` by
``Revocations.revoked`` (a dict look-up), the compiled rate tables and
metrics series by their ``.pxd`` declarations, ``RateLimitStage.top_up``; its tables (routes,
cache rules, rate-limit plans) are those of its :class:`~cygate.edge.hitplan.HitPlan`. The
reference calls the methods, and the tests hold both to the general path. A hit is its own
awaitable (:meth:`HitPath.serve`): the server's await drives its two sends, with no coroutine
and no Python frame per hit.

Beyond the reference, memos that change no answer: each raw path's route with the ``Host``
it was routed for (routes that are never hits too, so a proxied request pays one look-up
before the general path; bounded, emptied whole when full, new with a new plan), each
subject's rate-limit key string (spelled by ``cygate.edge.ratekey``), each route's metrics
series and rate-limit plan (``_Rated``), and the last tokens seen (64 slots: an equal token is
passed to the verifier as the object it has seen, whose hash is remembered). Hits are
recorded through the compiled series' C interface (``_reqmetrics_c.pxd``): no Python call,
no float. Ids come from the plan's minter (``core/_ids_c.pxd``: ``IdMinter.draw`` at C level,
formatted here without the minter's objects), the general path's minter too.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_Copy, PyDict_GetItem, PyDict_SetItem
from cpython.list cimport PyList_GET_ITEM, PyList_New, PyList_SET_ITEM
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from libc.stdint cimport uint64_t
from libc.string cimport memchr, memcmp, memcpy
from posix.time cimport CLOCK_MONOTONIC, CLOCK_REALTIME, clock_gettime, timespec

from cygate.core._ids_c cimport IdMinter, _write_ids
from cygate.core._ratelimit_c cimport GCRALimiterC, LeaseTableC, _Table
from cygate.core._reqmetrics_c cimport RequestRecorder, RequestSeries, Tally

from cygate.core.ratelimit import GRANTED, NEED_REDIS
from cygate.core.router import FOUND, normalize_path
from cygate.edge import ratekey
from cygate.edge.compress import VARY_ACCEPT_ENCODING
from cygate.edge.cors import VARY_ORIGIN

cdef extern from "Python.h":
    enum:
        PYGEN_RETURN
        PYGEN_NEXT
    int PyIter_Send(object iterator, object arg, PyObject** presult) except? -1
    bint PyCoro_CheckExact(object o)

cdef object _SENT = object()
cdef str _REFRESH = "cygate.cache.refresh"
cdef str _GET = "GET"
cdef str _LOCAL = "local"
cdef str _START = "http.response.start"
cdef dict _START_200 = {"type": _START, "status": 200, "headers": None}
cdef bytes _X_REQUEST_ID = b"x-request-id"
cdef bytes _TRACEPARENT = b"traceparent"
cdef bytes _EMPTY = b""
cdef object _FOUND = FOUND
cdef object _GRANTED = GRANTED
cdef object _NEED_REDIS = NEED_REDIS
cdef object _normalize = normalize_path
cdef str _EVERYONE = ratekey.EVERYONE  # the rate-limit key format (``cygate.edge.ratekey``)
cdef str _ANONYMOUS = ratekey.ANONYMOUS
cdef str _ADDRESS = ratekey.ADDRESS
cdef object _principal_key = ratekey.principal_key
cdef object _route_key = ratekey.route_key
cdef tuple _VARY_ORIGIN = VARY_ORIGIN
cdef tuple _VARY_ENCODING = VARY_ACCEPT_ENCODING
cdef Py_ssize_t _MEMO_SIZE = 4096
cdef Py_ssize_t _MEMO_PATH = 256

cdef inline Py_ssize_t _slot_of(const char* p, Py_ssize_t n, int bits) noexcept:
    """A slot of ``2**bits`` for the ``n`` bytes at ``p``, from their length and last 8 bytes (a
    path's id, a token's signature: where such values differ). PERF: no hashing of the whole
    value; the slot's holder is compared whole (:func:`_same`)."""
    cdef uint64_t tail = 0
    memcpy(&tail, p + (n - 8 if n >= 8 else 0), 8 if n >= 8 else n)
    tail ^= <uint64_t>n << 56
    return <Py_ssize_t>((tail * <uint64_t>0x9E3779B97F4A7C15) >> (64 - bits))


cdef inline bint _same(object known, const char* p, Py_ssize_t n) noexcept:
    """``known`` is bytes equal to the ``n`` bytes at ``p``."""
    return (type(known) is bytes and PyBytes_GET_SIZE(<bytes>known) == n
            and memcmp(PyBytes_AS_STRING(<bytes>known), p, n) == 0)


cdef inline double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef inline bint _named(bytes name, const char* lit, Py_ssize_t n) noexcept:
    return PyBytes_GET_SIZE(name) == n and memcmp(PyBytes_AS_STRING(name), lit, n) == 0


cdef inline bint _is_hex(unsigned char c) noexcept:
    return (48 <= c <= 57) or (97 <= c <= 102)


# The edge's rules for the ids it keeps (``cygate.core.ids.valid_request_id`` and
# ``valid_traceparent``, regular expressions there), compiled.
cdef bint _valid_request_id(bytes value) noexcept:
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(value)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(value), i
    cdef unsigned char c
    if n < 1 or n > 128:
        return False
    for i in range(n):
        c = p[i]
        if not ((48 <= c <= 58) or (65 <= c <= 90) or (97 <= c <= 122) or c == 46 or c == 95
                or c == 45):
            return False  # [A-Za-z0-9._:-] (58 is ':')
    return True


cdef bint _valid_traceparent(bytes value) noexcept:
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(value)
    cdef Py_ssize_t i
    cdef bint zero = True, zero_span = True
    if PyBytes_GET_SIZE(value) != 55 or p[0] != 48 or p[1] != 48 or p[2] != 45:
        return False
    if p[35] != 45 or p[52] != 45:
        return False
    for i in range(3, 35):
        if not _is_hex(p[i]):
            return False
        if p[i] != 48:
            zero = False
    for i in range(36, 52):
        if not _is_hex(p[i]):
            return False
        if p[i] != 48:
            zero_span = False
    return _is_hex(p[53]) and _is_hex(p[54]) and not zero and not zero_span


cdef bint _bearer_span(bytes header, Py_ssize_t* start, Py_ssize_t* end) noexcept:
    """Where the token of ``Bearer <token>`` lies in ``header`` (scheme case-insensitive,
    spaces stripped); False when it is not a bearer header."""
    cdef const char* p = PyBytes_AS_STRING(header)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(header), i, a, b
    cdef const char* scheme = b"bearer"
    cdef char c
    if n < 7 or p[6] != 32:
        return False
    for i in range(6):
        c = p[i]
        if 65 <= c <= 90:
            c = c + 32  # bytes.lower(): ASCII letters only
        if c != scheme[i]:
            return False
    a = 7
    b = n
    while a < b and p[a] == 32:
        a += 1
    while b > a and p[b - 1] == 32:
        b -= 1
    start[0] = a
    end[0] = b
    return True


@cython.freelist(8)
@cython.final
cdef class Head:
    """See :class:`cygate.edge._hitpath_py.Head`: here C fields, filled by :func:`_scan`."""

    cdef readonly object authorization
    cdef readonly object host
    cdef readonly Py_ssize_t hosts
    cdef readonly bint empty_host
    cdef readonly bytes request_id
    cdef readonly bytes traceparent
    cdef readonly object content_length
    cdef readonly object content_type
    cdef readonly bint chunked
    cdef readonly bint conditional
    cdef readonly bint odd
    cdef readonly object accept_encoding
    cdef readonly object origin


cdef object _NO_LENGTH = -1
cdef object _BAD_LENGTH = -2


cdef int _scan(Head head, object headers, dict hosts, object host_of, list host_raw,
               list host_str) except -1:
    """One pass over a request's headers into ``head`` (every field set): what
    :func:`cygate.edge._hitpath_py.scan_head` does, with a pair that is not two bytes objects
    skipped (``odd``). With ``host_raw``/``host_str``: the last ``Host`` values seen, one per
    slot, compared byte for byte before ``hosts`` is asked (PERF: no hashing)."""
    cdef object name, value, host
    cdef Py_ssize_t slot = 0
    cdef PyObject* found
    head.authorization = None
    head.host = ""
    head.hosts = 0
    head.empty_host = False
    head.request_id = _EMPTY
    head.traceparent = _EMPTY
    head.content_length = _NO_LENGTH
    head.content_type = None
    head.chunked = False
    head.conditional = False
    head.odd = False
    head.accept_encoding = None
    head.origin = None
    for name, value in headers:
        if type(name) is not bytes or type(value) is not bytes:
            head.odd = True
            continue
        if _named(<bytes>name, b"authorization", 13):
            if head.authorization is None:
                head.authorization = value
        elif _named(<bytes>name, b"host", 4):
            head.hosts += 1
            if PyBytes_GET_SIZE(value) == 0:
                head.empty_host = True
            if host_raw is not None:
                slot = _slot_of(PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value), 3)
                if _same(<object>PyList_GET_ITEM(host_raw, slot), PyBytes_AS_STRING(value),
                         PyBytes_GET_SIZE(value)):
                    head.host = <object>PyList_GET_ITEM(host_str, slot)
                    continue
            found = PyDict_GetItem(hosts, value)
            host = <object>found if found != NULL else None
            if not host:
                host = host_of(value)
            head.host = host
            if host_raw is not None:
                host_raw[slot] = value
                host_str[slot] = host
        elif _named(<bytes>name, b"x-request-id", 12):
            if _valid_request_id(<bytes>value):
                head.request_id = <bytes>value
        elif _named(<bytes>name, b"traceparent", 11):
            if _valid_traceparent(<bytes>value):
                head.traceparent = <bytes>value
        elif _named(<bytes>name, b"content-length", 14):
            head.content_length = int(value) if (<bytes>value).isdigit() else _BAD_LENGTH
        elif _named(<bytes>name, b"content-type", 12):
            head.content_type = value
        elif _named(<bytes>name, b"transfer-encoding", 17):
            head.chunked = True
        elif (_named(<bytes>name, b"cache-control", 13) or _named(<bytes>name, b"pragma", 6)
              or _named(<bytes>name, b"if-none-match", 13)):
            head.conditional = True
        elif _named(<bytes>name, b"accept-encoding", 15):
            head.accept_encoding = value
        elif _named(<bytes>name, b"origin", 6):
            head.origin = value
    return 0


def scan_head(headers, dict hosts not None, host_of):
    """See :func:`cygate.edge._hitpath_py.scan_head`."""
    cdef Head head = Head.__new__(Head)
    _scan(head, headers, hosts, host_of, None, None)
    return head


@cython.freelist(32)
@cython.final
cdef class Hit:
    """An answer: the two messages to send, then :meth:`done` (counts the request).

    With a ``send`` (:meth:`HitPath.serve`) it is also the awaitable that sends them: awaiting
    it sends the start message, then the body, each through ``send`` and its awaitable, and
    counts the request once, when both are sent or when either fails (a coroutine's
    ``try``/``finally``, written as the iterator protocol: Granian's awaitables complete at
    once, another server's may suspend, and both work)."""

    cdef readonly object start
    cdef readonly object body
    cdef RequestRecorder recorder
    cdef RequestSeries series
    cdef double started
    cdef object _send
    cdef object _inner  # the iterator of the send being awaited
    cdef int _stage  # messages sent so far (0, 1, 2)
    cdef bint _counted
    cdef object _yielded  # what the send in flight yielded last

    def done(self):
        """Record the request in the edge's metrics (its status, timed from ``started``)."""
        self._finish()

    cdef void _finish(self) noexcept:
        if not self._counted:
            self._counted = True
            self.series._observe(_now() - self.started)
            self.recorder._dirty = True

    def __await__(self):
        if self._send is None:
            raise TypeError("this Hit has no send to await")
        return self

    def __next__(self):
        if self._run(None) is _SENT:
            raise StopIteration
        return self._yielded

    def send(self, value):
        if self._run(value) is _SENT:
            raise StopIteration
        return self._yielded

    def throw(self, typ, val=None, tb=None):
        """An exception from the awaiting task (a cancellation): into the send in flight, if
        it takes one; else (or when that ends it) the request is counted and it is raised."""
        inner = self._inner
        thrower = getattr(inner, "throw", None) if inner is not None else None
        if thrower is not None:
            try:
                result = thrower(typ) if val is None and tb is None else thrower(typ, val, tb)
            except StopIteration:
                self._inner = None
                return self.send(None)
            except BaseException:
                self._inner = None
                self._finish()
                raise
            return result
        self._inner = None
        self._finish()
        if isinstance(typ, BaseException):
            raise typ
        raise (typ() if val is None else val if isinstance(val, BaseException) else typ(val))

    def close(self):
        inner = self._inner
        self._inner = None
        closer = getattr(inner, "close", None) if inner is not None else None
        try:
            if closer is not None:
                closer()
        finally:
            self._finish()

    cdef object _run(self, object value):
        """Advance the sends: ``_SENT`` when both are done, else ``self`` with ``_yielded``
        set to what the send in flight yields (to be yielded to the server's loop)."""
        cdef PyObject* result = NULL
        cdef int r
        try:
            while True:
                if self._inner is None:
                    if self._stage == 0:
                        message = self.start
                    elif self._stage == 1:
                        message = self.body
                    else:
                        break
                    self._stage += 1
                    awaitable = self._send(message)
                    self._inner = awaitable if PyCoro_CheckExact(awaitable) else awaitable.__await__()
                    value = None
                r = PyIter_Send(self._inner, value, &result)
                if r == PYGEN_NEXT:
                    self._yielded = <object>result
                    Py_XDECREF(result)  # (a new reference; ``_yielded`` holds its own)
                    return self
                Py_XDECREF(result)  # what the awaitable returned: nothing an ASGI send gives
                self._inner = None
        except BaseException:
            self._inner = None
            self._finish()
            raise
        self._finish()
        return _SENT


@cython.final
cdef class EntryHot:
    """See :class:`cygate.edge._hitpath_py.EntryHot`: here C fields, read in place."""

    cdef public double born
    cdef public double fresh_until
    cdef public long long age
    cdef public object hit
    cdef public int status
    cdef public bint servable
    cdef public object body_message
    cdef public Py_ssize_t encodable

    def __init__(self, int status, bint servable, body_message, Py_ssize_t encodable=-1):
        self.status = status
        self.encodable = encodable
        self.servable = servable
        self.body_message = body_message
        self.born = 0.0
        self.fresh_until = 0.0
        self.age = -1
        self.hit = ()


cdef int _K_NONE = 0  # a limit the hit path leaves to the general path (two parts, api-key...)
cdef int _K_ALL = 1
cdef int _K_ROUTE = 2
cdef int _K_CALLER = 3
cdef int _K_SUB = 4
cdef int _K_IP = 5
cdef dict _PART_KINDS = {"route": _K_ROUTE, "caller": _K_CALLER, "sub": _K_SUB, "ip": _K_IP}


@cython.final
cdef class _Rated:
    """A route's rate-limit plan as the hit path uses it: valid while the plan's entry for
    the route is ``plan`` (plans and their limits are never changed, only replaced)."""

    cdef object plan
    cdef int kind
    cdef str route_key
    cdef GCRALimiterC gcra  # the limit's table: the GCRA one (local mode), or
    cdef LeaseTableC leases  # its leases (the global modes)
    cdef object single
    cdef object low_water
    cdef dict inflight
    cdef Tally tally  # the limit's ``allowed`` counter
    cdef object limit_pair
    cdef object policy_pair


@cython.final
cdef class HitPath:
    """See :class:`cygate.edge._hitpath_py.HitPath`."""

    cdef readonly object plan
    cdef readonly object router
    cdef readonly object cache
    cdef readonly object token
    cdef readonly object rate
    cdef dict rate_plans
    cdef readonly RequestRecorder recorder
    cdef dict memo
    cdef dict series
    cdef dict caller_keys
    cdef dict rated
    cdef Tally hits_tally  # the cache's hit-l1 counter, when it is the compiled one
    cdef object _jti_of, _jti, _sub_of, _sub  # the last principal's jti and sub
    cdef list _tokens
    cdef list _path_raw
    cdef list _path_memo
    cdef list _host_raw
    cdef list _host_str
    cdef object verifier
    cdef object revocations
    cdef object _verify
    cdef dict revoked
    cdef dict routes
    cdef dict l1_map
    cdef tuple security
    cdef bint trusted
    cdef object caller_key
    cdef IdMinter ids
    cdef dict hosts
    cdef object host_of
    cdef bint cors  # (the plan's)
    cdef object compression  # (the plan's, or None)
    cdef object _coding_for, _kept  # its bound methods
    cdef Py_ssize_t compress_min  # its ``min_bytes``; -1: compression off
    cdef Head _head  # this request's scan (handed to the general path when declined)
    cdef bint _scanned
    cdef readonly Head last_head
    cdef readonly object lease_miss  # (stage, limit, key): see the pure twin

    def __init__(self, *, plan):
        self.plan = plan
        self.router = plan.router
        cache = plan.cache
        self.cache = cache
        self.routes = plan.routes
        tally = getattr(cache, "n_hit_l1", None)
        self.hits_tally = <Tally>tally if type(tally) is Tally else None
        self.l1_map = cache.l1.nodes  # (a live mapping, the same for the L1's life)
        token = plan.token
        self.token = token
        self.verifier = token.verifier if token is not None else None
        self.revocations = token.revocations if token is not None else None
        # (a live mapping, the same for the revocations' life: the revoked jti)
        self.revoked = self.revocations.revoked if token is not None else None
        # PERF: bound once (the verifier is fixed for this HitPath)
        self._verify = self.verifier.verify if token is not None else None
        self.rate = plan.rate
        self.rate_plans = plan.rate_plans
        self.security = plan.security
        self.trusted = plan.trusted
        self.caller_key = plan.caller_key
        self.recorder = plan.recorder
        self.memo = {}
        self.series = {}
        self.caller_keys = {}
        self.rated = {}
        self._tokens = [None] * 64  # (``_slot_of(..., 6)``)
        self._path_raw = [None] * 256  # the last raw path seen in each slot (``_slot_of``)
        self._path_memo = [None] * 256  # ... and its memo tuple
        self._host_raw = [None] * 8
        self._host_str = [None] * 8
        if plan.ids is None:
            raise TypeError("the plan has no id minter")
        self.ids = plan.ids  # (the compiled IdMinter: its ``draw`` is called at C level)
        self.hosts = plan.hosts
        self.host_of = plan.host_of
        self.cors = plan.cors
        self.compression = plan.compression
        if self.compression is not None:
            self.compress_min = self.compression.min_bytes
            self._coding_for = self.compression.coding_for
            self._kept = self.compression.kept
        else:
            self.compress_min = -1
        self._head = Head.__new__(Head)
        self.last_head = None
        self.lease_miss = None

    def serve(self, scope, send):
        """See :meth:`cygate.edge._hitpath_py.HitPath.serve`: here the awaitable is the
        :class:`Hit` itself. PERF: the edge returns it to the server as it is, so a hit has no
        coroutine and no Python frame: the server's own await drives the two sends."""
        cdef Hit hit = self._answer(scope)
        if hit is None:
            self._declined()
            return None
        hit._send = send
        return hit

    def answer(self, scope):
        """The hit for ``scope``, or None: then the general edge serves it (nothing changed;
        :attr:`last_head` holds the scan of its headers, if it got that far)."""
        cdef Hit hit = self._answer(scope)
        if hit is None:
            self._declined()
        return hit

    cdef int _declined(self) except -1:
        """After a None: :attr:`last_head` is this request's scan (then a new record for the
        next one), or None when it was declined before the scan."""
        if self._scanned:
            self.last_head = self._head
            self._head = Head.__new__(Head)
        else:
            self.last_head = None
        return 0

    cdef Hit _answer(self, scope):
        cdef double now = _now()
        cdef object authorization = None, host = None, request_id = _EMPTY, traceparent = _EMPTY
        cdef object name, value, raw_path, path, match, policy, route, principal = None, roles
        cdef object token, caller = None, spec, key, entry
        cdef object hit_headers, start
        cdef _Table table = None
        cdef _Rated rated = None
        cdef EntryHot hot
        cdef PyObject* remembered_plan
        cdef tuple remembered = None
        cdef char rid[24]
        cdef char tp[55]
        cdef long long age
        cdef Hit hit
        cdef PyObject* found
        cdef Py_ssize_t i, n_hit, n_sec, slot
        cdef list out
        cdef Head head
        cdef bint vary_encoding = False
        cdef object kept = None, variant = None, coding, hname
        self._scanned = False
        self.lease_miss = None
        if type(scope) is not dict:
            return None
        if scope["type"] != "http" or scope["method"] != _GET or _REFRESH in <dict>scope:
            return None
        headers = scope["headers"]
        head = self._head
        _scan(head, headers, self.hosts, self.host_of, self._host_raw, self._host_str)
        self._scanned = True
        if head.odd or head.conditional or head.content_length is not _NO_LENGTH:
            return None  # revalidation, no-cache, a 304, a body: the general path's
        if head.hosts != 1 or head.empty_host:
            return None  # no Host, a second one, an empty one: the general path's (a 400)
        if self.cors and head.origin is not None:
            return None  # a cross-origin request: the general path adds its CORS headers
        authorization = head.authorization
        host = head.host
        request_id = head.request_id
        traceparent = head.traceparent
        raw_path = (<dict>scope).get("raw_path")
        if not raw_path:
            raw_path = scope["path"].encode("utf-8")
        if type(raw_path) is not bytes:
            return None
        if memchr(PyBytes_AS_STRING(raw_path), 63, PyBytes_GET_SIZE(raw_path)) != NULL:
            return None  # a "?" in the raw path: the general path splits it off
        # PERF: the last path seen in its slot first (a byte compare), then the memo (a hash
        # of the new bytes object); both hold the same tuples (``_remember``).
        slot = _slot_of(PyBytes_AS_STRING(raw_path), PyBytes_GET_SIZE(raw_path), 8)
        if _same(<object>PyList_GET_ITEM(self._path_raw, slot), PyBytes_AS_STRING(raw_path),
                 PyBytes_GET_SIZE(raw_path)):
            found = PyList_GET_ITEM(self._path_memo, slot)
        else:
            found = PyDict_GetItem(self.memo, raw_path)
            if found != NULL:
                self._path_raw[slot] = raw_path
                self._path_memo[slot] = <object>found
        if found != NULL and <object>PyTuple_GET_ITEM(<tuple>found, 0) is host:
            remembered = <tuple>found
            path = <object>PyTuple_GET_ITEM(remembered, 1)
            policy = <object>PyTuple_GET_ITEM(remembered, 2)
            name = <object>PyTuple_GET_ITEM(remembered, 5)
            roles = <object>PyTuple_GET_ITEM(remembered, 6)
        else:
            try:
                path = _normalize(raw_path)
            except Exception:
                return None
            match = self.router.match(_GET, path, host or None)
            if match.kind != _FOUND:
                return None  # (not remembered: a scan of missing paths must not fill it)
            policy = match.value
            if policy.target != _LOCAL or policy.cache is None:
                policy = None  # never a hit here (a proxied route, one without a rule)
                name = roles = None
            else:
                name = policy.name
                roles = policy.roles
            if PyBytes_GET_SIZE(raw_path) <= _MEMO_PATH:
                # PERF: this path's route, remembered: a pure function of the raw path and
                # Host for this router (a new router builds a new HitPath). Bounded, and
                # emptied whole when full (a scan of many paths just routes each one).
                if len(self.memo) >= _MEMO_SIZE:
                    self.memo.clear()
                self._remember(raw_path, slot, (host, path, policy, None, None, name, roles))
        if policy is None:
            return None
        route = self.routes.get(name)
        if route is None:
            return None

        if self.token is not None:
            token = self._token_of(<bytes>authorization) if authorization is not None else None
            if token is None:
                if policy.auth or roles:
                    return None  # the 401
            else:
                try:
                    principal = self._verify(token)
                except Exception:
                    return None
                if principal is not self._jti_of:  # PERF: the verifier's cached principal
                    self._jti = principal.jti  # (a frozen struct) read once, not per hit
                    self._jti_of = principal
                if PyDict_GetItem(self.revoked, self._jti) != NULL:
                    return None  # revoked: the token stage refuses it
                if roles and roles.isdisjoint(principal.roles):
                    return None  # the 403

        if route.private:
            if principal is None:
                return None
            caller = self.caller_key(principal)
        if remembered is not None and <object>PyTuple_GET_ITEM(remembered, 3) is route:
            key = <object>PyTuple_GET_ITEM(remembered, 4)  # PERF: a key of the path alone
        else:
            spec = route.spec
            query = (<dict>scope).get("query_string", _EMPTY)
            # (no Cache-Control, Pragma or If-None-Match here: the scan above declined them)
            key = spec.key(_GET, path, query, headers, caller)
            if (remembered is not None and not spec.private and not spec.header_names
                    and not spec.query_names):
                # The key depends on the route and the path only: remembered with the
                # route's entry in the cache (the same CacheRoute object: the same rule).
                self._remember(raw_path, slot, (host, path, policy, route, key, name, roles))
        found = PyDict_GetItem(self.l1_map, key)
        if found == NULL:
            return None
        node = <object>found
        if <double>node.expires <= now:
            return None  # expired: the general path's L1.get drops it
        entry = node.value
        hot_record = entry.hot  # PERF: one read of the entry, then C fields
        if type(hot_record) is not EntryHot:
            return None
        hot = <EntryHot>hot_record
        if not now < hot.fresh_until or not hot.servable:
            return None
        if 0 <= self.compress_min <= hot.encodable:
            if head.accept_encoding is not None:
                coding = self._coding_for(head.accept_encoding)
                if coding is not None:
                    kept = self._kept(entry.etag, coding)
                    if kept is None:
                        return None  # none kept yet: the general path compresses and keeps it
                    variant = kept.value
                    if PyBytes_GET_SIZE(<bytes>variant.body) >= hot.encodable:
                        return None  # no smaller: the general path sends the body as it is
            vary_encoding = True

        if self.rate is not None:
            found = PyDict_GetItem(self.rate_plans, name)
            if found != NULL:
                remembered_plan = PyDict_GetItem(self.rated, name)
                if remembered_plan != NULL and (<_Rated>remembered_plan).plan is <object>found:
                    rated = <_Rated>remembered_plan
                else:
                    rated = self._rated(name, <object>found)
                if rated.kind == _K_NONE:
                    return None
                table = self._take(scope, rated, principal)
                if table is None:
                    return None

        # Committed: from here on the request is answered here.
        if kept is not None:
            self.compression.served(kept)
        if node.visited is not True:
            node.visited = True  # L1.get's SIEVE mark (a read when it is set already)
        if self.hits_tally is not None:
            self.hits_tally.value += 1  # PERF: the metrics' own counter, a C double
        else:
            self.cache.l1_hits += 1
        age = <long long>(now - hot.born)  # int(): towards zero, as the reference
        if age != hot.age:
            entry.hit(now)  # rebuilds the entry's hit headers (once a second per entry)
        hit_headers = hot.hit
        if not request_id or not traceparent:
            # PERF: formatted here, as ``IdMinter.take`` does (its C helpers), without its
            # string and tuple per request.
            _write_ids(self.ids.draw(), rid, tp)
            if not request_id:
                request_id = PyBytes_FromStringAndSize(rid, 24)
            if not traceparent:
                traceparent = PyBytes_FromStringAndSize(tp, 55)
        n_hit = PyTuple_GET_SIZE(hit_headers)
        n_sec = PyTuple_GET_SIZE(self.security)
        out = PyList_New(n_hit + 2 + n_sec)
        for i in range(n_hit):
            item = <object>PyTuple_GET_ITEM(hit_headers, i)
            if variant is not None:
                # the kept variant's length and tag in place of the entry's
                hname = <object>PyTuple_GET_ITEM(<tuple>item, 0)
                if _named(<bytes>hname, b"content-length", 14):
                    item = variant.length
                elif _named(<bytes>hname, b"etag", 4):
                    item = variant.etag
            Py_INCREF(item)
            PyList_SET_ITEM(out, i, item)
        item = (_X_REQUEST_ID, request_id)
        Py_INCREF(item)
        PyList_SET_ITEM(out, n_hit, item)
        item = (_TRACEPARENT, traceparent)
        Py_INCREF(item)
        PyList_SET_ITEM(out, n_hit + 1, item)
        for i in range(n_sec):
            item = <object>PyTuple_GET_ITEM(self.security, i)
            Py_INCREF(item)
            PyList_SET_ITEM(out, n_hit + 2 + i, item)
        if table is not None:
            table._append_headers(out, rated.limit_pair, rated.policy_pair)
        if self.cors:
            out.append(_VARY_ORIGIN)
        if vary_encoding:
            out.append(_VARY_ENCODING)
        if variant is not None:
            out.append(variant.encoding)
        status = hot.status
        # PERF: a copy of a ready three-key dict (its key table is shared, not rebuilt), then
        # this answer's headers (and status, when not 200) in place.
        start = PyDict_Copy(_START_200)
        PyDict_SetItem(start, "headers", out)
        if status != 200:
            PyDict_SetItem(start, "status", status)
        hit = Hit.__new__(Hit)
        hit.start = start
        hit.body = hot.body_message if variant is None else variant.message
        hit.recorder = self.recorder
        found = PyDict_GetItem(self.series, name) if status == 200 else NULL
        if found != NULL:
            hit.series = <RequestSeries>found
        else:
            hit.series = self.recorder._find(name, _GET, status)
            if status == 200:
                self.series[name] = hit.series  # PERF: no key tuple per hit
        hit.started = now
        return hit

    cdef int _remember(self, bytes raw_path, Py_ssize_t slot, tuple memo) except -1:
        self.memo[raw_path] = memo
        self._path_raw[slot] = raw_path
        self._path_memo[slot] = memo
        return 0

    cdef object _token_of(self, bytes header):
        """The token of a ``Bearer`` header (None: not one), as ``bearer_token`` gives it; a
        token equal to one seen lately is that same object. PERF: the verifier's cache then
        finds it by the hash the object remembers (no copy of the token, no hashing of it per
        request); the answer is the verifier's own either way."""
        cdef Py_ssize_t start, end, slot
        cdef const char* p
        cdef object known
        cdef bytes token
        if not _bearer_span(header, &start, &end):
            return None
        p = PyBytes_AS_STRING(header) + start
        slot = _slot_of(p, end - start, 6)
        known = <object>PyList_GET_ITEM(self._tokens, slot)
        if _same(known, p, end - start):
            return known
        token = PyBytes_FromStringAndSize(p, end - start)
        self._tokens[slot] = token
        return token

    cdef _Rated _rated(self, str name, plan):
        """What the hit path needs of ``plan`` (the route's limits), remembered by route."""
        cdef _Rated rated = _Rated.__new__(_Rated)
        cdef tuple parts
        rated.plan = plan
        rated.kind = _K_NONE
        single = plan.single
        table = None if single is None else single.gcra if single.mode == _LOCAL else single.leases
        # (the compiled tables and counter only: called and bumped in C here; any other
        # kind, which no build mixes with this module, is left to the general path)
        if (single is not None and type(single.n_allowed) is Tally
                and type(table) in (GCRALimiterC, LeaseTableC)):
            parts = single.parts
            if len(parts) == 0:
                rated.kind = _K_ALL
            elif len(parts) == 1:
                rated.kind = _PART_KINDS.get(parts[0], _K_NONE)
            rated.route_key = _route_key(name)
            if type(table) is GCRALimiterC:
                rated.gcra = <GCRALimiterC>table
            else:
                rated.leases = <LeaseTableC>table
            rated.single = single
            rated.low_water = single.low_water
            rated.inflight = single.inflight
            rated.tally = <Tally>single.n_allowed
            rated.limit_pair = single.limit_pair
            rated.policy_pair = plan.policy_pair
        if len(self.rated) >= _MEMO_SIZE:
            self.rated.clear()
        self.rated[name] = rated
        return rated

    cdef _Table _take(self, scope, _Rated rated, principal):
        """One token of the route's single limit: its table, or None (fall back)."""
        cdef int kind = rated.kind
        cdef PyObject* found
        if kind == _K_ALL:
            key = _EVERYONE
        elif kind == _K_ROUTE:
            key = rated.route_key
        elif principal is not None and kind != _K_IP:
            if principal is not self._sub_of:
                self._sub = principal.sub
                self._sub_of = principal
            sub = self._sub
            found = PyDict_GetItem(self.caller_keys, sub)
            if found != NULL:
                key = <object>found  # PERF: no new string (nor its hash) per request
            else:
                key = _principal_key(sub)
                if len(self.caller_keys) >= _MEMO_SIZE:
                    self.caller_keys.clear()
                self.caller_keys[sub] = key
        elif kind == _K_SUB:
            key = _ANONYMOUS
        else:  # an address: "ip", or "caller" without one
            if self.trusted:
                return None
            client = (<dict>scope).get("client")
            key = _ADDRESS + (client[0] if client else "")
        cdef _Table table
        if rated.gcra is not None:
            if rated.gcra._hit(key, 1) != 1:
                return None
            table = rated.gcra
        else:
            taken = rated.leases._take(key)
            if taken is not _GRANTED:
                if taken is _NEED_REDIS:
                    self.lease_miss = (self.rate, rated.single, key)
                return None
            if rated.leases.tokens < rated.low_water and key not in rated.inflight:
                self.rate.top_up(rated.single, key, rated.leases.tokens)
            table = rated.leases
        rated.tally.value += 1  # PERF: a C double, no number object per request
        return table


cdef bytes _RATELIMIT_POLICY = b"ratelimit-policy"
cdef str _HIT_L1 = "hit-l1"
cdef str _ALLOWED = "allowed"
cdef str _NONE = ""


cdef inline double _wall() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


@cython.final
cdef class LoggedHitPath:
    """See :class:`cygate.edge._hitpath_py.LoggedHitPath`: the same hand-over to the access
    log, with the sampling drawn in C (xorshift64*, seeded from ``os.urandom``) and the
    record made from the answer's own head (its ``x-request-id``, ``traceparent``), the
    inner path's memo (the route's name) and a C clock. PERF: the edge wraps its hit path in
    one only when an access log is on; without one, a hit costs what it did."""

    cdef readonly HitPath inner
    cdef readonly object access
    cdef object _queue
    cdef Py_ssize_t _capacity
    cdef object _dropped
    cdef uint64_t _threshold  # a draw below it is sampled (2**64 - 1: every hit)
    cdef bint _every
    cdef uint64_t _state

    def __init__(self, HitPath inner not None, access):
        import os

        self.inner = inner
        self.access = access
        self._queue = access.queue
        self._capacity = access.capacity
        self._dropped = access.dropped
        sample = float(access.sample)
        self._every = sample >= 1.0
        self._threshold = <uint64_t>(sample * 18446744073709551615.0) if sample < 1.0 else 0
        self._state = int.from_bytes(os.urandom(8), "little") | 1

    @property
    def last_head(self):
        return self.inner.last_head

    @property
    def lease_miss(self):
        return self.inner.lease_miss

    cdef inline bint _draw(self) noexcept:
        cdef uint64_t x = self._state
        x ^= x >> 12
        x ^= x << 25
        x ^= x >> 27
        self._state = x
        return x * <uint64_t>0x2545F4914F6CDD1D < self._threshold

    def serve(self, scope, send):
        """As :meth:`HitPath.serve`; a sampled hit is also recorded once sent."""
        cdef HitPath inner = self.inner
        cdef Hit hit = inner._answer(scope)
        cdef _LoggedHit logged
        if hit is None:
            inner._declined()
            return None
        hit._send = send
        if not self._every and not self._draw():
            return hit
        logged = _LoggedHit.__new__(_LoggedHit)
        logged.hit = hit
        logged.owner = self
        logged.scope = scope
        return logged

    cdef int _record(self, Hit hit, object scope) except -1:
        cdef HitPath inner = self.inner
        cdef list headers
        cdef Py_ssize_t i, n
        cdef object request_id = _EMPTY, traceparent = _EMPTY, name, pair, limited = _NONE
        cdef double ended = _now()
        if len(self._queue) >= self._capacity:
            self._dropped.value += 1
            return 0
        headers = hit.start["headers"]
        n = len(headers)
        for i in range(n):
            pair = <object>PyList_GET_ITEM(headers, i)
            name = <object>PyTuple_GET_ITEM(pair, 0)
            if name is _X_REQUEST_ID:
                request_id = <object>PyTuple_GET_ITEM(pair, 1)
            elif name is _TRACEPARENT:
                traceparent = <object>PyTuple_GET_ITEM(pair, 1)
            elif name is _RATELIMIT_POLICY or name == _RATELIMIT_POLICY:
                limited = _ALLOWED
        path = scope["path"]
        client = (<dict>scope).get("client")
        body = hit.body.get("body", _EMPTY)
        self._queue.append((
            _wall(), _GET, self._route_of(scope), path, hit.start["status"], ended - hit.started,
            len(body), _HIT_L1, limited, _NONE, client[0] if client else _NONE, request_id,
            traceparent, scope["headers"],
        ))
        return 0

    cdef object _route_of(self, object scope):
        """The name of the route the inner path just answered for (its memo, else routed
        again: a raw path too long to be remembered)."""
        cdef HitPath inner = self.inner
        raw_path = (<dict>scope).get("raw_path") or scope["path"].encode("utf-8")
        memo = inner.memo.get(raw_path)
        if memo is not None:
            return memo[5]
        host = inner._head.host
        match = inner.router.match(_GET, _normalize(raw_path), host or None)
        return match.value.name


@cython.freelist(8)
@cython.final
cdef class _LoggedHit:
    """A sampled hit: its :class:`Hit`'s sends, then its record handed to the access log
    (once, when both are sent or either fails)."""

    cdef Hit hit
    cdef LoggedHitPath owner
    cdef object scope
    cdef bint _logged

    def __await__(self):
        return self

    cdef void _log(self) noexcept:
        if not self._logged:
            self._logged = True
            try:
                self.owner._record(self.hit, self.scope)
            except Exception:
                pass  # NOTE: a record we could not make is not worth a failed answer

    # PERF: __next__ and send repeat one body on purpose: a ``raise StopIteration`` written in
    # __next__ itself ends the iteration without an exception object (Cython's tp_iternext);
    # raised from a shared cdef helper it is a real exception (+3,300 instructions and 7
    # objects per logged hit, `python -m benchmarks.micro.instructions --access`).
    def __next__(self):
        cdef object r
        try:
            r = self.hit._run(None)
        except BaseException:
            self._log()
            raise
        if r is _SENT:
            self._log()
            raise StopIteration
        return self.hit._yielded

    def send(self, value):
        cdef object r
        try:
            r = self.hit._run(value)
        except BaseException:
            self._log()
            raise
        if r is _SENT:
            self._log()
            raise StopIteration
        return self.hit._yielded

    def throw(self, typ, val=None, tb=None):
        try:
            return self.hit.throw(typ, val, tb)
        finally:
            if self.hit._counted:
                self._log()

    def close(self):
        try:
            self.hit.close()
        finally:
            self._log()
