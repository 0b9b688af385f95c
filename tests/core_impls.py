"""The two implementations of the core hot paths, for tests and their fixtures.

Every hot path ``X`` ships ``cygate.core._X_c`` (compiled) and ``cygate.core._X_py`` (reference);
the edge's fused hit path lives in ``cygate.edge`` (:data:`PACKAGES`).
Kept out of ``conftest.py`` so test modules can import it by a name no other conftest shares.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

import pytest

from cygate._compat import NO_EXTENSIONS

__all__ = ["PACKAGES", "CoreImplementation", "compiled", "require_compiled"]

PACKAGES = {"hitpath": "cygate.edge"}
"""The hot paths whose twins live outside ``cygate.core``, and their package."""


def _name(hot_path: str, tag: str) -> str:
    return f"{PACKAGES.get(hot_path, 'cygate.core')}._{hot_path}_{tag}"


@dataclass(frozen=True)
class CoreImplementation:
    """One of the two implementations of the core hot paths."""

    is_pure_python: bool

    @property
    def tag(self) -> str:
        """``"py"`` or ``"c"``: the module suffix, and the suffix of its public class names."""
        return "py" if self.is_pure_python else "c"

    def module(self, hot_path: str) -> ModuleType:
        """The implementation module of ``hot_path`` (e.g. ``"router"``); skips if not built."""
        if self.is_pure_python:
            return importlib.import_module(_name(hot_path, "py"))
        return require_compiled(hot_path)

    def __str__(self) -> str:
        return self.tag


def compiled(hot_path: str) -> ModuleType | None:
    """The compiled module of ``hot_path``, or None when disabled or not built."""
    if NO_EXTENSIONS:
        return None
    try:
        return importlib.import_module(_name(hot_path, "c"))
    except ImportError:
        return None


def require_compiled(hot_path: str) -> ModuleType:
    """The compiled module of ``hot_path``; skips the test when it is disabled or not built."""
    module = compiled(hot_path)
    if module is None:
        pytest.skip(f"{_name(hot_path, 'c')} is disabled or not compiled")
    return module
