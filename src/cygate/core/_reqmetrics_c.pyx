# cython: language_level=3
"""Per-worker request series, compiled; see :mod:`cygate.core._reqmetrics_py` (the reference:
same series, same buckets). The clock is ``CLOCK_MONOTONIC``, the clock of
``time.perf_counter()`` on Linux.
"""

from libc.time cimport timespec

from cygate.core._reqmetrics_py import BUCKETS

cdef extern from "<time.h>" nogil:
    int clock_gettime(int clk_id, timespec* tp)
    int CLOCK_MONOTONIC

# MAX_BUCKETS and the classes' fields: _reqmetrics_c.pxd (other compiled modules cimport them).
cdef int _NB = len(BUCKETS)
cdef double _BOUNDS[MAX_BUCKETS]
if _NB > MAX_BUCKETS:
    raise ImportError(f"at most {MAX_BUCKETS} buckets, not {_NB}")
for _i, _b in enumerate(BUCKETS):
    _BOUNDS[_i] = _b


cdef inline double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef class Tally:
    """See :class:`cygate.core._reqmetrics_py.Tally`."""

    def __init__(self):
        self.value = 0.0


cdef class RequestSeries:
    """One (route, method, status) series."""

    def __cinit__(self):
        cdef int i
        for i in range(_NB + 3):
            self._data[i] = 0.0

    cdef void _observe(self, double seconds) noexcept:
        cdef int i = 0
        while i < _NB and _BOUNDS[i] < seconds:  # bisect_left over a handful of bounds
            i += 1
        self._data[0] += 1.0
        self._data[1] += seconds
        self._data[2 + i] += 1.0

    def observe(self, double seconds):
        self._observe(seconds)

    def as_list(self):
        """``[count, sum, bucket_0, ..., +Inf bucket]`` (a copy)."""
        return [self._data[i] for i in range(_NB + 3)]


cdef class RequestRecorder:
    """The request series of one worker, keyed by (route, method, status)."""

    def __init__(self):
        self._series = {}
        self._dirty = False

    cdef RequestSeries _find(self, str route, str method, object status):
        key = (route, method, status)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = RequestSeries()
        return <RequestSeries>series

    def observe(self, str route, str method, object status, double seconds):
        """Count one request that took ``seconds``."""
        self._find(route, method, status)._observe(seconds)
        self._dirty = True

    def observe_since(self, str route, str method, object status, double started):
        """Count one request that started at ``started`` (a ``time.perf_counter()`` reading)."""
        self._find(route, method, status)._observe(_now() - started)
        self._dirty = True
