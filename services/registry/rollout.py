"""Progressive rollout rules (plain Python): a version that earned promotion becomes a canary at the
policy's first step and advances while its live gates hold; it is promoted after the last step or
aborted as soon as a gate breaches. rollouts.py applies the verdicts; this decides them.

Gates, each judged once its sample is large enough:
- error rate: failed / all canary requests in the step (serving's counters), from 20 requests;
- p99 latency ratio: canary p99 / production p99 over the step (logged rows), from min_step_rows;
- prediction PSI: the canary's predictions against production's over the step, from min_step_rows;
- quality drop: production's live quality minus the canary's (labels since the rollout began, the
  promotion metric's worse direction), from min_labelled_rows labelled canary rows.
A step ends after min_step_duration with at least min_step_rows canary rows and every judged gate
holding; the quality gate may still be unjudged then (labels come late) and the rollout goes on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from flywheel import evaluation
from flywheel.errors import InvalidArgument
from flywheel.v1 import common_pb2, monitoring_pb2, registry_pb2

K, R = common_pb2, registry_pb2
DEFAULT_STEPS = (5.0, 25.0, 50.0)
DEFAULT_STEP_S = 60
DEFAULT_STEP_ROWS = 100
DEFAULT_MAX_ERROR_RATE = 0.01
DEFAULT_MAX_P99_RATIO = 2.0
DEFAULT_MAX_PSI = 0.25
DEFAULT_MAX_QUALITY_DROP = 0.05
DEFAULT_MIN_LABELLED = 50
MIN_ERROR_SAMPLE = 20  # canary requests before the error rate is judged
MAX_STEPS = 20
MAX_STEP_S = 7 * 24 * 3600
MAX_ROWS = 10_000_000

WAIT, ADVANCE, PROMOTE, ABORT = "wait", "advance", "promote", "abort"


def progressive(policy: K.PromotionPolicy) -> bool:
    return policy.rollout.mode == K.ROLLOUT_MODE_PROGRESSIVE


def steps(policy: K.PromotionPolicy) -> list[float]:
    return list(policy.rollout.steps) or list(DEFAULT_STEPS)


def check(rollout: K.RolloutPolicy, field: str) -> None:
    """Every knob in range; steps increasing inside (0, 100)."""
    if rollout.mode not in K.RolloutMode.values():
        raise InvalidArgument("unknown rollout mode", field=f"{field}.mode")
    if len(rollout.steps) > MAX_STEPS:
        raise InvalidArgument(f"at most {MAX_STEPS} steps", field=f"{field}.steps")
    previous = 0.0
    for s in rollout.steps:
        if not (math.isfinite(s) and previous < s < 100.0):
            raise InvalidArgument("steps must increase inside (0, 100)", field=f"{field}.steps")
        previous = s
    if rollout.HasField("min_step_duration"):
        d = rollout.min_step_duration.ToTimedelta().total_seconds()
        if not 0 <= d <= MAX_STEP_S:
            raise InvalidArgument(f"must be in [0, {MAX_STEP_S}] seconds", field=f"{field}.min_step_duration")
    if not 0 <= rollout.min_step_rows <= MAX_ROWS:
        raise InvalidArgument(f"must be in [0, {MAX_ROWS}]", field=f"{field}.min_step_rows")
    g = rollout.gates
    limits = {"max_error_rate": 1.0, "max_p99_latency_ratio": 1e6, "max_prediction_psi": 1e6, "max_quality_drop": 1e6}
    for name, high in limits.items():
        value = getattr(g, name)  # an unset optional reads 0.0, which is in range
        if not (math.isfinite(value) and 0 <= value <= high):
            raise InvalidArgument(f"must be a number in [0, {high:g}]", field=f"{field}.gates.{name}")
    if not 0 <= g.min_labelled_rows <= MAX_ROWS:
        raise InvalidArgument(f"must be in [0, {MAX_ROWS}]", field=f"{field}.gates.min_labelled_rows")


@dataclass(frozen=True)
class Signals:
    """What the step saw: serving's canary request counters, monitoring's canary report."""

    requests: int
    errors: int
    report: monitoring_pb2.CanaryReport


@dataclass(frozen=True)
class Verdict:
    action: str
    reason: str
    gates: list[R.RolloutGateResult]


def _gate(name: str, value: float, threshold: float, sample: int, judged: bool) -> R.RolloutGateResult:
    breached = judged and math.isfinite(value) and value > threshold
    return R.RolloutGateResult(gate=name, value=value if math.isfinite(value) else 0.0, threshold=threshold,
                               breached=breached, sample=sample if judged else 0)  # fmt: skip


def _metric(metrics: Sequence[K.Metric], name: str) -> float:
    return next((m.value for m in metrics if m.name == name and not m.class_label), math.nan)


def gates(policy: K.PromotionPolicy, s: Signals) -> list[R.RolloutGateResult]:
    g, rows = policy.rollout.gates, policy.rollout.min_step_rows or DEFAULT_STEP_ROWS
    r = s.report
    error_rate = s.errors / s.requests if s.requests else math.nan
    p99 = r.canary_latency.p99_ms / r.production_latency.p99_ms if r.production_latency.p99_ms > 0 else math.nan
    metric = policy.metric or "accuracy"
    canary_q, production_q = _metric(r.canary_quality, metric), _metric(r.production_quality, metric)
    maximize = (policy.direction or evaluation.default_direction(metric)) == K.METRIC_DIRECTION_MAXIMIZE
    drop = production_q - canary_q if maximize else canary_q - production_q
    labelled = g.min_labelled_rows or DEFAULT_MIN_LABELLED
    return [
        _gate("error_rate", error_rate, g.max_error_rate if g.HasField("max_error_rate") else DEFAULT_MAX_ERROR_RATE,
              s.requests, s.requests >= MIN_ERROR_SAMPLE),
        _gate("p99_latency_ratio", p99,
              g.max_p99_latency_ratio if g.HasField("max_p99_latency_ratio") else DEFAULT_MAX_P99_RATIO,
              r.canary_rows, r.canary_rows >= rows and r.production_rows >= rows),
        _gate("prediction_psi", r.prediction_psi,
              g.max_prediction_psi if g.HasField("max_prediction_psi") else DEFAULT_MAX_PSI,
              r.canary_rows, r.canary_rows >= rows and r.production_rows >= rows),
        _gate("quality_drop", drop,
              g.max_quality_drop if g.HasField("max_quality_drop") else DEFAULT_MAX_QUALITY_DROP,
              r.canary_labelled_rows, r.canary_labelled_rows >= labelled and r.production_labelled_rows > 0),
    ]  # fmt: skip


def judge(policy: K.PromotionPolicy, step: int, step_started: datetime, now: datetime, s: Signals) -> Verdict:
    """What the rollout does now, at `step` (0-based) begun at `step_started`."""
    results = gates(policy, s)
    pct = steps(policy)
    breached = [g for g in results if g.breached]
    if breached:
        why = "; ".join(f"{g.gate} {g.value:.4g} > {g.threshold:g} (over {g.sample})" for g in breached)
        return Verdict(ABORT, f"canary at {pct[step]:g}% aborted: {why}", results)
    dwell = timedelta(seconds=policy.rollout.min_step_duration.ToTimedelta().total_seconds()) if (
        policy.rollout.HasField("min_step_duration")) else timedelta(seconds=DEFAULT_STEP_S)  # fmt: skip
    rows = policy.rollout.min_step_rows or DEFAULT_STEP_ROWS
    if now - step_started < dwell or s.report.canary_rows < rows:
        return Verdict(WAIT, f"canary at {pct[step]:g}%: {s.report.canary_rows} of {rows} rows", results)
    held = ", ".join(f"{g.gate} {g.value:.4g}" for g in results if g.sample)
    if step + 1 < len(pct):
        return Verdict(ADVANCE, f"canary {pct[step]:g}% -> {pct[step + 1]:g}%: gates held ({held})", results)
    return Verdict(PROMOTE, f"rolled out through {', '.join(f'{p:g}%' for p in pct)}: gates held ({held})", results)
