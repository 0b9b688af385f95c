"""Request routing, compiled twin of :mod:`cygate.core._router_py`.

The pure module is the reference: it defines the exceptions, the match kinds, the result type,
the pattern syntax and the route tree that ``add`` builds. ``RouterC`` keeps a ``RouterPy`` for
``add``/``routes`` (so validation and conflicts live in one place) and compiles its tree into
typed C tables on the first ``match`` after a change. ``match`` then walks the path string in
place by index: no split, no slicing of segments; the only allocations are the params dict and
its values when the route has parameters (every other answer is a pre-built shared object).
"""

from cpython.dict cimport PyDict_GetItem
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_SET_ITEM
from cpython.unicode cimport (
    PyUnicode_1BYTE_DATA,
    PyUnicode_1BYTE_KIND,
    PyUnicode_DATA,
    PyUnicode_DecodeUTF8,
    PyUnicode_GET_LENGTH,
    PyUnicode_KIND,
    PyUnicode_READ,
    PyUnicode_Substring,
)
from libc.stdint cimport uint64_t
from libc.string cimport memchr, memcmp, memmove

cdef extern from "Python.h":
    ctypedef unsigned char Py_UCS1

cdef extern from *:
    """
    /* Up to 3.13 a zeroed allocation filled item by item is a complete tuple (subclass) object,
       which is what tuple's own subtype constructor builds. 3.14 added per-tuple state (a cached
       hash) that the constructor initialises, so there the real constructor is used. */
    #define CYGATE_TUPLE_ALLOC_IS_ENOUGH (PY_VERSION_HEX < 0x030E0000)
    """
    const bint TUPLE_ALLOC_IS_ENOUGH "CYGATE_TUPLE_ALLOC_IS_ENOUGH"
    object PyType_GenericAlloc(PyTypeObject* type, Py_ssize_t nitems)

# NOTE: PathError, RouteConflict and RouteMatch are the pure module's objects, so both
# implementations raise and return the very same types (and this module re-exports them).
from cygate.core._router_py import (
    FOUND,
    MAX_PARAMS,
    METHOD_NOT_ALLOWED,
    NOT_FOUND_MATCH,
    T_INT,
    T_STR,
    T_UUID,
    PathError,
    RouteConflict,
    RouteMatch,
    RouterPy,
)

__all__ = ["RouterC", "normalize_path"]

cdef enum:
    SLASH = 0x2F
    DOT = 0x2E
    PERCENT = 0x25
    # Fixed C stacks of one match. MAXP must equal MAX_PARAMS (checked below): the params
    # on the current search path belong to one pattern prefix, and parse_pattern caps those.
    MAXP = 32
    # Distinct routes that have the path but not the method, remembered without allocating.
    MAX405 = 8
    # Methods with a slot in _CLeaf.by_code; others go through _CLeaf.methods.
    M_GET = 0
    M_HEAD = 1
    M_POST = 2
    M_PUT = 3
    M_DELETE = 4
    M_PATCH = 5
    M_OPTIONS = 6
    NCODES = 7
    C_STR = 0
    C_INT = 1
    C_UUID = 2

if MAX_PARAMS != MAXP or (T_STR, T_INT, T_UUID) != (C_STR, C_INT, C_UUID):
    raise RuntimeError("cygate.core._router_c is out of step with _router_py")

cdef tuple _CODE_NAMES = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
cdef object _FOUND = FOUND
cdef object _METHOD_NOT_ALLOWED = METHOD_NOT_ALLOWED
cdef object _NOT_FOUND_MATCH = NOT_FOUND_MATCH
cdef object _RouteMatch = RouteMatch
cdef tuple _EMPTY = ()


# ---------------------------------------------------------------------------------------------
# Path normalisation
# ---------------------------------------------------------------------------------------------

cdef inline int _hexval(unsigned char c) noexcept nogil:
    if 0x30 <= c <= 0x39:
        return c - 0x30
    c |= 0x20  # ASCII lower-case; non-letters stay out of range
    if 0x61 <= c <= 0x66:
        return c - 0x61 + 10
    return -1


