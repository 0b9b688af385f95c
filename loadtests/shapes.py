"""Load shapes for the seed's traffic mix (``loadtests/mix.py``), selected by name.

A shape is a locust ``LoadTestShape``: it runs on the master (or the standalone runner) and sets
the number of users second by second. The mix's users pace themselves (each starts a task on
average every ``LOAD_THINK_S`` seconds, whatever the latency: :func:`mix.paced`), so a user count
is an offered request rate: ``users = rate / mix.requests_per_user_second()``. The shapes are
written in that rate (``LOAD_RATE``, requests per second offered):

========  =================================================================================
steady    ramp to ``LOAD_RATE`` over ``LOAD_RAMP`` and hold it for ``LOAD_RUN_TIME``
step      ``LOAD_STEPS`` equal steps up to ``LOAD_RATE``, each held ``LOAD_RUN_TIME / steps``
spike     ``LOAD_RATE`` / 4 as the base, ``LOAD_RATE`` for the middle fifth of the run, back
soak      steady, long: ``LOAD_RUN_TIME`` defaults to 2 h (only the shape; no sampling)
========  =================================================================================

``LOAD_SHAPE`` names one (the locustfile exposes only that class, so locust runs it headless);
unset, the locustfile has no shape and locust's ``--users``/``--run-time`` drive the run.
Every value is checked by :func:`load_params` before any load starts: a bad one is a
:class:`ParamError` with a one-line message naming the variable.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "SHAPES",
    "LoadParams",
    "ParamError",
    "RateShape",
    "load_params",
    "parse_duration",
    "select_shape",
]

DEFAULT_RUN_TIME = {"steady": 60.0, "step": 120.0, "spike": 100.0, "soak": 7200.0}
_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?")


class ParamError(ValueError):
    """A bad load parameter; ``str()`` is the one line shown to the user."""


def parse_duration(name: str, text: str) -> float:
    """``90``, ``90s``, ``5m``, ``1h30m`` in seconds (> 0), else :class:`ParamError`."""
    value = text.strip().lower()
    match = _DURATION.fullmatch(value)
    if not value or match is None:
        raise ParamError(f"{name}={text!r}: not a duration (e.g. 90, 45s, 5m, 1h30m)")
    hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    total = float(hours * 3600 + minutes * 60 + seconds)
    if total <= 0:
        raise ParamError(f"{name}={text!r}: must be more than 0 seconds")
    return total


def _positive(name: str, text: str, kind: Callable[[str], float] = float) -> float:
    try:
        value = kind(text.strip())
    except ValueError:
        raise ParamError(f"{name}={text!r}: not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise ParamError(f"{name}={text!r}: must be a number above 0")
    return value


@dataclass(frozen=True, slots=True)
class LoadParams:
    """The load a shape applies (from the environment, checked)."""

    shape: str
    rate: float  # requests per second offered at the shape's peak
    run_time: float  # seconds
    ramp: float  # seconds to reach a new level
    steps: int


SHAPES: tuple[str, ...] = ("steady", "step", "spike", "soak")


def load_params(env: Mapping[str, str] | None = None) -> LoadParams:
    """The shape parameters from ``LOAD_SHAPE``, ``LOAD_RATE``, ``LOAD_RUN_TIME``,
    ``LOAD_RAMP`` and ``LOAD_STEPS``; :class:`ParamError` for any bad one."""
    env = os.environ if env is None else env
    shape = env.get("LOAD_SHAPE", "steady").strip().lower() or "steady"
    if shape not in SHAPES:
        raise ParamError(f"LOAD_SHAPE={shape!r}: unknown shape; known: {', '.join(SHAPES)}")
    rate = _positive("LOAD_RATE", env.get("LOAD_RATE", "") or "200")
    run_time_text = env.get("LOAD_RUN_TIME", "")
    run_time = (
        parse_duration("LOAD_RUN_TIME", run_time_text) if run_time_text else DEFAULT_RUN_TIME[shape]
    )
    ramp = parse_duration("LOAD_RAMP", env.get("LOAD_RAMP", "") or "10s")
    steps = int(_positive("LOAD_STEPS", env.get("LOAD_STEPS", "") or "5", int))
    return LoadParams(shape, rate, run_time, ramp, steps)


class RateShape:
    """A shape written as offered requests per second over time (:meth:`rate_at`); mixed with
    locust's ``LoadTestShape`` by :func:`select_shape` (so this module imports without locust,
    which patches the standard library when imported)."""

    abstract = True
    params: LoadParams
    per_user: float  # requests per second one mix user offers
    classes: list[type] | None = None  # the user classes to spawn (None: all)

    def rate_at(self, t: float) -> float | None:  # pragma: no cover - overridden
        """Offered requests per second at ``t`` seconds into the run; None: the run is over."""
        raise NotImplementedError

    def level(self, t: float) -> tuple[int, float] | None:
        """(users, spawn rate) at ``t`` seconds; None: the run is over. A new level is reached
        in ``LOAD_RAMP`` seconds (at least 1 user a second); the spawn rate stays the same
        while the level does, so locust does not restart the ramp every tick."""
        rate = self.rate_at(t)
        if rate is None:
            return None
        users = max(1, math.ceil(rate / self.per_user))
        previous, spawn_rate = getattr(self, "_level", (0, 1.0))
        if users != previous:
            spawn_rate = max(1.0, abs(users - previous) / self.params.ramp)
            self._level = (users, spawn_rate)
        return users, spawn_rate

    def tick(self) -> tuple[int, float] | None:
        """locust's hook (``get_run_time``: ``LoadTestShape``'s)."""
        return self.level(self.get_run_time())  # type: ignore[attr-defined]


class SteadyShape(RateShape):
    """Ramp to the rate, hold it for the run time."""

    abstract = True

    def rate_at(self, t: float) -> float | None:
        p = self.params
        return p.rate if t < p.ramp + p.run_time else None


class SoakShape(SteadyShape):
    """A steady shape meant to run long (default 2 h)."""

    abstract = True


class StepShape(RateShape):
    """``steps`` equal steps up to the rate, each held ``run_time / steps``."""

    abstract = True

    def rate_at(self, t: float) -> float | None:
        p = self.params
        hold = p.run_time / p.steps
        step = int(t // hold)
        return p.rate * (step + 1) / p.steps if step < p.steps else None


class SpikeShape(RateShape):
    """A quarter of the rate, the full rate for the middle fifth of the run, a quarter again."""

    abstract = True

    def rate_at(self, t: float) -> float | None:
        p = self.params
        if t >= p.run_time:
            return None
        return p.rate if 0.4 * p.run_time <= t < 0.6 * p.run_time else p.rate / 4


_CLASSES: dict[str, type[RateShape]] = {
    "steady": SteadyShape,
    "step": StepShape,
    "spike": SpikeShape,
    "soak": SoakShape,
}


def select_shape(params: LoadParams, per_user: float) -> type[Any]:
    """The locust ``LoadTestShape`` class for ``params`` (locust instantiates it)."""
    from locust import LoadTestShape

    base = _CLASSES[params.shape]
    return type(
        base.__name__,
        (base, LoadTestShape),
        {"abstract": False, "params": params, "per_user": per_user, "__module__": __name__},
    )
