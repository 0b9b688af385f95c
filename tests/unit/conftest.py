"""Fixtures shared by the unit tests of the compiled core and its pure-Python twins (and of the
edge code built on them).

``core_impl`` runs a test once per implementation: ``c`` (marked ``c_extension``, which the root
conftest skips when ``CYGATE_NO_EXTENSIONS`` is set; skipped too when the module was not compiled)
and ``py``.
"""

from __future__ import annotations

import pytest

from core_impls import CoreImplementation


@pytest.fixture(
    scope="session",
    params=[
        pytest.param(CoreImplementation(is_pure_python=False), marks=pytest.mark.c_extension),
        CoreImplementation(is_pure_python=True),
    ],
    ids=str,
)
def core_impl(request: pytest.FixtureRequest) -> CoreImplementation:
    """Each implementation of the core in turn (``c`` skipped when it is not available)."""
    impl: CoreImplementation = request.param
    return impl
