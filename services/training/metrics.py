"""Training's instruments (OpenTelemetry metrics; exported as the telemetry setup says)."""

from __future__ import annotations

from flywheel.telemetry import meter

_meter = meter("flywheel.training")

loop_errors = _meter.create_counter(
    "flywheel.training.loop_errors",
    unit="{error}",
    description="Items a background loop (worker, reconcile, triggers) failed on, logged and skipped",
)
runs_stopped = _meter.create_counter(
    "flywheel.training.runs_stopped",
    unit="{run}",
    description="Runs stopped before they finished, by reason: timeout, memory, cancelled",
)
runs_finished = _meter.create_counter(
    "flywheel.training.runs",
    unit="{run}",
    description="Runs that ended, by outcome: succeeded, failed (cancelled runs count in runs_stopped)",
)
