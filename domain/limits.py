"""EngineLimits: what the runs of one process may use; the container fills it from the settings."""

from __future__ import annotations

from dataclasses import dataclass


# No defaults: container/settings.py holds every default once, and a field left out is an error.
@dataclass(frozen=True, slots=True, kw_only=True)
class EngineLimits:
    max_engines_per_user: int
    max_engines_total: int
    run_timeout_s: float
    max_steps: int
    model_timeout_s: float
    delta_window_s: float  # message deltas within this window become one event (RunEventEmitter)
