"""Events are hints; the owner decides. Anyone who can write to a topic can write an event, so a
reaction that moves state first asks the service that owns the data. The registry lookups serving
and monitoring share live here.
"""

from __future__ import annotations

from flywheel import clients
from flywheel.config import Settings
from flywheel.errors import NotFound
from flywheel.retry import Backoff, retry
from flywheel.v1 import registry_pb2

# A registry that stays away longer fails the handler, which the consumer retries (then DLQ;
# reconciliation covers what that loses), rather than holding the inbox transaction open.
CONFIRM_ATTEMPTS = 4


async def registry_version(
    settings: Settings, name: str, version: int = 0, alias: str = ""
) -> registry_pb2.ModelVersion | None:
    """The registry's record of a version (by number or alias); None when it has no such version."""
    try:
        return await retry(
            lambda: clients.model_version(settings, name, version, alias=alias),
            backoff=Backoff.from_settings(settings),
            what=f"registry: {name} {alias or f'v{version}'}",
            attempts=CONFIRM_ATTEMPTS,
        )
    except NotFound:
        return None


def promotion_verdict(event_version: int, production: registry_pb2.ModelVersion | None) -> str:
    """Why a model.promoted naming `event_version` is ignored, given the registry's production
    version; "" when it names what the registry has in production."""
    if production is None:
        return "the registry has no production version"
    if production.ref.version != event_version:
        return f"the registry has v{production.ref.version} in production"
    return ""
