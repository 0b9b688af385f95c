"""Build the compiled modules (the core, and the edge's fused hit path).

Everything else about the package lives in pyproject.toml; this file only declares the
Cython extensions. Switches (environment variables):

- ``CYGATE_NO_EXTENSIONS=1``: pure-Python build, no compiler needed.
- ``CYGATE_CYTHON_TRACE=1``: line tracing (for coverage and profilers), slower.
- ``CYGATE_DEBUG_BUILD=1``: -O0 -g and Cython's boundscheck on, for gdb and sanitizers.

When extensions are wanted, a failed compile fails the install loudly (CI and Docker must never
ship a silently pure wheel).
"""

from __future__ import annotations

import os
import pathlib

from setuptools import setup

NO_EXTENSIONS = bool(os.environ.get("CYGATE_NO_EXTENSIONS"))
TRACE = bool(os.environ.get("CYGATE_CYTHON_TRACE"))
DEBUG = bool(os.environ.get("CYGATE_DEBUG_BUILD"))
SRC = pathlib.Path("src")
PACKAGES = ("cygate/core", "cygate/edge")  # where compiled twins live (``_x_c.pyx``)


def _extensions() -> list:
    from Cython.Build import cythonize
    from setuptools import Extension

    macros = [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")] if TRACE else []
    cflags = ["-O0", "-g"] if DEBUG else ["-O3"]
    exts = [
        Extension(
            f"{package.replace('/', '.')}.{pyx.stem}",
            [str(pyx)],
            define_macros=macros,
            extra_compile_args=cflags,
        )
        for package in PACKAGES
        for pyx in sorted((SRC / package).glob("_*_c.pyx"))
    ]
    directives = {
        "language_level": "3",
        "boundscheck": DEBUG,
        "wraparound": False,
        "initializedcheck": DEBUG,
        "cdivision": True,
        "embedsignature": True,
        "linetrace": TRACE,
        "profile": TRACE,
    }
    return cythonize(exts, compiler_directives=directives, annotate=False)


setup(ext_modules=[] if NO_EXTENSIONS else _extensions())
