"""Micro-benchmarks (pytest-benchmark): one hot path at a time, compiled vs pure vs peers.

Run ``python -m pytest benchmarks/micro -q --benchmark-json=benchmarks/results/micro-latest.json``
then ``python benchmarks/report_micro.py`` for the per-operation table.
"""
