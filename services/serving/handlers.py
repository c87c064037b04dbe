"""Event reactions of the serving service."""

from __future__ import annotations

from flywheel.app import ServiceContext
from flywheel.bus import Handler, Topics
from flywheel.bus.consumer import acknowledge_only


def handlers(ctx: ServiceContext) -> dict[str, Handler]:
    return {
        Topics.MODEL_REGISTERED: acknowledge_only("load into a staging slot and run staging checks (issue 5)"),
        Topics.MODEL_PROMOTED: acknowledge_only("warm the new version and swap atomically (issue 5)"),
    }
