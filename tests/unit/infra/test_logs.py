"""Log lines (``cygate.infra.logs``): the JSON fields, the ids, hostile text kept on one line,
the privacy redaction still applied, and the choice of format."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator

import pytest

from cygate.infra.logs import (
    JsonFormatter,
    TextFormatter,
    configure_logging,
    format_timestamp,
    granian_log_config,
    reset_request_context,
    resolve_format,
    set_request_context,
    set_trace_context_provider,
)
from cygate.services.privacy.redaction import install_redaction, redact

TRACEPARENT = b"00-" + b"ab" * 16 + b"-" + b"cd" * 8 + b"-01"
RFC3339_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
HOSTILE = [
    "two\nlines",
    "carriage\rreturn",
    "nul\x00byte",
    "escape \x1b[31mred\x1b[0m",
    "separators \u2028 \u2029 \x85 \x0b \x0c \x1c",
    'quote " and backslash \\',
    b"invalid \xff\xfe utf-8".decode("utf-8", "surrogateescape"),
    "lone surrogate \ud800",
    '{"level": "ERROR", "message": "forged"}\n{"forged": true}',
]


def record(msg: str, *args: object, **attrs: object) -> logging.LogRecord:
    made = logging.LogRecord("cygate.test", logging.INFO, __file__, 1, msg, args or None, None)
    for name, value in attrs.items():
        setattr(made, name, value)
    return made


@pytest.fixture
def no_provider() -> Iterator[None]:
    yield
    set_trace_context_provider(None)


def test_a_json_line_has_the_documented_fields() -> None:
    line = json.loads(JsonFormatter().format(record("hello %s", "world")))
    assert set(line) == {"timestamp", "level", "logger", "message"}
    assert RFC3339_MS.fullmatch(line["timestamp"])
    assert (line["level"], line["logger"], line["message"]) == (
        "INFO",
        "cygate.test",
        "hello world",
    )


def test_the_timestamp_is_utc_with_milliseconds() -> None:
    assert format_timestamp(0.0) == "1970-01-01T00:00:00.000Z"
    assert format_timestamp(1_767_225_600.5) == "2026-01-01T00:00:00.500Z"
    assert format_timestamp(1_767_225_600.999_9) == "2026-01-01T00:00:00.999Z"


def test_the_request_context_gives_request_id_and_trace_id() -> None:
    token = set_request_context("req-1", TRACEPARENT)
    try:
        line = json.loads(JsonFormatter().format(record("inside")))
    finally:
        reset_request_context(token)
    assert line["request_id"] == "req-1" and line["trace_id"] == "ab" * 16
    assert "span_id" not in line  # the traceparent's parent id is not a span of ours
    outside = json.loads(JsonFormatter().format(record("outside")))
    assert "request_id" not in outside and "trace_id" not in outside


def test_record_attributes_come_first_then_the_provider(no_provider: None) -> None:
    set_trace_context_provider(lambda: ("11" * 16, "22" * 8))
    token = set_request_context("req-2", TRACEPARENT)
    try:
        from_provider = json.loads(JsonFormatter().format(record("x")))
        own = json.loads(
            JsonFormatter().format(
                record("x", request_id="mine", trace_id="33" * 16, span_id="44" * 8)
            )
        )
    finally:
        reset_request_context(token)
    assert (from_provider["trace_id"], from_provider["span_id"]) == ("11" * 16, "22" * 8)
    assert from_provider["request_id"] == "req-2"
    assert (own["request_id"], own["trace_id"], own["span_id"]) == ("mine", "33" * 16, "44" * 8)


def test_a_provider_that_fails_or_has_no_span_loses_no_line(no_provider: None) -> None:
    def broken() -> tuple[str, str] | None:
        raise RuntimeError("tracing is down")

    set_trace_context_provider(broken)
    assert json.loads(JsonFormatter().format(record("still here")))["message"] == "still here"
    set_trace_context_provider(lambda: None)
    token = set_request_context("req-3", TRACEPARENT)
    try:
        line = json.loads(JsonFormatter().format(record("no span")))
    finally:
        reset_request_context(token)
    assert line["trace_id"] == "ab" * 16 and "span_id" not in line


def test_exception_info_is_a_field_redacted() -> None:
    try:
        raise ValueError("bad token Bearer abc.def.ghi here")
    except ValueError:
        made = logging.LogRecord(
            "cygate.test", logging.ERROR, __file__, 1, "failed", None, sys.exc_info()
        )
    line = json.loads(JsonFormatter(redact).format(made))
    assert line["level"] == "ERROR" and "ValueError" in line["exception"]
    assert "abc.def.ghi" not in line["exception"] and "Bearer ***" in line["exception"]
    text = TextFormatter(redact).format(made)
    assert "abc.def.ghi" not in text and "ValueError" in text


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_text_stays_one_valid_json_line(hostile: str) -> None:
    for made in (record(hostile), record("%s", hostile), record("m", request_id=hostile)):
        out = JsonFormatter().format(made)
        assert len(out.splitlines()) == 1  # (splitlines knows every Unicode line break)
        assert out.isprintable()
        line = json.loads(out)  # valid JSON (and the bytes written are valid UTF-8)
        out.encode("utf-8")
        if "\ud800" not in hostile and "\udcff" not in hostile:
            assert hostile in (line["message"], line.get("request_id"))


def test_an_unformattable_message_is_still_a_line() -> None:
    line = json.loads(JsonFormatter().format(record("%d items", "not a number")))
    assert "unformattable" in line["message"]


def test_the_redaction_still_applies_to_json_lines() -> None:
    install_redaction()  # what serve and worker do
    made = logging.getLogger("cygate.test").makeRecord(
        "cygate.test", logging.INFO, __file__, 1, "login password=%s token=%s", ("hunter2", "t0k"),
        None,
    )  # fmt: skip
    line = json.loads(JsonFormatter().format(made))
    assert "hunter2" not in line["message"] and "t0k" not in line["message"]
    assert "***" in line["message"]


@pytest.mark.parametrize(
    ("configured", "environment", "expected"),
    [
        ("auto", "production", "json"),
        ("auto", "development", "text"),
        ("auto", "test", "text"),
        ("json", "development", "json"),
        ("text", "production", "text"),
    ],
)
def test_auto_is_json_in_production_only(configured: str, environment: str, expected: str) -> None:
    assert resolve_format(configured, environment) == expected


def test_configure_logging_installs_one_handler_and_defers_to_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    level = root.level
    try:
        configure_logging("debug", "json")
        configure_logging("info", "json")
        [handler] = root.handlers
        assert isinstance(handler.formatter, JsonFormatter) and root.level == logging.INFO
        configure_logging("info", "text")
        [handler] = root.handlers
        assert isinstance(handler.formatter, TextFormatter)
        other = logging.NullHandler()
        root.handlers.append(other)
        configure_logging("debug", "json")  # someone else configured logging: left alone
        assert root.handlers == [handler, other] and root.level == logging.INFO
    finally:
        root.setLevel(level)


def test_granian_gets_the_json_formatter_for_its_own_lines() -> None:
    assert granian_log_config("text") is None
    config = granian_log_config("json")
    assert config is not None
    assert set(config["formatters"]) == {"generic", "access"}
    assert all(f["()"] == "cygate.infra.logs.JsonFormatter" for f in config["formatters"].values())
