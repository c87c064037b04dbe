"""Events are hints; the registry decides. A `model.promoted` anyone could have written moves
monitoring's reference only when the registry confirms that version is in production, so a forged
or stale event cannot point drift detection at a version that is not serving."""

from __future__ import annotations

from flywheel import clients
from flywheel.config import Settings
from flywheel.errors import NotFound
from flywheel.retry import Backoff, retry
from flywheel.v1 import registry_pb2

# A registry that stays away longer fails the handler, which the consumer retries (then DLQ; the
# start-up reconcile covers what that loses), rather than holding the inbox transaction open.
CONFIRM_ATTEMPTS = 4


async def registry_production(settings: Settings, model: str) -> registry_pb2.ModelVersion | None:
    """The registry's production version of `model`; None when it has none."""
    try:
        return await retry(
            lambda: clients.model_version(settings, model, alias="production"),
            backoff=Backoff.from_settings(settings),
            what=f"registry: production of {model}",
            attempts=CONFIRM_ATTEMPTS,
        )
    except NotFound:
        return None


def promotion_verdict(event_version: int, production: registry_pb2.ModelVersion | None) -> str:
    """Why a model.promoted naming `event_version` is ignored; "" when the registry agrees."""
    if production is None:
        return "the registry has no production version"
    if production.ref.version != event_version:
        return f"the registry has v{production.ref.version} in production"
    return ""
