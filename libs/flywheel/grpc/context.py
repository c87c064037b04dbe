"""Who is calling: the explicit `actor` field wins, then the x-flywheel-actor metadata."""

from __future__ import annotations

import grpc

ACTOR_METADATA = "x-flywheel-actor"


def actor(context: grpc.aio.ServicerContext, explicit: str = "") -> str:
    if explicit:
        return explicit
    for key, value in context.invocation_metadata() or ():
        if key == ACTOR_METADATA and isinstance(value, str) and value:
            return value
    return "anonymous"
