# The compiled request series' C interface, for the other compiled modules (edge/_hitpath_c
# records its hits with no Python call and no float); see _reqmetrics_c.pyx.

cdef enum:
    MAX_BUCKETS = 32


cdef class Tally:
    cdef public double value


cdef class RequestSeries:
    cdef double _data[MAX_BUCKETS + 3]
    cdef void _observe(self, double seconds) noexcept


cdef class RequestRecorder:
    cdef public dict _series
    cdef public bint _dirty
    cdef RequestSeries _find(self, str route, str method, object status)
