"""A payment processor simulator: a real HTTP server for development, tests and load tests."""

from __future__ import annotations

from cygate.simulator.processor import Simulator, SimulatorConfig, main

__all__ = ["Simulator", "SimulatorConfig", "main"]
