"""The rules of a model's traffic policy (canary, shadow, production only) and of the replicas
that apply it. Plain values and functions: the store (traffic_store.py), the model manager and
the replica views use them; nothing here talks to a database, a broker or the network.

The policy is stored once, in serving's schema, and counted by a generation that every change
increases; each replica applies the stored policy and reports the generation it applied, which is
how a replica that has not caught up (or cannot) is told apart from one that has.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TypeAlias

from flywheel.errors import InvalidArgument
from flywheel.v1 import common_pb2, serving_pb2

S = serving_pb2
Mode: TypeAlias = serving_pb2.TrafficMode.ValueType
ReplicaState: TypeAlias = serving_pb2.ReplicaState.ValueType

MAX_VERSION = 2**31 - 1  # the registry numbers versions in a PostgreSQL integer
MAX_REASON_CHARS = 4096  # as the registry's reasons
MAX_ACTOR_CHARS = 256
PROMOTION_ACTOR = "serving"  # who ends a split when the challenger's version is promoted
SPLIT_MODES = (S.TRAFFIC_MODE_CANARY, S.TRAFFIC_MODE_SHADOW)


@dataclass(frozen=True)
class TrafficPolicy:
    """Who answers: production alone, or production with a challenger (canary or shadow)."""

    mode: Mode = S.TRAFFIC_MODE_PRODUCTION_ONLY
    challenger_version: int = 0
    percent: float = 0.0

    @property
    def split(self) -> bool:
        return self.mode in SPLIT_MODES

    @property
    def role(self) -> common_pb2.ServingRole.ValueType:
        """The challenger's role (what its predictions are logged as); UNSPECIFIED without one."""
        return {
            S.TRAFFIC_MODE_CANARY: common_pb2.SERVING_ROLE_CANARY,
            S.TRAFFIC_MODE_SHADOW: common_pb2.SERVING_ROLE_SHADOW,
        }.get(self.mode, common_pb2.SERVING_ROLE_UNSPECIFIED)

    def describe(self) -> str:
        if not self.split:
            return "production only"
        mode = "canary" if self.mode == S.TRAFFIC_MODE_CANARY else "shadow"
        return f"{mode} v{self.challenger_version} {self.percent:g}%"


PRODUCTION_ONLY = TrafficPolicy()


@dataclass(frozen=True)
class StoredPolicy:
    """A model's policy as stored (a deployment_state row); generation 0: never set."""

    model: str
    policy: TrafficPolicy = PRODUCTION_ONLY
    generation: int = 0
    updated_at: datetime | None = None
    updated_by: str = ""
    reason: str = ""


def requested(mode: Mode, version: int, percent: float) -> TrafficPolicy:
    """The policy a SetCanary/SetShadow asks for, checked field by field (InvalidArgument)."""
    if mode not in SPLIT_MODES:
        raise InvalidArgument("must be canary or shadow", field="mode")
    if not (math.isfinite(percent) and 0 < percent <= 100):
        raise InvalidArgument("must be in (0, 100]", field="percent")
    if not 1 <= version <= MAX_VERSION:
        raise InvalidArgument(f"must be a version number, 1 to {MAX_VERSION}", field="challenger_version")
    return TrafficPolicy(mode, version, float(percent))


def check_reason(reason: str) -> str:
    if len(reason) > MAX_REASON_CHARS:
        raise InvalidArgument(f"at most {MAX_REASON_CHARS} characters", field="reason")
    return reason


def check_actor(actor: str) -> str:
    """The audit's actor: the authenticated principal, or with auth off the request's word for it."""
    if len(actor) > MAX_ACTOR_CHARS:
        raise InvalidArgument(f"at most {MAX_ACTOR_CHARS} characters", field="actor")
    return actor


def effective(policy: TrafficPolicy, production_version: int) -> TrafficPolicy:
    """What a replica applies: a challenger that has become production no longer splits anything
    (promoting the challenger's version ends the split, even before the stored row says so)."""
    if policy.split and production_version and policy.challenger_version == production_version:
        return PRODUCTION_ONLY
    return policy


def promoted_end(stored: StoredPolicy, production_version: int) -> bool:
    """Whether the stored split should be ended because its challenger is now production."""
    return stored.policy.split and production_version > 0 and stored.policy.challenger_version == production_version


def promotion_reason(version: int) -> str:
    return f"challenger v{version} was promoted to production: the split ended"


def changed(old: StoredPolicy, new: TrafficPolicy, actor: str, reason: str, generation: int) -> StoredPolicy:
    """The row after a change (its time is the store's)."""
    return replace(old, policy=new, generation=generation, updated_by=actor, reason=reason)


# -- replicas ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AppliedView:
    """What one replica applies for one model, as it reports it."""

    model: str
    generation: int
    policy: TrafficPolicy
    production_version: int = 0
    error: str = ""  # why the stored policy could not be applied


def stale_after_s(reconcile_s: float) -> float:
    """A replica writes its heartbeat every serving_reconcile_s; three missed beats (and never less
    than 15 s, so a slow database round does not flag it) make it stale."""
    return max(15.0, 3.0 * reconcile_s)


def replica_state(
    view: AppliedView | None, stored: StoredPolicy, heartbeat_age_s: float, stale_after: float
) -> tuple[ReplicaState, str]:
    """A replica's standing against the stored policy, and the reason in words."""
    if heartbeat_age_s > stale_after:
        return S.REPLICA_STATE_STALE, f"no heartbeat for {heartbeat_age_s:.0f} s (stale after {stale_after:g} s)"
    if view is None:
        return S.REPLICA_STATE_DISAGREES, "has no deployment of this model"
    if view.error:
        return S.REPLICA_STATE_DISAGREES, f"cannot apply generation {stored.generation}: {view.error}"
    if view.generation != stored.generation:
        return (
            S.REPLICA_STATE_DISAGREES,
            f"applies generation {view.generation} ({view.policy.describe()}), stored is {stored.generation}"
            f" ({stored.policy.describe()})",
        )
    want = effective(stored.policy, view.production_version)
    if view.policy != want:  # same generation, other traffic: never expected; shown rather than hidden
        return S.REPLICA_STATE_DISAGREES, f"applies {view.policy.describe()}, stored is {want.describe()}"
    return S.REPLICA_STATE_IN_SYNC, f"applies generation {stored.generation}"