cdef inline bint _is_control(unsigned char c) noexcept nogil:
    return c < 0x20 or c == 0x7F


cdef str _decode(const unsigned char* p, Py_ssize_t n):
    try:
        return PyUnicode_DecodeUTF8(<char*>p, n, NULL)
    except UnicodeDecodeError:
        raise PathError("path is not valid UTF-8") from None


cdef str _normalize_slow(const unsigned char* p, Py_ssize_t n):
    # Decode escapes into buf, then resolve segments in place. Output never outgrows input:
    # each kept segment is written as '/' + text over input that had at least that much.
    cdef unsigned char* buf = <unsigned char*>PyMem_Malloc(n)
    cdef Py_ssize_t i = 0, m = 0, o = 0, s, length
    cdef int hi, lo
    cdef unsigned char c
    cdef bint high = False
    if buf == NULL:
        raise MemoryError()
    try:
        while i < n:
            c = p[i]
            if c == PERCENT:
                if i + 2 >= n:
                    raise PathError("truncated percent-escape in path")
                hi = _hexval(p[i + 1])
                lo = _hexval(p[i + 2])
                if hi < 0 or lo < 0:
                    raise PathError("bad percent-escape in path")
                c = <unsigned char>(hi * 16 + lo)
                i += 3
            else:
                i += 1
            if _is_control(c):
                raise PathError("control character in path")
            high |= c >= 0x80
            buf[m] = c
            m += 1
        if high:
            # NOTE: the whole decoded path must be UTF-8, also the parts '..' will drop.
            _decode(buf, m)
        i = 0
        while i < m:
            while i < m and buf[i] == SLASH:
                i += 1
            if i == m:
                break
            s = i
            while i < m and buf[i] != SLASH:
                i += 1
            length = i - s
            if buf[s] == DOT and (length == 1 or (length == 2 and buf[s + 1] == DOT)):
                if length == 2:
                    # '..': drop the last kept segment; at the root, stay there.
                    while o > 0:
                        o -= 1
                        if buf[o] == SLASH:
                            break
                continue
            buf[o] = SLASH
            memmove(buf + o + 1, buf + s, length)
            o += 1 + length
        if o == 0:
            return "/"
        return _decode(buf, o)
    finally:
        PyMem_Free(buf)


def normalize_path(bytes raw not None):
    """Return the canonical form of a raw request path (ASGI ``raw_path``, no query string).

    Same rules as :func:`cygate.core._router_py.normalize_path`; raises ``PathError``.
    """
    cdef const unsigned char* p = <const unsigned char*><char*>raw
    cdef Py_ssize_t n = len(raw), i
    cdef unsigned char c, nx
    if n == 0 or p[0] != SLASH:
        raise PathError("path must start with '/'")
    # PERF: one scan decides whether the path is already canonical; if so one decode is all.
    for i in range(n):
        c = p[i]
        if c == PERCENT:
            return _normalize_slow(p, n)
        if c == SLASH:
            if i + 1 == n:
                if n > 1:
                    return _normalize_slow(p, n)  # trailing slash
            else:
                nx = p[i + 1]
                if nx == SLASH:
                    return _normalize_slow(p, n)
                if nx == DOT and (
                    i + 2 == n or p[i + 2] == SLASH
                    or (p[i + 2] == DOT and (i + 3 == n or p[i + 3] == SLASH))
                ):
                    return _normalize_slow(p, n)
        elif _is_control(c):
            raise PathError("control character in path")
    return _decode(p, n)


# ---------------------------------------------------------------------------------------------
# Compiled tree
# ---------------------------------------------------------------------------------------------

ctypedef struct _Edge:
    const Py_UCS1* key  # borrowed: the data of a 1-byte-kind str key of _CNode.static
    Py_ssize_t length
    PyObject* child     # borrowed: _CNode.static owns it; NULL marks an empty slot


