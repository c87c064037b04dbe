"""Events are hints; the registry decides. Anyone who can write to a topic can write an event, so
serving acts on `model.promoted` and `model.registered` only after asking the registry: it swaps
only to the version the registry has in production, and checks only a version the registry holds
and still waits checks for, with the registry's record of it (metrics, lineage), not the event's.
"""

from __future__ import annotations

from flywheel.confirm import CONFIRM_ATTEMPTS, promotion_verdict, registry_version
from flywheel.v1 import events_pb2, registry_pb2

__all__ = ["CONFIRM_ATTEMPTS", "as_registered", "promotion_verdict", "registry_version", "staging_verdict"]

R = registry_pb2


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
