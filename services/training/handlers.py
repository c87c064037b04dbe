"""Event reactions of the training service."""

from __future__ import annotations

from flywheel.app import ServiceContext
from flywheel.bus import Handler, Topics
from flywheel.bus.consumer import acknowledge_only


def handlers(ctx: ServiceContext) -> dict[str, Handler]:
    return {
        Topics.DATA_VERSIONED: acknowledge_only(
            "enqueue a run for each spec following the dataset (issue 4)"
        ),
        Topics.DRIFT_DETECTED: acknowledge_only("enqueue a retraining run for the model's spec (issue 6)"),
    }