cdef class _CEntry:
    cdef object value
    cdef object found  # pre-built FOUND RouteMatch, params None


cdef class _CLeaf:
    # by_code[code] is the entry a method with that code gets here, fallbacks (HEAD -> GET,
    # then '*') already applied; NULL when none. Borrowed: `methods`/`any_entry` own them.
    cdef PyObject* by_code[NCODES]
    cdef dict methods        # method str -> _CEntry, explicit methods only
    cdef object any_entry    # _CEntry of the '*' route, or None
    cdef tuple allowed
    cdef object not_allowed  # pre-built METHOD_NOT_ALLOWED RouteMatch


cdef class _CNode:
    cdef dict static         # segment str -> _CNode; owns the children
    # Open addressing over the 1-byte-kind keys of `static`; NULL when there are none.
    # Size is a power of two at least twice the key count, so probing always ends.
    cdef _Edge* table
    cdef Py_ssize_t mask
    cdef _CNode param        # the one segment-parameter child, or None
    cdef int ptype
    cdef object pname
    cdef object pbad         # pre-built BAD_PARAM RouteMatch naming pname
    cdef _CLeaf leaf         # routes ending here, or None
    cdef _CLeaf wleaf        # routes of the {name:path} wildcard here, or None
    cdef object wname

    def __dealloc__(self):
        PyMem_Free(self.table)


cdef inline uint64_t _hash(const Py_UCS1* s, Py_ssize_t n) noexcept nogil:
    # FNV-1a; segments are short, and the table is private so hash flooding is moot
    # (the keys are the routes' own static segments, not attacker input).
    cdef uint64_t h = 14695981039346656037ULL
    cdef Py_ssize_t i
    for i in range(n):
        h = (h ^ s[i]) * 1099511628211ULL
    return h ^ (h >> 29)


cdef _CLeaf _compile_leaf(object py):
    cdef _CLeaf leaf = _CLeaf.__new__(_CLeaf)
    cdef _CEntry entry
    cdef dict entries = {}
    cdef int code
    leaf.methods = {}
    for method, py_entry in py.methods.items():
        entry = _CEntry.__new__(_CEntry)
        entry.value = py_entry.value
        entry.found = py_entry.found
        leaf.methods[method] = entry
    if py.any is not None:
        entry = _CEntry.__new__(_CEntry)
        entry.value = py.any.value
        entry.found = py.any.found
        leaf.any_entry = entry
    else:
        leaf.any_entry = None
    for code in range(NCODES):
        found = leaf.methods.get(_CODE_NAMES[code])
        if found is None and code == M_HEAD:
            found = leaf.methods.get("GET")
        if found is None:
            found = leaf.any_entry
        leaf.by_code[code] = NULL if found is None else <PyObject*>found
    leaf.allowed = py.allowed
    leaf.not_allowed = py.not_allowed
    return leaf


cdef _CNode _compile_node(object py):
    cdef _CNode node = _CNode.__new__(_CNode)
    cdef Py_ssize_t size, slot, count = 0
    cdef str key
    cdef _Edge* edge
    node.static = {key: _compile_node(child) for key, child in py.static.items()}
    for key in node.static:
        count += PyUnicode_KIND(key) == PyUnicode_1BYTE_KIND
    if count:
        size = 2
        while size < 2 * count:
            size *= 2
        node.table = <_Edge*>PyMem_Malloc(size * sizeof(_Edge))
        if node.table == NULL:
            raise MemoryError()
        node.mask = size - 1
        for slot in range(size):
            node.table[slot].child = NULL
        for key, child in node.static.items():
            if PyUnicode_KIND(key) != PyUnicode_1BYTE_KIND:
                continue  # can never equal a slice of a 1-byte path; found via the dict
            slot = _hash(PyUnicode_1BYTE_DATA(key), len(key)) & node.mask
            while node.table[slot].child != NULL:
                slot = (slot + 1) & node.mask
            edge = &node.table[slot]
            edge.key = PyUnicode_1BYTE_DATA(key)
            edge.length = len(key)
            edge.child = <PyObject*>child
    if py.param is not None:
        node.param = _compile_node(py.param)
        node.ptype = py.param_type
        node.pname = py.param_name
        node.pbad = py.param_bad
    node.leaf = None if py.leaf is None else _compile_leaf(py.leaf)
    node.wleaf = None if py.wild_leaf is None else _compile_leaf(py.wild_leaf)
    node.wname = py.wild_name
    return node


