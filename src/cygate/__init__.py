"""cygate: a high-performance async API gateway with a compiled core."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
