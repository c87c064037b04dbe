"""The post-promotion guard's rules (services/monitoring/guard.py) and the registry's refusal to promote
again an artifact the guard rolled back (services/registry/promotion.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from google.protobuf.duration_pb2 import Duration

from flywheel.errors import InvalidArgument
from flywheel.slot_counts import since_baseline
from flywheel.v1 import common_pb2, events_pb2, monitoring_pb2, registry_pb2
from services.monitoring import guard, policy
from services.monitoring.drift import psi
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
        (M.GuardPolicy(rollback_on=[K.DRIFT_KIND_GUARD_ROLLBACK]), "policy.guard.rollback_on"),
        (M.GuardPolicy(max_error_rate=1.5), "policy.guard.max_error_rate"),
        (M.GuardPolicy(max_error_rate=float("nan")), "policy.guard.max_error_rate"),
        (M.GuardPolicy(min_requests=-1), "policy.guard.min_requests"),
        (M.GuardPolicy(max_p99_latency_ratio=float("inf")), "policy.guard.max_p99_latency_ratio"),
        (M.GuardPolicy(max_staging_psi=-0.1), "policy.guard.max_staging_psi"),
    ],
)
def test_a_guard_policy_out_of_range_is_refused(guard_policy: M.GuardPolicy, field: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        policy.check(M.MonitoringPolicy(model_name="m", guard=guard_policy))
    assert raised.value.field == field


def test_the_live_error_rate_is_judged_from_min_requests_against_its_limit() -> None:
    default = _policy()
    assert not guard.error_check(default, 99, 50).breached, "fewer than 100 requests: not judged yet"
    check = guard.error_check(default, 200, 3)
    assert check.breached and check.statistic == "error_rate" and check.score == 0.015 and check.threshold == 0.01
    assert not guard.error_check(default, 200, 2).breached, "1% is the limit, not a breach"
    strict = _policy(guard=M.GuardPolicy(max_error_rate=0.0, min_requests=10))
    assert guard.error_check(strict, 10, 1).breached and not guard.error_check(strict, 9, 9).breached


def test_each_serving_slot_counts_from_when_the_guard_first_saw_it() -> None:
    # A canary's slot became production's with 500 requests (40 failed) behind it: none of them count.
    baseline, requests, errors = since_baseline({}, {"a/1/10.0": (500, 40)})
    assert (requests, errors) == (0, 0) and baseline == {"a/1/10.0": [500, 40]}
    # Later: 100 more on it, 3 failed; a second replica's slot appears with 50 requests, 1 failed.
    baseline, requests, errors = since_baseline(baseline, {"a/1/10.0": (600, 43), "b/2/11.0": (50, 1)})
    assert (requests, errors) == (100, 3) and baseline["b/2/11.0"] == [50, 1]
    baseline, requests, errors = since_baseline(baseline, {"a/1/10.0": (700, 50), "b/2/11.0": (150, 1)})
    assert (requests, errors) == (300, 10)
    # A slot whose counts went back (reloaded under the same key) starts over; a gone one drops out.
    baseline, requests, errors = since_baseline(baseline, {"a/1/10.0": (5, 0)})
    assert (requests, errors) == (0, 0) and baseline == {"a/1/10.0": [5, 0]}
    # Stored junk (or the registry's old one-total format) is a fresh start, never an exception.
    assert since_baseline({"a/1/10.0": [1]}, {"a/1/10.0": (9, 9)})[1:] == (0, 0)
    assert since_baseline({"a/1/10.0": 5, "requests": 7}, {"a/1/10.0": (9, 9)})[1:] == (0, 0)


def test_the_alert_scores_of_a_breached_kind_are_its_numbers() -> None:
    p = _policy(quality=M.QualityThreshold(metric="accuracy", max_drop=0.05))
    scores = guard.kind_scores(_report(2, K.DRIFT_KIND_QUALITY), {K.DRIFT_KIND_QUALITY}, p)
    assert [(s.feature, s.statistic, s.score, s.threshold, s.breached) for s in scores] == [
        ("accuracy", "quality_drop", pytest.approx(0.54), pytest.approx(0.05), True)
    ]
    report = _report(2, K.DRIFT_KIND_DATA_DRIFT)
    report.feature_scores.extend([
        K.FeatureScore(feature="f0", statistic="psi", score=0.4, threshold=0.2, breached=True),
        K.FeatureScore(feature="f1", statistic="psi", score=0.1, threshold=0.2),
    ])  # fmt: skip
    assert [s.feature for s in guard.kind_scores(report, {K.DRIFT_KIND_DATA_DRIFT}, p)] == ["f0"]


def _outputs(classes: list[str | None], values: list[float] | None = None) -> dict[str, np.ndarray]:
    return {"class": np.array(classes, dtype=object),
            "variable": np.array(values if values is not None else [np.nan] * len(classes))}  # fmt: skip


def test_a_guarded_window_is_judged_on_latency_and_on_its_predictions_against_its_staging_sample() -> None:
    p = _policy(guard=M.GuardPolicy(max_p99_latency_ratio=2.0, max_staging_psi=0.25))
    staging = K.PredictionHistogram(classes=["0", "1"], counts=[500, 500])
    like_staging = guard.window_checks(p, K.TASK_CLASSIFICATION, _outputs(["0", "1"] * 50), 3.0, 2.0, staging, True)
    assert [(c.statistic, c.breached) for c in like_staging] == [("p99_latency_ratio", False), ("staging_psi", False)]
    assert like_staging[0].score == 1.5 and like_staging[1].score < 0.01
    # Nine in ten answers one class (and some none at all) where staging split evenly; p99 tripled.
    skewed = guard.window_checks(p, K.TASK_CLASSIFICATION, _outputs(["1"] * 90 + [None] * 10), 6.0, 2.0, staging, True)
    assert [(c.statistic, c.breached) for c in skewed] == [("p99_latency_ratio", True), ("staging_psi", True)]
    expected = psi(np.array([500, 500, 0]), np.array([0, 90, 10]))
    assert skewed[1].score == pytest.approx(expected) and expected > 1
    assert not any(
        c.breached
        for c in guard.window_checks(p, K.TASK_CLASSIFICATION, _outputs(["1"] * 90), 6.0, 2.0, staging, False)
    ), "a window under min_rows judges nothing"
    assert guard.window_checks(_policy(), K.TASK_CLASSIFICATION, _outputs(["1"]), 6.0, 2.0, staging, True) == [], (
        "the policy sets neither check"
    )
    assert guard.window_checks(p, K.TASK_CLASSIFICATION, _outputs(["1"]), 6.0, None, None, True) == [], (
        "nothing to compare with: no baseline p99, no staging histogram"
    )


def test_a_regressor_window_is_compared_with_its_staging_bins() -> None:
    p = _policy(guard=M.GuardPolicy(max_staging_psi=0.25))
    staging = K.PredictionHistogram(edges=[0.0, 1.0], counts=[100, 100, 100])  # (-inf,0), [0,1), [1,inf)
    even = guard.window_checks(p, K.TASK_REGRESSION, _outputs([None] * 6, [-1, -1, 0.5, 0.0, 1.0, 2.0]), 0, 0,
                               staging, True)  # fmt: skip
    assert [(c.statistic, round(c.score, 6), c.breached) for c in even] == [("staging_psi", 0.0, False)]
    shifted = guard.window_checks(p, K.TASK_REGRESSION, _outputs([None] * 6, [5.0] * 6), 0, 0, staging, True)
    assert shifted[0].breached and shifted[0].score > 1


def test_the_reason_names_a_breached_live_check_with_its_numbers() -> None:
    report = M.WindowReport(window_id="w-9", model=K.ModelRef(name="m", version=3))
    report.guard_checks.append(K.FeatureScore(feature="guard", statistic="staging_psi", score=1.234, threshold=0.25,
                                              breached=True))  # fmt: skip
    assert guard.reason(report, set(), 2) == (
        "guard: v3 breached in window w-9: staging_psi 1.234 > 0.25; rolled back to v2"
    )


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
