"""Macro benchmark: each contender server in its own process, driven by wrk with the same load.

Run ``python -m benchmarks.macro.run --help`` from the repository root. The contenders are listed
as data in :mod:`benchmarks.macro.registry`; their apps live in :mod:`benchmarks.macro.contenders`.
"""
