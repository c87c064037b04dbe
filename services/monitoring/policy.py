"""Monitoring policy defaults and validation, and the alerting rule. Plain Python."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeAlias

from flywheel.errors import InvalidArgument
from flywheel.v1 import common_pb2, monitoring_pb2
from services.monitoring import limits

M = monitoring_pb2
DriftKind: TypeAlias = common_pb2.DriftKind.ValueType
DEFAULT_WINDOW_ROWS = 500
DEFAULT_WINDOW_S = 60
DEFAULT_MIN_ROWS = 100
DEFAULT_CONSECUTIVE = 1
DEFAULT_COOLDOWN_S = 300
DEFAULT_MIN_LABELLED = 50
DEFAULT_ESTIMATED_METRIC = "accuracy"
DEFAULT_ESTIMATED_MAX_DROP = 0.05
ESTIMATED_METRICS = ("accuracy", "f1", "roc_auc")  # what services/monitoring/estimation.py estimates
DEFAULT_GUARD_S = 3600
DEFAULT_GUARD_KINDS = (common_pb2.DRIFT_KIND_QUALITY, common_pb2.DRIFT_KIND_ESTIMATED_PERFORMANCE)


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
    if not p.estimated_performance.metric:
        p.estimated_performance.metric = DEFAULT_ESTIMATED_METRIC
    if not p.estimated_performance.max_drop:
        p.estimated_performance.max_drop = DEFAULT_ESTIMATED_MAX_DROP
    if not p.guard.HasField("duration"):
        p.guard.duration.FromSeconds(DEFAULT_GUARD_S)
    if not p.guard.rollback_on:
        p.guard.rollback_on.extend(DEFAULT_GUARD_KINDS)
    return p


def check(policy: monitoring_pb2.MonitoringPolicy) -> None:
    """Every knob within its range (limits.py): a stored policy is read by every later window, so a
    NaN threshold or an absurd duration would break (or silently disable) all of them."""
    limits.text(policy.model_name, "policy.model_name", required=True)
    w = policy.window
    limits.count(w.size_rows, "policy.window.size_rows", limits.MAX_WINDOW_ROWS)
    limits.count(w.min_rows, "policy.window.min_rows", limits.MAX_WINDOW_ROWS)
    if w.HasField("duration"):
        limits.duration(w.duration, "policy.window.duration")
    if policy.HasField("default_thresholds"):
        _thresholds(policy.default_thresholds, "policy.default_thresholds")
    if len(policy.feature_thresholds) > limits.MAX_THRESHOLD_FEATURES:
        raise InvalidArgument(f"at most {limits.MAX_THRESHOLD_FEATURES} features", field="policy.feature_thresholds")
    for name, t in policy.feature_thresholds.items():
        limits.text(name, "policy.feature_thresholds", required=True)
        _thresholds(t, f"policy.feature_thresholds[{name!r}]")  # a checked name: short, printable by repr
    if policy.HasField("prediction_thresholds"):
        _thresholds(policy.prediction_thresholds, "policy.prediction_thresholds")
    for rate in ("max_null_rate", "max_out_of_range_rate", "max_unseen_category_rate", "max_type_mismatch_rate"):
        if policy.integrity.HasField(rate):
            limits.number(getattr(policy.integrity, rate), f"policy.integrity.{rate}", 0.0, 1.0)
    q = policy.quality
    limits.text(q.metric, "policy.quality.metric", limits.MAX_METRIC_CHARS)
    limits.number(q.max_drop, "policy.quality.max_drop", 0.0, limits.MAX_SCORE)
    limits.count(q.min_labelled_rows, "policy.quality.min_labelled_rows", limits.MAX_WINDOW_ROWS)
    e = policy.estimated_performance
    if e.metric and e.metric not in ESTIMATED_METRICS:
        raise InvalidArgument(f"one of {', '.join(ESTIMATED_METRICS)}", field="policy.estimated_performance.metric")
    limits.number(e.max_drop, "policy.estimated_performance.max_drop", 0.0, limits.MAX_SCORE)
    if policy.guard.HasField("duration"):
        limits.duration(policy.guard.duration, "policy.guard.duration")
    if len(policy.guard.rollback_on) > len(WINDOW_KINDS):
        raise InvalidArgument("each kind at most once", field="policy.guard.rollback_on")
    for kind in policy.guard.rollback_on:
        if kind not in WINDOW_KINDS:
            raise InvalidArgument(f"not a kind a window breaches: {kind}", field="policy.guard.rollback_on")
    g = policy.guard
    if g.HasField("max_error_rate"):
        limits.number(g.max_error_rate, "policy.guard.max_error_rate", 0.0, 1.0)
    limits.count(g.min_requests, "policy.guard.min_requests", limits.MAX_WINDOW_ROWS)
    if g.HasField("max_p99_latency_ratio"):
        limits.number(g.max_p99_latency_ratio, "policy.guard.max_p99_latency_ratio", 0.0, limits.MAX_SCORE)
    if g.HasField("max_staging_psi"):
        limits.number(g.max_staging_psi, "policy.guard.max_staging_psi", 0.0, limits.MAX_SCORE)
    if len(policy.segments) > limits.MAX_SEGMENTS:
        raise InvalidArgument(f"at most {limits.MAX_SEGMENTS} segments", field="policy.segments")
    for i, seg in enumerate(policy.segments):
        _segment(seg, f"policy.segments[{i}]")
    limits.count(policy.consecutive_breaches, "policy.consecutive_breaches", limits.MAX_CONSECUTIVE)
    if policy.HasField("cooldown"):
        limits.duration(policy.cooldown, "policy.cooldown")


def _thresholds(t: monitoring_pb2.FeatureThresholds, where: str) -> None:
    if t.HasField("psi"):
        limits.number(t.psi, f"{where}.psi", 0.0, limits.MAX_SCORE)
    if t.HasField("ks_statistic"):
        limits.number(t.ks_statistic, f"{where}.ks_statistic", 0.0, 1.0)
    if t.HasField("chi2_p_value"):
        limits.number(t.chi2_p_value, f"{where}.chi2_p_value", 0.0, 1.0)


def _segment(seg: monitoring_pb2.SegmentConfig, where: str) -> None:
    limits.text(seg.field, f"{where}.field", required=True)
    limits.text(seg.metric, f"{where}.metric", limits.MAX_METRIC_CHARS)
    if len(seg.bucket_edges) > limits.MAX_BUCKET_EDGES:
        raise InvalidArgument(f"at most {limits.MAX_BUCKET_EDGES} edges", field=f"{where}.bucket_edges")
    for edge in seg.bucket_edges:
        limits.number(edge, f"{where}.bucket_edges", -limits.MAX_SCORE, limits.MAX_SCORE)
    if list(seg.bucket_edges) != sorted(seg.bucket_edges):
        raise InvalidArgument("bucket edges must be increasing", field=f"{where}.bucket_edges")
    if seg.HasField("min_value"):
        limits.number(seg.min_value, f"{where}.min_value", -limits.MAX_SCORE, limits.MAX_SCORE)
    if seg.HasField("max_gap"):
        limits.number(seg.max_gap, f"{where}.max_gap", 0.0, limits.MAX_SCORE)
    limits.count(seg.min_rows, f"{where}.min_rows", limits.MAX_WINDOW_ROWS)


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
    common_pb2.DRIFT_KIND_ESTIMATED_PERFORMANCE: "estimated performance",
    common_pb2.DRIFT_KIND_GUARD_ROLLBACK: "guard rollback",
    common_pb2.DRIFT_KIND_ROLLOUT_ABORTED: "rollout aborted",
}
# Kinds a window's data can breach (the other two are raised about deployments).
WINDOW_KINDS = frozenset({
    common_pb2.DRIFT_KIND_DATA_DRIFT, common_pb2.DRIFT_KIND_PREDICTION_DRIFT, common_pb2.DRIFT_KIND_INTEGRITY,
    common_pb2.DRIFT_KIND_QUALITY, common_pb2.DRIFT_KIND_SEGMENT, common_pb2.DRIFT_KIND_ESTIMATED_PERFORMANCE,
})  # fmt: skip
