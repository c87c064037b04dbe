"""Event reactions of the monitoring service."""

from __future__ import annotations

from flywheel.app import ServiceContext
from flywheel.bus import Handler, Topics
from flywheel.bus.consumer import acknowledge_only


def handlers(ctx: ServiceContext) -> dict[str, Handler]:
    return {
        Topics.PREDICTIONS_LOGGED: acknowledge_only("window drift, integrity and latency statistics (issue 6)"),
        Topics.MODEL_PROMOTED: acknowledge_only("load the new production model's reference profile (issue 6)"),
        Topics.FEEDBACK: acknowledge_only("join labels to predictions for quality windows (issue 6)"),
    }
