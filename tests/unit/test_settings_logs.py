"""The log settings (``log_format``, ``access_log_sample``, ``access_log_queue``): good values,
and bad ones stopping every command with one line (status 2), never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cygate.settings import SettingsError, load_settings


def test_the_defaults_and_good_values() -> None:
    logs = load_settings({}).logs
    assert (logs.format, logs.access_sample, logs.access_queue) == ("auto", 1.0, 10_000)
    for raw, expected in (("0", 0.0), ("0.01", 0.01), ("1", 1.0), ("1.0", 1.0), ("5e-1", 0.5)):
        assert load_settings({"CYGATE_ACCESS_LOG_SAMPLE": raw}).logs.access_sample == expected
    for fmt in ("json", "text", "auto"):
        assert load_settings({"CYGATE_LOG_FORMAT": fmt}).logs.format == fmt
    assert load_settings({}, log_format="json", access_log_sample=0.5).logs.format == "json"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CYGATE_LOG_FORMAT", "xml"),
        ("CYGATE_LOG_FORMAT", "JSON "),
        ("CYGATE_LOG_FORMAT", ""),
        ("CYGATE_ACCESS_LOG_SAMPLE", "2"),
        ("CYGATE_ACCESS_LOG_SAMPLE", "-1"),
        ("CYGATE_ACCESS_LOG_SAMPLE", "1.0001"),
        ("CYGATE_ACCESS_LOG_SAMPLE", "nan"),
        ("CYGATE_ACCESS_LOG_SAMPLE", "inf"),
        ("CYGATE_ACCESS_LOG_SAMPLE", "abc"),
        ("CYGATE_ACCESS_LOG_SAMPLE", ""),
        ("CYGATE_ACCESS_LOG_SAMPLE", "50%"),
        ("CYGATE_ACCESS_LOG_QUEUE", "0"),
        ("CYGATE_ACCESS_LOG_QUEUE", "ten"),
    ],
)
def test_a_bad_value_is_a_settings_error_naming_it(name: str, value: str) -> None:
    flat = name.removeprefix("CYGATE_").lower()
    with pytest.raises(SettingsError, match=f"invalid setting {flat} "):
        load_settings({name: value})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CYGATE_LOG_FORMAT", "xml"),
        ("CYGATE_ACCESS_LOG_SAMPLE", "2"),
        ("CYGATE_ACCESS_LOG_SAMPLE", "-1"),
        ("CYGATE_ACCESS_LOG_SAMPLE", "nan"),
        ("CYGATE_ACCESS_LOG_SAMPLE", "abc"),
    ],
)
@pytest.mark.parametrize("command", ["check-config", "serve", "worker"])
def test_the_commands_stop_with_one_line(command: str, name: str, value: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cygate", command],
        env={name: value, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    [line] = proc.stderr.strip().splitlines()
    flat = name.removeprefix("CYGATE_").lower()
    assert line.startswith(f"cygate: invalid setting {flat} ({name}={value!r})"), line
