"""Who is calling, for audit records: the authenticated principal, always.

A request's own `actor` field (or x-flywheel-actor metadata) is honoured only when authentication
is off (FLYWHEEL_AUTH_MODE=off, a trusted single-user setup); with authentication on it can never
replace the principal the credentials prove.
"""

from __future__ import annotations

from typing import Any

import grpc

from flywheel.auth.principal import current

ACTOR_METADATA = "x-flywheel-actor"


def actor(context: grpc.aio.ServicerContext[Any, Any], explicit: str = "") -> str:
    principal = current()
    if principal.kind != "anonymous":
        return principal.name
    if explicit:
        return explicit
    for key, value in context.invocation_metadata() or ():
        if key == ACTOR_METADATA and isinstance(value, str) and value:
            return value
    return "anonymous"
