"""Progressive rollout rules (services/registry/rollout.py): when a canary waits, advances, is promoted
or is aborted, and which gate says so; policy validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.duration_pb2 import Duration

from flywheel.errors import InvalidArgument
from flywheel.v1 import common_pb2, monitoring_pb2
from services.registry import rollout, rules

K, M = common_pb2, monitoring_pb2
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _policy(**gates) -> K.PromotionPolicy:  # type: ignore[no-untyped-def]
    return K.PromotionPolicy(
        metric="accuracy", direction=K.METRIC_DIRECTION_MAXIMIZE,
        rollout=K.RolloutPolicy(mode=K.ROLLOUT_MODE_PROGRESSIVE, steps=[10, 50], min_step_duration=Duration(seconds=30),
                                min_step_rows=100, gates=K.RolloutGates(**gates)),
    )  # fmt: skip


def _report(rows: int = 200, p99: tuple[float, float] = (2.0, 2.0), psi: float = 0.01, labelled: int = 0,
            quality: tuple[float, float] = (0.9, 0.9)) -> M.CanaryReport:  # fmt: skip
    return M.CanaryReport(
        canary_rows=rows, production_rows=rows * 5, canary_latency=M.LatencySummary(p99_ms=p99[0]),
        production_latency=M.LatencySummary(p99_ms=p99[1]), prediction_psi=psi,
        canary_labelled_rows=labelled, production_labelled_rows=labelled * 5,
        canary_quality=[K.Metric(name="accuracy", value=quality[0])],
        production_quality=[K.Metric(name="accuracy", value=quality[1])],
    )  # fmt: skip


def _judge(step: int = 0, after_s: float = 60, requests: int = 200, errors: int = 0, **report) -> rollout.Verdict:  # type: ignore[no-untyped-def]
    signals = rollout.Signals(requests, errors, _report(**report))
    return rollout.judge(_policy(), step, T0, T0 + timedelta(seconds=after_s), signals)


def test_a_step_waits_for_its_dwell_time_and_its_rows_then_advances_then_promotes() -> None:
    assert _judge(after_s=10).action == rollout.WAIT
    assert _judge(rows=50).action == rollout.WAIT
    advanced = _judge()
    assert advanced.action == rollout.ADVANCE and "10% -> 50%" in advanced.reason
    promoted = _judge(step=1)
    assert promoted.action == rollout.PROMOTE and "10%, 50%" in promoted.reason


@pytest.mark.parametrize(
    ("signals", "gate"),
    [
        ({"requests": 100, "errors": 5}, "error_rate"),
        ({"p99": (9.0, 2.0)}, "p99_latency_ratio"),
        ({"psi": 0.6}, "prediction_psi"),
        ({"labelled": 60, "quality": (0.6, 0.9)}, "quality_drop"),
    ],
)
def test_a_breached_gate_aborts_at_once_naming_the_gate_and_its_numbers(signals, gate) -> None:  # type: ignore[no-untyped-def]
    verdict = _judge(after_s=1, **signals)  # long before the step could end
    assert verdict.action == rollout.ABORT, verdict
    assert verdict.reason.startswith("canary at 10% aborted: " + gate), verdict.reason
    assert [g.gate for g in verdict.gates if g.breached] == [gate]


def test_gates_are_not_judged_on_too_small_a_sample() -> None:
    assert _judge(requests=10, errors=10).action == rollout.ADVANCE, "10 requests: the error rate is not judged yet"
    assert _judge(rows=50, psi=5.0, p99=(90.0, 1.0)).action == rollout.WAIT, "too few rows for latency and PSI"
    few_labels = _judge(labelled=10, quality=(0.1, 0.9))
    assert few_labels.action == rollout.ADVANCE and not any(g.breached for g in few_labels.gates)
    assert {g.gate: g.sample for g in few_labels.gates}["quality_drop"] == 0, "unjudged gates show no sample"


def test_a_rollout_policy_out_of_range_is_refused() -> None:
    for bad, field in [
        (K.RolloutPolicy(steps=[50, 10]), "policy.rollout.steps"),
        (K.RolloutPolicy(steps=[100]), "policy.rollout.steps"),
        (K.RolloutPolicy(steps=[float("nan")]), "policy.rollout.steps"),
        (K.RolloutPolicy(min_step_duration=Duration(seconds=-1)), "policy.rollout.min_step_duration"),
        (K.RolloutPolicy(min_step_rows=-1), "policy.rollout.min_step_rows"),
        (K.RolloutPolicy(gates=K.RolloutGates(max_error_rate=1.5)), "policy.rollout.gates.max_error_rate"),
        (
            K.RolloutPolicy(gates=K.RolloutGates(max_prediction_psi=float("inf"))),
            "policy.rollout.gates.max_prediction_psi",
        ),
        (K.RolloutPolicy(mode=7), "policy.rollout.mode"),  # type: ignore[arg-type]
    ]:
        with pytest.raises(InvalidArgument) as raised:
            rules.check_policy(K.PromotionPolicy(metric="accuracy", rollout=bad))
        assert raised.value.field == field, (bad, raised.value.field)
    rules.check_policy(_policy(max_error_rate=0.0))
    assert rollout.steps(K.PromotionPolicy()) == [5.0, 25.0, 50.0]


def _shadow_policy(**gates) -> K.PromotionPolicy:  # type: ignore[no-untyped-def]
    policy = _policy(min_labelled_rows=50, **gates)
    policy.rollout.shadow_first = True
    return policy


def _shadow(rows: int = 200, agreement: float = 0.95, labelled: int = 80,
            quality: tuple[float, float] = (0.95, 0.85)) -> M.ShadowComparison:  # fmt: skip
    return M.ShadowComparison(
        rows=rows, agreement=agreement, challenger_latency=M.LatencySummary(p99_ms=2.0),
        production_latency=M.LatencySummary(p99_ms=2.0), labelled_rows=labelled,
        challenger_quality=[K.Metric(name="accuracy", value=quality[0])],
        production_quality=[K.Metric(name="accuracy", value=quality[1])],
    )  # fmt: skip


def _judge_shadow(policy: K.PromotionPolicy, after_s: float = 60, **shadow) -> rollout.Verdict:  # type: ignore[no-untyped-def]
    signals = rollout.Signals(200, 0, shadow=_shadow(**shadow))
    return rollout.judge(policy, 0, T0, T0 + timedelta(seconds=after_s), signals)


def test_a_shadow_step_comes_first_and_its_gates_say_whether_the_challenger_is_better_on_live_traffic() -> None:
    policy = _shadow_policy(min_agreement=0.9, min_live_improvement=0.05)
    assert rollout.phases(policy) == [rollout.SHADOW, 10.0, 50.0]
    advanced = _judge_shadow(policy)
    assert advanced.action == rollout.ADVANCE and advanced.reason.startswith("shadow -> canary 10%"), advanced
    assert {g.gate for g in advanced.gates} == {"error_rate", "p99_latency_ratio", "agreement", "live_improvement"}

    worse = _judge_shadow(policy, after_s=1, quality=(0.86, 0.85))  # better, but not by the margin
    assert worse.action == rollout.ABORT
    assert worse.reason.startswith("shadow aborted: live_improvement 0.01 < 0.05 (over 80)"), worse.reason
    disagrees = _judge_shadow(policy, after_s=1, agreement=0.4)
    assert disagrees.action == rollout.ABORT and "agreement 0.4 < 0.9" in disagrees.reason

    unlabelled = _judge_shadow(policy, labelled=10, quality=(0.1, 0.9))
    assert unlabelled.action == rollout.WAIT and "live_improvement" in unlabelled.reason, "no verdict without labels"
    assert _judge_shadow(_shadow_policy(), labelled=0).action == rollout.ADVANCE, "no shadow gate asked: dwell only"
    promoted = rollout.judge(policy, 2, T0, T0 + timedelta(seconds=60), rollout.Signals(200, 0, report=_report()))
    assert promoted.action == rollout.PROMOTE and "rolled out through shadow, 10%, 50%" in promoted.reason


def test_shadow_gate_thresholds_are_checked() -> None:
    for gates, field in [
        (K.RolloutGates(min_agreement=1.5), "policy.rollout.gates.min_agreement"),
        (K.RolloutGates(min_live_improvement=float("nan")), "policy.rollout.gates.min_live_improvement"),
    ]:
        with pytest.raises(InvalidArgument) as raised:
            rules.check_policy(K.PromotionPolicy(metric="accuracy", rollout=K.RolloutPolicy(gates=gates)))
        assert raised.value.field == field
    rules.check_policy(K.PromotionPolicy(metric="accuracy", rollout=K.RolloutPolicy(
        gates=K.RolloutGates(min_live_improvement=-0.02))))  # fmt: skip  # "no worse than 0.02" is a policy too
