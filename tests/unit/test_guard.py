"""The post-promotion guard's rules (services/monitoring/guard.py) and the registry's refusal to promote
again an artifact the guard rolled back (services/registry/promotion.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.duration_pb2 import Duration

from flywheel.errors import InvalidArgument
from flywheel.v1 import common_pb2, events_pb2, monitoring_pb2, registry_pb2
from services.monitoring import guard, policy
from services.registry import promotion

M, K, R = monitoring_pb2, common_pb2, registry_pb2
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _policy(**fields) -> M.MonitoringPolicy:  # type: ignore[no-untyped-def]
    return policy.effective(M.MonitoringPolicy(model_name="m", enabled=True, **fields), "m")


def _report(version: int, *kinds: int) -> M.WindowReport:
    report = M.WindowReport(window_id="q-1", model=K.ModelRef(name="m", version=version), breached=list(kinds))
    report.quality.CopyFrom(M.QualityReport(metric="accuracy", value=0.41, reference_value=0.95, drop=0.54))
    return report


def test_by_default_the_guard_watches_an_hour_for_quality_and_estimated_performance() -> None:
    p = _policy()
    assert p.guard.duration.seconds == 3600
    assert set(p.guard.rollback_on) == {K.DRIFT_KIND_QUALITY, K.DRIFT_KIND_ESTIMATED_PERFORMANCE}


def test_a_breach_of_a_guarded_kind_by_the_guarded_version_in_time_rolls_back() -> None:
    p, until = _policy(), NOW + timedelta(minutes=5)
    assert guard.breaches(_report(2, K.DRIFT_KIND_QUALITY), p, 2, until, NOW) == {K.DRIFT_KIND_QUALITY}
    assert guard.breaches(_report(2, K.DRIFT_KIND_DATA_DRIFT), p, 2, until, NOW) == set(), "not a guarded kind"
    assert guard.breaches(_report(1, K.DRIFT_KIND_QUALITY), p, 2, until, NOW) == set(), "another version's window"
    assert guard.breaches(_report(2, K.DRIFT_KIND_QUALITY), p, 2, NOW - timedelta(seconds=1), NOW) == set(), "late"
    assert guard.breaches(_report(2, K.DRIFT_KIND_QUALITY), p, 2, None, NOW) == set(), "not armed"
    off = _policy(guard=M.GuardPolicy(disabled=True))
    assert guard.breaches(_report(2, K.DRIFT_KIND_QUALITY), off, 2, until, NOW) == set()
    drift_too = _policy(guard=M.GuardPolicy(rollback_on=[K.DRIFT_KIND_DATA_DRIFT]))
    assert guard.breaches(_report(2, K.DRIFT_KIND_DATA_DRIFT), drift_too, 2, until, NOW) == {K.DRIFT_KIND_DATA_DRIFT}


def test_the_reason_names_the_breach_with_its_numbers() -> None:
    why = guard.reason(_report(2, K.DRIFT_KIND_QUALITY), {K.DRIFT_KIND_QUALITY}, 1)
    assert why == (
        "guard: v2 breached in window q-1: accuracy 0.4100 vs recorded 0.9500 (drop 0.5400); rolled back to v1"
    )


def _promoted(previous: int, rollback: bool = False) -> events_pb2.ModelPromoted:
    event = events_pb2.ModelPromoted(
        model=K.ModelRef(name="m", version=2), previous_version=previous, rollback=rollback
    )
    event.meta.occurred_at.FromDatetime(NOW)
    return event


def test_only_a_forward_promotion_with_a_version_to_go_back_to_is_guarded() -> None:
    p = _policy(guard=M.GuardPolicy(duration=Duration(seconds=600)))
    assert guard.guarded_until(_promoted(1), p) == NOW + timedelta(seconds=600), "from the promotion, not from now"
    assert guard.guarded_until(_promoted(0), p) is None, "a first version has nothing to roll back to"
    assert guard.guarded_until(_promoted(1, rollback=True), p) is None, "a rollback never bounces back"
    assert guard.guarded_until(_promoted(1), _policy(guard=M.GuardPolicy(disabled=True))) is None


@pytest.mark.parametrize(
    ("guard_policy", "field"),
    [
        (M.GuardPolicy(duration=Duration(seconds=-1)), "policy.guard.duration"),
        (M.GuardPolicy(rollback_on=[42]), "policy.guard.rollback_on"),
        (M.GuardPolicy(rollback_on=[K.DRIFT_KIND_QUALITY] * 20), "policy.guard.rollback_on"),
    ],
)
def test_a_guard_policy_out_of_range_is_refused(guard_policy: M.GuardPolicy, field: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        policy.check(M.MonitoringPolicy(model_name="m", guard=guard_policy))
    assert raised.value.field == field


def _passed() -> R.StagingReport:
    return R.StagingReport(passed=True, sample_metrics=[K.Metric(name="accuracy", value=0.95)],
                           champion_metrics=[K.Metric(name="accuracy", value=0.70)])  # fmt: skip


def test_an_artifact_the_guard_rolled_back_is_not_promoted_again_however_good_it_looks() -> None:
    rule = K.PromotionPolicy(metric="accuracy", direction=K.METRIC_DIRECTION_MAXIMIZE, min_improvement=0.01)
    assert promotion.decide(rule, _passed(), [], 1, []).state == R.PROMOTION_STATE_PROMOTED
    refused = promotion.decide(rule, _passed(), [], 1, [], guard_rolled_back=2)
    assert refused.state == R.PROMOTION_STATE_NOT_PROMOTED
    assert "same artifact as v2" in refused.reason and "guard" in refused.reason
    failed = promotion.decide(rule, R.StagingReport(passed=False), [], 1, [], guard_rolled_back=2)
    assert failed.state == R.PROMOTION_STATE_CHECKS_FAILED, "failed checks still say so first"
