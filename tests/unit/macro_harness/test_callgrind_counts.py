"""``benchmarks.micro.instructions``: the callgrind output is read right (compressed names,
calls of the object constructor only, the total)."""

from __future__ import annotations

from benchmarks.micro.instructions import Count, parse_callgrind

# A callgrind file, cut down: names appear once in full, then by their number.
_OUT = """\
version: 1
events: Ir
fn=(1) main
0 10
cfn=(2) _Py_NewReference
calls=3 0
0 30
cfn=(3) PyObject_Malloc
calls=5 0
0 50
fn=(4) other
cfn=(2)
calls=4 0
0 40
cfn=(3)
calls=7 0
0 70
summary: 12345
totals: 12345
"""


def test_objects_are_the_calls_of_the_constructor_and_the_total_is_read() -> None:
    assert parse_callgrind(_OUT) == Count(instructions=12345, objects=7)


def test_an_empty_file_counts_nothing() -> None:
    assert parse_callgrind("") == Count(0, 0)
