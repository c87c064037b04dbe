"""Events are hints; the registry decides. Anyone who can write to a topic can write an event, so
serving acts on `model.promoted` and `model.registered` only after asking the registry: it swaps
only to the version the registry has in production, and checks only a version the registry holds
and still waits checks for, with the registry's record of it (metrics, lineage), not the event's.
"""

from __future__ import annotations

from flywheel import clients
from flywheel.config import Settings
from flywheel.errors import NotFound
from flywheel.retry import Backoff, retry
from flywheel.v1 import events_pb2, registry_pb2

R = registry_pb2
# A registry that stays away longer fails the handler, which the consumer retries (then DLQ;
# reconciliation covers what that loses), rather than holding the inbox transaction open.
CONFIRM_ATTEMPTS = 4


async def registry_version(settings: Settings, name: str, version: int = 0, alias: str = "") -> R.ModelVersion | None:
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


def promotion_verdict(event_version: int, production: R.ModelVersion | None) -> str:
    """Why a model.promoted naming `event_version` is ignored, given the registry's production
    version; "" when it names what the registry has in production."""
    if production is None:
        return "the registry has no production version"
    if production.ref.version != event_version:
        return f"the registry has v{production.ref.version} in production"
    return ""


def staging_verdict(candidate: R.ModelVersion | None) -> str:
    """Why a model.registered is not checked, given the registry's record of the version; "" to check."""
    if candidate is None:
        return "the registry has no such version"
    if candidate.promotion.state != R.PROMOTION_STATE_PENDING_CHECKS:
        return f"the registry has it {R.PromotionState.Name(candidate.promotion.state)}, not waiting for checks"
    return ""


def as_registered(mv: R.ModelVersion) -> events_pb2.ModelRegistered:
    """What staging checks read, taken from the registry's record instead of the event."""
    return events_pb2.ModelRegistered(
        model=mv.ref,
        checksum=mv.checksum,
        artifact_uri=mv.artifact_uri,
        signature=mv.signature,
        metrics=mv.metrics,
        lineage=mv.lineage,
        tags=dict(mv.tags),
        task=mv.task,
        size_bytes=mv.size_bytes,
    )
