"""cygate's benchmarks: ``micro`` (pytest-benchmark, one function at a time) and ``macro``
(whole servers under load, side by side with their peers)."""
