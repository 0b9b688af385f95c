"""The admin account every test gateway starts with (``gateway_env`` sets it).

Its own module: conftest files are imported under more than one name, and a random password
made in one of them would differ between the copies.
"""

from __future__ import annotations

import secrets

ADMIN_EMAIL = "test-admin@example.com"
ADMIN_PASSWORD = secrets.token_urlsafe(12)
