"""Event reactions of the registry service: none; it reacts to RPCs and emits events."""

from __future__ import annotations

from typing import Any

from flywheel.app import ServiceContext
from flywheel.bus import Handler


def handlers(ctx: ServiceContext) -> dict[str, Handler[Any]]:
    return {}
