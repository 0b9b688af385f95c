"""Restricted data never reaches a log line: values under a restricted name (the
classification's restricted columns, and the request fields that carry secrets: passwords,
tokens, codes, addresses), bearer credentials, JWTs and password hashes are replaced by
``***`` in every log record's message.

:func:`install_redaction` wraps the log record factory, so that every record of every logger
is redacted when it is made, whichever handler (a file, the console, a test's capture) writes
it; :class:`RedactionFilter` does the same for one handler. A message with something to mask is
replaced by its redacted text (its arguments merged in, then dropped); others are left as they
are.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Final

from cygate.services.privacy.classification import restricted_names

__all__ = ["MASK", "REDACTED_NAMES", "RedactionFilter", "install_redaction", "redact"]

MASK: Final = "***"

REDACTED_NAMES: Final[frozenset[str]] = restricted_names() | {
    "password",
    "new_password",
    "current_password",
    "client_secret",
    "secret",
    "access_token",
    "refresh_token",
    "mfa_token",
    "id_token",
    "token",
    "code",
    "recovery_code",
    "authorization",
    "cookie",
    "address",
}
"""Names whose values are secret: restricted columns and the request fields carrying secrets."""

_NAMES = "|".join(sorted((re.escape(n) for n in REDACTED_NAMES), key=len, reverse=True))
_VALUE = (
    r"""(?:"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|\{[^{}]*(?:\{[^{}]*\}[^{}]*)*\}|[^\s,;&)}\]]+)"""
)
_PAIR = re.compile(
    rf"""(?i)(["']?)\b({_NAMES})\1(\s*[:=]\s*)(?:b)?{_VALUE}""",
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[\w\-.~+/=]+")
_JWT = re.compile(r"\beyJ[\w-]{4,}\.[\w-]{4,}\.[\w-]*")
_PHC = re.compile(r"\$argon2\w*\$[^\s'\"]+")


def redact(text: str) -> str:
    """``text`` with every secret value replaced by :data:`MASK`."""
    # NOTE: credentials first: ``Authorization: Bearer x`` would otherwise mask "Bearer" only.
    text = _BEARER.sub(lambda m: f"{m[1]} {MASK}", text)
    text = _JWT.sub(MASK, text)
    text = _PHC.sub(MASK, text)
    return _PAIR.sub(lambda m: f"{m[1]}{m[2]}{m[1]}{m[3]}{MASK}", text)


def _redact_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a malformed call: left for logging's own error report
        return
    redacted = redact(message)
    if redacted != message:
        record.msg = redacted
        record.args = None


class RedactionFilter(logging.Filter):
    """A handler filter that redacts each record (and keeps it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        _redact_record(record)
        return True


_installed: list[Any] = []


def install_redaction() -> None:
    """Redact every log record of the process when it is made (idempotent)."""
    if _installed:
        return
    make = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        _redact_record(record)
        return record

    _installed.append(make)
    logging.setLogRecordFactory(factory)
