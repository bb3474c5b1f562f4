"""Replay traffic patterns against scaling policies: the same policy objects
the control loop runs, a simulated queue and fleet, and reports."""

from __future__ import annotations

from autoscaler.simulator.engine import SimConfig, SimResult, Timeline, simulate
from autoscaler.simulator.patterns import BUILTIN, Pattern, get_pattern
from autoscaler.simulator.profile import DEFAULT_PROFILE, ServiceProfile

__all__ = [
    "BUILTIN",
    "DEFAULT_PROFILE",
    "Pattern",
    "ServiceProfile",
    "SimConfig",
    "SimResult",
    "Timeline",
    "get_pattern",
    "simulate",
]