# ---------------------------------------------------------------------------------------------
# Matching
# ---------------------------------------------------------------------------------------------

ctypedef struct _Search:
    # Invariant: every PyObject* here is borrowed from the path, the method, or the trees that
    # match() holds references to for the whole search.
    PyObject* method
    int code                  # index into _CLeaf.by_code, -1 for other methods
    PyObject* path
    const void* data
    int kind
    Py_ssize_t n
    PyObject* found           # _CEntry once a route takes the method
    PyObject* bad             # first BAD_PARAM RouteMatch met
    int np                    # params on the current search path
    PyObject* names[MAXP]
    Py_ssize_t starts[MAXP]
    Py_ssize_t ends[MAXP]
    int n405                  # leaves that have the path but not the method (may exceed MAX405)
    PyObject* leaves405[MAX405]


cdef inline int _method_code(str method) noexcept:
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(method)
    cdef const char* d
    if PyUnicode_KIND(method) != PyUnicode_1BYTE_KIND:
        return -1
    d = <const char*>PyUnicode_1BYTE_DATA(method)
    if n == 3:
        if memcmp(d, b"GET", 3) == 0:
            return M_GET
        if memcmp(d, b"PUT", 3) == 0:
            return M_PUT
    elif n == 4:
        if memcmp(d, b"POST", 4) == 0:
            return M_POST
        if memcmp(d, b"HEAD", 4) == 0:
            return M_HEAD
    elif n == 6:
        if memcmp(d, b"DELETE", 6) == 0:
            return M_DELETE
    elif n == 5:
        if memcmp(d, b"PATCH", 5) == 0:
            return M_PATCH
    elif n == 7:
        if memcmp(d, b"OPTIONS", 7) == 0:
            return M_OPTIONS
    return -1


cdef inline Py_ssize_t _next_slash(_Search* s, Py_ssize_t start) noexcept:
    cdef const void* hit
    cdef Py_ssize_t i
    if s.kind == PyUnicode_1BYTE_KIND:
        hit = memchr(<const Py_UCS1*>s.data + start, SLASH, s.n - start)
        return s.n if hit == NULL else <const Py_UCS1*>hit - <const Py_UCS1*>s.data
    for i in range(start, s.n):
        if PyUnicode_READ(s.kind, <void*>s.data, i) == SLASH:
            return i
    return s.n


cdef inline PyObject* _static_child(_CNode node, _Search* s, Py_ssize_t start,
                                    Py_ssize_t end) except? NULL:
    cdef const Py_UCS1* seg
    cdef Py_ssize_t length = end - start, slot
    cdef _Edge* edge
    if s.kind == PyUnicode_1BYTE_KIND:
        if node.table == NULL:
            return NULL
        seg = <const Py_UCS1*>s.data + start
        slot = _hash(seg, length) & node.mask
        while True:
            edge = &node.table[slot]
            if edge.child == NULL:
                return NULL
            if edge.length == length and memcmp(edge.key, seg, length) == 0:
                return edge.child
            slot = (slot + 1) & node.mask
    # Wider paths (some non-Latin-1 character somewhere) are rare: slice and ask the dict.
    if not node.static:
        return NULL
    return PyDict_GetItem(node.static, PyUnicode_Substring(<object>s.path, start, end))


cdef inline bint _is_hex(unsigned int c) noexcept nogil:
    return (0x30 <= c <= 0x39) or (0x61 <= (c | 0x20) <= 0x66)


