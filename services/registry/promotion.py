"""The promotion rule: does a checked candidate replace the production version?

Champion and challenger are compared on the same rows when serving measured both on the
candidate's test-split sample; otherwise on the metrics recorded at training. Plain Python.
"""

from __future__ import annotations

from dataclasses import dataclass

from flywheel.v1 import common_pb2, registry_pb2

R = registry_pb2
LOWER_IS_BETTER = {"mae", "rmse", "mse", "log_loss"}


@dataclass(frozen=True)
class Decision:
    state: registry_pb2.PromotionState.ValueType
    reason: str


def default_policy(task: common_pb2.Task.ValueType) -> common_pb2.PromotionPolicy:
    """With no policy stored: promote automatically on any improvement of the task's usual metric."""
    if task == common_pb2.TASK_REGRESSION:
        return common_pb2.PromotionPolicy(
            metric="rmse", direction=common_pb2.METRIC_DIRECTION_MINIMIZE, approval=common_pb2.APPROVAL_MODE_AUTO
        )
    return common_pb2.PromotionPolicy(
        metric="f1", direction=common_pb2.METRIC_DIRECTION_MAXIMIZE, approval=common_pb2.APPROVAL_MODE_AUTO
    )


def _maximize(policy: common_pb2.PromotionPolicy) -> bool:
    if policy.direction == common_pb2.METRIC_DIRECTION_UNSPECIFIED:
        return policy.metric not in LOWER_IS_BETTER
    return policy.direction == common_pb2.METRIC_DIRECTION_MAXIMIZE


def _value(metrics: list[common_pb2.Metric], name: str) -> float | None:
    for m in metrics:
        if m.name == name and not m.class_label:
            return m.value
    return None


def decide(
    policy: common_pb2.PromotionPolicy,
    report: registry_pb2.StagingReport,
    candidate_recorded: list[common_pb2.Metric],
    champion_version: int,
    champion_recorded: list[common_pb2.Metric],
    guard_rolled_back: int = 0,
) -> Decision:
    """`guard_rolled_back`: a version with the candidate's very artifact that the post-promotion guard
    took out of production (0: none). Retraining on the same data can reproduce it byte for byte, and
    it would look better on the test split again; only a new model may undo the guard's rollback."""
    if not report.passed:
        failed = [f"{c.name} ({c.detail})" if c.detail else c.name for c in report.checks if not c.passed]
        return Decision(R.PROMOTION_STATE_CHECKS_FAILED, "staging checks failed: " + ", ".join(failed or ["unknown"]))
    if guard_rolled_back:
        return Decision(
            R.PROMOTION_STATE_NOT_PROMOTED,
            f"same artifact as v{guard_rolled_back}, which the post-promotion guard rolled back from production",
        )
    ready = (
        R.PROMOTION_STATE_PENDING_APPROVAL
        if policy.approval == common_pb2.APPROVAL_MODE_MANUAL
        else R.PROMOTION_STATE_PROMOTED
    )
    waiting = " (awaiting manual approval)" if ready == R.PROMOTION_STATE_PENDING_APPROVAL else ""
    if not champion_version:
        return Decision(ready, f"first version in production; staging checks passed{waiting}")

    metric = policy.metric
    candidate, champion = _value(list(report.sample_metrics), metric), _value(list(report.champion_metrics), metric)
    basis = "on the same test-split sample"
    if candidate is None or champion is None:
        candidate, champion = _value(candidate_recorded, metric), _value(champion_recorded, metric)
        basis = "on metrics recorded at training"
    if candidate is None or champion is None:
        return Decision(R.PROMOTION_STATE_NOT_PROMOTED, f"metric {metric!r} missing for candidate or production")
    improvement = candidate - champion if _maximize(policy) else champion - candidate
    margin = policy.min_improvement
    comparison = f"{metric} {candidate:.4f} vs production v{champion_version} {champion:.4f} {basis}"
    if improvement > 0 and improvement >= margin:
        return Decision(ready, f"better: {comparison} (improvement {improvement:.4f} >= margin {margin}){waiting}")
    return Decision(
        R.PROMOTION_STATE_NOT_PROMOTED,
        f"not better by the margin: {comparison} (improvement {improvement:.4f}, margin {margin})",
    )
