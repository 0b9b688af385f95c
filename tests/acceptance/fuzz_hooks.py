"""Schemathesis hooks for the API fuzz run (``SCHEMATHESIS_HOOKS`` names this file).

The fuzzer runs as a customer and as an admin. It must never change the accounts it runs as:
a path parameter equal to one of their ids (``CYGATE_FUZZ_PROTECTED_IDS``, comma-separated;
the stateful phase can learn them from ``GET /api/v1/users``) is replaced by a fresh id, so
``PATCH /api/v1/users/{user_id}/roles`` never demotes them. ``DELETE /api/v1/users/me`` is
excluded from the run itself (``tests/acceptance/test_api_fuzz.py``).
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import schemathesis

_PROTECTED = frozenset(filter(None, os.environ.get("CYGATE_FUZZ_PROTECTED_IDS", "").split(",")))


@schemathesis.hook
def before_call(context: Any, case: Any, **kwargs: Any) -> None:
    params = case.path_parameters
    if not params:
        return
    for name, value in list(params.items()):
        if str(value).lower() in _PROTECTED:
            params[name] = str(uuid.uuid4())
