"""Monitoring policy defaults and validation, and the alerting rule. Plain Python."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeAlias

from flywheel.errors import InvalidArgument
from flywheel.v1 import common_pb2, monitoring_pb2

M = monitoring_pb2
DriftKind: TypeAlias = common_pb2.DriftKind.ValueType
DEFAULT_WINDOW_ROWS = 500
DEFAULT_WINDOW_S = 60
DEFAULT_MIN_ROWS = 100
DEFAULT_CONSECUTIVE = 1
DEFAULT_COOLDOWN_S = 300
DEFAULT_MIN_LABELLED = 50


def effective(policy: monitoring_pb2.MonitoringPolicy | None, model: str) -> monitoring_pb2.MonitoringPolicy:
    """The policy with every unset knob at its default (what a model gets with no policy at all)."""
    p = M.MonitoringPolicy()
    if policy is not None:
        p.CopyFrom(policy)
    else:
        p.enabled = True
    p.model_name = model
    if not p.window.size_rows:
        p.window.size_rows = DEFAULT_WINDOW_ROWS
    if not p.window.HasField("duration"):
        p.window.duration.FromSeconds(DEFAULT_WINDOW_S)
    if not p.window.min_rows:
        p.window.min_rows = min(DEFAULT_MIN_ROWS, p.window.size_rows)
    if not p.consecutive_breaches:
        p.consecutive_breaches = DEFAULT_CONSECUTIVE
    if not p.HasField("cooldown"):
        p.cooldown.FromSeconds(DEFAULT_COOLDOWN_S)
    if not p.quality.min_labelled_rows:
        p.quality.min_labelled_rows = DEFAULT_MIN_LABELLED
    return p


def check(policy: monitoring_pb2.MonitoringPolicy) -> None:
    if not policy.model_name:
        raise InvalidArgument("names the model it applies to", field="policy.model_name")
    if policy.window.size_rows < 0 or policy.window.min_rows < 0:
        raise InvalidArgument("must be >= 0", field="policy.window")
    if policy.consecutive_breaches < 0:
        raise InvalidArgument("must be >= 0", field="policy.consecutive_breaches")
    for i, seg in enumerate(policy.segments):
        if not seg.field:
            raise InvalidArgument("a segment needs a field", field=f"policy.segments[{i}].field")
        if list(seg.bucket_edges) != sorted(seg.bucket_edges):
            raise InvalidArgument("bucket edges must be increasing", field=f"policy.segments[{i}].bucket_edges")


@dataclass(frozen=True)
class AlertDecision:
    kind: DriftKind
    raise_alert: bool  # the streak reached the policy's count
    suppressed: bool  # ... but an alert of this kind went out within the cooldown


def decide_alerts(
    policy: monitoring_pb2.MonitoringPolicy,
    breached: set[DriftKind],
    streaks: dict[DriftKind, int],
    last_alert: dict[DriftKind, datetime],
    now: datetime,
) -> tuple[list[AlertDecision], dict[DriftKind, int]]:
    """Which breached kinds raise an alert now; returns the decisions and the new streak counts."""
    cooldown = timedelta(seconds=policy.cooldown.ToTimedelta().total_seconds())
    new_streaks = {kind: (streaks.get(kind, 0) + 1 if kind in breached else 0) for kind in set(streaks) | breached}
    decisions = []
    for kind in sorted(breached):
        if new_streaks[kind] < policy.consecutive_breaches:
            continue
        last = last_alert.get(kind)
        decisions.append(AlertDecision(kind, True, last is not None and now - last < cooldown))
    return decisions, new_streaks


KIND_NAMES: dict[DriftKind, str] = {
    common_pb2.DRIFT_KIND_DATA_DRIFT: "data drift",
    common_pb2.DRIFT_KIND_PREDICTION_DRIFT: "prediction drift",
    common_pb2.DRIFT_KIND_INTEGRITY: "data integrity",
    common_pb2.DRIFT_KIND_QUALITY: "model quality",
    common_pb2.DRIFT_KIND_SEGMENT: "segment",
}