cdef bint _check(int ptype, _Search* s, Py_ssize_t start, Py_ssize_t end) noexcept:
    cdef Py_ssize_t i = start, j
    cdef unsigned int c  # not Py_UCS4: Cython treats that as a character, not a number
    if ptype == C_INT:
        if i < end and PyUnicode_READ(s.kind, <void*>s.data, i) == 0x2D:  # '-'
            i += 1
        if not (1 <= end - i <= 18):
            return False
        for j in range(i, end):
            c = PyUnicode_READ(s.kind, <void*>s.data, j)
            if c < 0x30 or c > 0x39:
                return False
        return True
    if ptype == C_UUID:
        if end - start != 36:
            return False
        for j in range(36):
            c = PyUnicode_READ(s.kind, <void*>s.data, start + j)
            if j == 8 or j == 13 or j == 18 or j == 23:
                if c != 0x2D:
                    return False
            elif not _is_hex(c):
                return False
        return True
    return end > start


cdef inline int _push(_Search* s, object name, Py_ssize_t start, Py_ssize_t end) except -1:
    if s.np >= MAXP:  # cannot happen while MAXP == MAX_PARAMS; never write past the arrays
        raise RuntimeError("route parameter stack overflow")
    s.names[s.np] = <PyObject*>name
    s.starts[s.np] = start
    s.ends[s.np] = end
    s.np += 1
    return 0


cdef inline bint _terminal(_CLeaf leaf, _Search* s, PyObject* bad) noexcept:
    cdef PyObject* entry
    if bad != NULL:
        # The shape matches but a typed parameter failed: remember the first such failure.
        if s.bad == NULL:
            s.bad = bad
        return False
    if s.code >= 0:
        entry = leaf.by_code[s.code]
    else:
        entry = PyDict_GetItem(leaf.methods, <object>s.method)
        if entry == NULL and leaf.any_entry is not None:
            entry = <PyObject*>leaf.any_entry
    if entry != NULL:
        s.found = entry
        return True
    if s.n405 < MAX405:
        s.leaves405[s.n405] = <PyObject*>leaf
    s.n405 += 1
    return False


cdef int _walk(_CNode node, _Search* s, Py_ssize_t pos, PyObject* bad) except -1:
    # pos is the index of the '/' before the next segment, or s.n once the path is consumed.
    # Depth-first in precedence order (static, parameter, wildcard); 1 once s.found is set.
    cdef Py_ssize_t start, end
    cdef PyObject* child
    if bad != NULL and s.bad != NULL:
        return 0
    if pos >= s.n:
        if node.leaf is not None and _terminal(node.leaf, s, bad):
            return 1
        if node.wleaf is not None:
            _push(s, node.wname, s.n, s.n)
            if _terminal(node.wleaf, s, bad):
                return 1
            s.np -= 1
        return 0
    start = pos + 1
    end = _next_slash(s, start)
    child = _static_child(node, s, start, end)
    if child != NULL and _walk(<_CNode>child, s, end, bad):
        return 1
    if node.param is not None:
        if _check(node.ptype, s, start, end):
            _push(s, node.pname, start, end)
            if _walk(node.param, s, end, bad):
                return 1
            s.np -= 1
        elif node.ptype != C_STR and s.bad == NULL:
            _walk(node.param, s, end, <PyObject*>node.pbad if bad == NULL else bad)
    if node.wleaf is not None:
        _push(s, node.wname, start, s.n)
        if _terminal(node.wleaf, s, bad):
            return 1
        s.np -= 1
    return 0


