"""Samples of /metrics text read with prometheus_client's parser: label order and number format
(``2`` or ``2.0``) do not matter."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def samples(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def _spec(spec: str) -> Sample:
    [family] = text_string_to_metric_families(spec + " 0\n")
    [sample] = family.samples
    return sample


def value(text: str, spec: str) -> float | None:
    """The value of the sample ``spec`` (``name`` or ``name{label="v",...}``, every label given)
    in ``text``; None when there is none."""
    want = _spec(spec)
    for s in samples(text):
        if s.name == want.name and s.labels == want.labels:
            return float(s.value)
    return None


def total(text: str, spec: str) -> float:
    """The sum of the samples named like ``spec`` whose labels include ``spec``'s (0: none)."""
    want = _spec(spec)
    return sum(
        float(s.value)
        for s in samples(text)
        if s.name == want.name and want.labels.items() <= s.labels.items()
    )
