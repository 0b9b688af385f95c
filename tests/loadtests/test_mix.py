"""The mix as locust loads it (in a subprocess: locust patches the standard library when
imported): the documented requests per task and per user, and the shape chosen by name."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from load_helpers import LOADTESTS, REPO

pytestmark = pytest.mark.once

PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from locust.util.load_locustfile import load_locustfile
users, shapes = load_locustfile(sys.argv[1] + "/locustfile.py")
import mix
print(json.dumps({
    "users": sorted(users),
    "shapes": [type(s).__name__ for s in shapes],
    "per_task": {c.__name__: round(mix.requests_per_iteration(c), 3) for c in mix.MIX_CLASSES},
    "per_user_second": round(mix.requests_per_user_second(), 2),
    "weights": {c.__name__: c.weight for c in mix.MIX_CLASSES},
}))
"""


def _probe(**env: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(LOADTESTS)],
        env={"PATH": "/usr/bin:/bin", **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_the_mix_offers_the_documented_rate_per_user() -> None:
    got = _probe()
    assert got["per_task"] == {"Visitor": 1.0, "Customer": 1.132, "CatalogManager": 2.0}
    assert got["weights"] == {"Visitor": 70, "Customer": 29, "CatalogManager": 1}
    assert got["per_user_second"] == 2.08  # docs/load.md: 1.04 / 0.5 s
    assert got["shapes"] == []  # no LOAD_SHAPE: locust's --users drive the run
    assert {"Visitor", "Customer", "CatalogManager", "CatalogBrowser", "Shopper"} <= set(
        got["users"]  # type: ignore[arg-type]
    )


def test_the_named_shape_is_the_only_one_locust_sees() -> None:
    assert _probe(LOAD_SHAPE="step")["shapes"] == ["StepShape"]
    assert _probe(LOAD_SHAPE="soak", LOAD_THINK_S="0.2")["per_user_second"] == 5.19