cdef object _new_match(object kind, object value, object params, tuple allowed, object bad):
    # A RouteMatch without its Python-level __new__ (a namedtuple's __new__ is a Python
    # function: much slower).
    cdef tuple args
    cdef object match
    if TUPLE_ALLOC_IS_ENOUGH:
        # PERF: what tuple's own subtype constructor does, minus its temporary tuples.
        match = PyType_GenericAlloc(<PyTypeObject*>_RouteMatch, 5)
        Py_INCREF(kind)
        PyTuple_SET_ITEM(match, 0, kind)
        Py_INCREF(value)
        PyTuple_SET_ITEM(match, 1, value)
        Py_INCREF(params)
        PyTuple_SET_ITEM(match, 2, params)
        Py_INCREF(allowed)
        PyTuple_SET_ITEM(match, 3, allowed)
        Py_INCREF(bad)
        PyTuple_SET_ITEM(match, 4, bad)
        return match
    args = ((kind, value, params, allowed, bad),)
    return (<PyTypeObject*>tuple).tp_new(_RouteMatch, <PyObject*>args, NULL)


cdef class RouterC:
    """Route table: ``add`` at start-up, then ``match`` per request (compiled).

    Same API and answers as :class:`cygate.core._router_py.RouterPy`.
    """

    cdef object _py       # the RouterPy that owns the routes; the source of the C tables
    cdef _CNode _root
    cdef dict _hosts      # host -> _CNode
    cdef bint _dirty      # routes were added since the C tables were compiled

    def __cinit__(self):
        self._py = RouterPy()
        self._hosts = {}
        self._dirty = True

    def add(self, method, pattern, value, host=None):
        """Add a route; see :meth:`cygate.core._router_py.RouterPy.add`."""
        self._py.add(method, pattern, value, host)
        self._dirty = True

    def routes(self):
        """Every route as ``(host, method, canonical pattern, value)``, in insertion order."""
        return self._py.routes()

    cdef int _compile(self) except -1:
        root, hosts = self._py._trees()
        self._hosts = {host: _compile_node(node) for host, node in hosts.items()}
        self._root = _compile_node(root)
        self._dirty = False
        return 0

    def match(self, str method not None, str path not None, str host=None):
        """Find the route for a request; see :meth:`cygate.core._router_py.RouterPy.match`."""
        cdef _Search s
        cdef _CNode root
        cdef PyObject* host_root
        cdef Py_ssize_t pos, i
        if self._dirty:
            self._compile()
        root = self._root  # held for the search: _Search borrows from the trees
        s.method = <PyObject*>method
        s.code = _method_code(method)
        s.path = <PyObject*>path
        s.data = PyUnicode_DATA(path)
        s.kind = PyUnicode_KIND(path)
        s.n = PyUnicode_GET_LENGTH(path)
        s.found = NULL
        s.bad = NULL
        s.np = 0
        s.n405 = 0
        if s.n and PyUnicode_READ(s.kind, <void*>s.data, 0) == SLASH:
            pos = s.n if s.n == 1 else 0  # "/" is the root itself, with no segment left
            if host is not None and self._hosts:
                host_root = PyDict_GetItem(self._hosts, host)
                if host_root != NULL and _walk(<_CNode>host_root, &s, pos, NULL):
                    return _found(&s, path)
            if _walk(root, &s, pos, NULL):
                return _found(&s, path)
        if s.n405:
            if s.n405 == 1:
                return (<_CLeaf>s.leaves405[0]).not_allowed
            if s.n405 > MAX405:
                return self._py.match(method, path, host)  # pathological table: rare and slow
            allowed = set()
            for i in range(s.n405):
                allowed.update((<_CLeaf>s.leaves405[i]).allowed)
            return _new_match(_METHOD_NOT_ALLOWED, None, None, tuple(sorted(allowed)), None)
        if s.bad != NULL:
            return <object>s.bad
        return _NOT_FOUND_MATCH


cdef object _found(_Search* s, str path):
    cdef _CEntry entry = <_CEntry>s.found
    cdef dict params
    cdef int i
    if s.np == 0:
        return entry.found
    params = {}
    for i in range(s.np):
        params[<object>s.names[i]] = PyUnicode_Substring(path, s.starts[i], s.ends[i])
    return _new_match(_FOUND, entry.value, params, _EMPTY, None)
