"""The dependency circuit shared by the rate limiter and the revocation check."""

from __future__ import annotations

import logging
import time

import pytest

from cygate.infra.circuit import Circuit

log = logging.getLogger("test.circuit")


def test_closed_until_a_failure_then_open_for_the_backoff_then_one_probe(
    caplog: pytest.LogCaptureFixture,
) -> None:
    c = Circuit("thing", timeout=0.2, backoff=0.3, log=log)
    assert c.usable and c.admit() and c.admit()  # closed: everyone goes
    with caplog.at_level(logging.WARNING, logger="test.circuit"):
        c.failed(TimeoutError("hung"), "doing without")
        c.failed(TimeoutError("hung"), "doing without")  # a second caller's failure
    assert caplog.text.count("thing failed") == 1  # logged when it opens, not per failure
    assert "doing without" in caplog.text
    assert not c.usable and not c.admit()
    assert 0 < c.retry_after <= 0.3
    time.sleep(0.32)
    assert c.usable
    assert c.admit()  # the probe
    assert not c.admit() and not c.usable  # the others wait for its report
    with caplog.at_level(logging.WARNING, logger="test.circuit"):
        c.succeeded()
    assert "thing answers again (after 2 failures)" in caplog.text
    assert c.usable and c.admit() and c.admit()
    assert c.retry_after == 0.3


def test_a_failed_probe_opens_it_again() -> None:
    c = Circuit("thing", timeout=0.2, backoff=0.1, log=log)
    c.failed(OSError("refused"), "x")
    time.sleep(0.12)
    assert c.admit()
    c.failed(OSError("refused"), "x")
    assert not c.admit()
    assert c.failures == 2
