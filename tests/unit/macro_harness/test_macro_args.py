"""The harness's options that shape the load: ``--id-mix``."""

from __future__ import annotations

import pytest
from benchmarks.macro.prepare import MIX_SIZE
from benchmarks.macro.run import _parse_args

pytestmark = pytest.mark.once


def test_the_id_mix_defaults_to_the_prepared_mix_and_takes_a_control_of_one() -> None:
    assert _parse_args([]).id_mix == MIX_SIZE == 1000
    assert _parse_args(["--id-mix", "1"]).id_mix == 1


@pytest.mark.parametrize("bad", ["0", "-3", "many"])
def test_an_id_mix_below_one_is_refused(bad: str) -> None:
    with pytest.raises(SystemExit):
        _parse_args(["--id-mix", bad])
