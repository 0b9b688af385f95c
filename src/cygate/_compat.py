"""The switch between the compiled core and its pure-Python twins.

Selector modules in :mod:`cygate.core` read :data:`NO_EXTENSIONS` and fall back to the pure
implementation when it is set, when the interpreter is not CPython, or when the compiled module
cannot be imported.
"""

from __future__ import annotations

import os
import platform

__all__ = ["IS_CPYTHON", "NO_EXTENSIONS"]

IS_CPYTHON = platform.python_implementation() == "CPython"
NO_EXTENSIONS = bool(os.environ.get("CYGATE_NO_EXTENSIONS")) or not IS_CPYTHON
