"""Progressive rollout rules (plain Python): a version that earned promotion becomes a canary at the
policy's first step (or first shadows production, when the policy says shadow_first) and advances
while its live gates hold; it is promoted after the last step or aborted as soon as a gate breaches.
rollouts.py applies the verdicts; this decides them.

Gates, each judged once its sample is large enough:
- error rate: failed / all canary requests in the step (serving's counters), from 20 requests;
- p99 latency ratio: canary p99 / production p99 over the step (logged rows), from min_step_rows;
- prediction PSI: the canary's predictions against production's over the step, from min_step_rows;
- quality drop: production's live quality minus the canary's (labels since the rollout began, the
  promotion metric's worse direction), from min_labelled_rows labelled canary rows.
A step ends after min_step_duration with at least min_step_rows canary rows and every judged gate
holding; the quality gate may still be unjudged then (labels come late) and the rollout goes on.
The shadow step judges on the requests both answered: error rate, p99 latency ratio, and when the
policy sets them, agreement with production and live improvement over production on the labelled
requests (the challenger better on live traffic by the margin); a shadow gate the policy sets must
have judged before the step ends.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from flywheel import evaluation
from flywheel.bus.serde import new_meta
from flywheel.errors import InvalidArgument
from flywheel.rollout_gates import gate_scores
from flywheel.v1 import common_pb2, events_pb2, monitoring_pb2, registry_pb2

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
MINIMUMS = ("agreement", "live_improvement")  # gates that breach below their threshold
MAX_STEPS = 20
MAX_STEP_S = 7 * 24 * 3600
MAX_ROWS = 10_000_000

WAIT, ADVANCE, PROMOTE, ABORT = "wait", "advance", "promote", "abort"
SHADOW = 0.0  # the shadow step's "percent": production answers every request, the version sees a copy


def progressive(policy: K.PromotionPolicy) -> bool:
    return policy.rollout.mode == K.ROLLOUT_MODE_PROGRESSIVE


def steps(policy: K.PromotionPolicy) -> list[float]:
    return list(policy.rollout.steps) or list(DEFAULT_STEPS)


def phases(policy: K.PromotionPolicy) -> list[float]:
    """The rollout's steps as serving sees them: SHADOW (0.0) first when the policy asks, then the
    canary percents."""
    return ([SHADOW] if policy.rollout.shadow_first else []) + steps(policy)


def where(percent: float) -> str:
    return "shadow" if percent == SHADOW else f"canary at {percent:g}%"


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
    limits = {
        "max_error_rate": (0.0, 1.0), "max_p99_latency_ratio": (0.0, 1e6), "max_prediction_psi": (0.0, 1e6),
        "max_quality_drop": (0.0, 1e6), "min_agreement": (0.0, 1.0), "min_live_improvement": (-1e6, 1e6),
    }  # fmt: skip
    for name, (low, high) in limits.items():
        value = getattr(g, name)  # an unset optional reads 0.0, which is in range
        if not (math.isfinite(value) and low <= value <= high):
            raise InvalidArgument(f"must be a number in [{low:g}, {high:g}]", field=f"{field}.gates.{name}")
    if not 0 <= g.min_labelled_rows <= MAX_ROWS:
        raise InvalidArgument(f"must be in [0, {MAX_ROWS}]", field=f"{field}.gates.min_labelled_rows")


@dataclass(frozen=True)
class Signals:
    """What the step saw: serving's request counters for the version, and monitoring's canary report
    (canary steps) or shadow comparison (the shadow step)."""

    requests: int
    errors: int
    report: monitoring_pb2.CanaryReport | None = None
    shadow: monitoring_pb2.ShadowComparison | None = None


@dataclass(frozen=True)
class Verdict:
    action: str
    reason: str
    gates: list[R.RolloutGateResult]


def _gate(
    name: str, value: float, threshold: float, sample: int, judged: bool, below: bool = False
) -> R.RolloutGateResult:
    """A gate's result; it breaches when judged and above its threshold (below it, for a minimum)."""
    breached = judged and math.isfinite(value) and (value < threshold if below else value > threshold)
    return R.RolloutGateResult(gate=name, value=value if math.isfinite(value) else 0.0, threshold=threshold,
                               breached=breached, sample=sample if judged else 0)  # fmt: skip


def _metric(metrics: Sequence[K.Metric], name: str) -> float:
    return next((m.value for m in metrics if m.name == name and not m.class_label), math.nan)


def _better_by(policy: K.PromotionPolicy, challenger: float, production: float) -> float:
    """How much better the challenger's value is than production's, in the promotion metric's direction."""
    metric = policy.metric or "accuracy"
    maximize = (policy.direction or evaluation.default_direction(metric)) == K.METRIC_DIRECTION_MAXIMIZE
    return challenger - production if maximize else production - challenger


def _error_gate(policy: K.PromotionPolicy, s: Signals) -> R.RolloutGateResult:
    g = policy.rollout.gates
    error_rate = s.errors / s.requests if s.requests else math.nan
    limit = g.max_error_rate if g.HasField("max_error_rate") else DEFAULT_MAX_ERROR_RATE
    return _gate("error_rate", error_rate, limit, s.requests, s.requests >= MIN_ERROR_SAMPLE)


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def shadow_gates(policy: K.PromotionPolicy, s: Signals) -> list[R.RolloutGateResult]:
    """The shadow step's gates, on the requests both answered."""
    assert s.shadow is not None
    g, rows, c = policy.rollout.gates, policy.rollout.min_step_rows or DEFAULT_STEP_ROWS, s.shadow
    metric = policy.metric or "accuracy"
    improvement = _better_by(policy, _metric(c.challenger_quality, metric), _metric(c.production_quality, metric))
    labelled = g.min_labelled_rows or DEFAULT_MIN_LABELLED
    out = [
        _error_gate(policy, s),
        _gate("p99_latency_ratio", _ratio(c.challenger_latency.p99_ms, c.production_latency.p99_ms),
              g.max_p99_latency_ratio if g.HasField("max_p99_latency_ratio") else DEFAULT_MAX_P99_RATIO,
              c.rows, c.rows >= rows),
    ]  # fmt: skip
    if g.HasField("min_agreement"):
        value = c.agreement if c.HasField("agreement") else math.nan
        out.append(_gate("agreement", value, g.min_agreement, c.rows, c.rows >= rows, below=True))
    if g.HasField("min_live_improvement"):
        out.append(_gate("live_improvement", improvement, g.min_live_improvement, c.labelled_rows,
                         c.labelled_rows >= labelled, below=True))  # fmt: skip
    return out


def gates(policy: K.PromotionPolicy, s: Signals) -> list[R.RolloutGateResult]:
    if s.shadow is not None:
        return shadow_gates(policy, s)
    assert s.report is not None
    g, rows = policy.rollout.gates, policy.rollout.min_step_rows or DEFAULT_STEP_ROWS
    r = s.report
    metric = policy.metric or "accuracy"
    drop = -_better_by(policy, _metric(r.canary_quality, metric), _metric(r.production_quality, metric))
    labelled = g.min_labelled_rows or DEFAULT_MIN_LABELLED
    return [
        _error_gate(policy, s),
        _gate("p99_latency_ratio", _ratio(r.canary_latency.p99_ms, r.production_latency.p99_ms),
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
    """What the rollout does now, at `step` (0-based, into phases()) begun at `step_started`."""
    results = gates(policy, s)
    pct = phases(policy)
    here = where(pct[step])
    breached = [g for g in results if g.breached]
    if breached:
        why = "; ".join(
            f"{g.gate} {g.value:.4g} {'<' if g.gate in MINIMUMS else '>'} {g.threshold:g} (over {g.sample})"
            for g in breached
        )
        return Verdict(ABORT, f"{here} aborted: {why}", results)
    dwell = timedelta(seconds=policy.rollout.min_step_duration.ToTimedelta().total_seconds()) if (
        policy.rollout.HasField("min_step_duration")) else timedelta(seconds=DEFAULT_STEP_S)  # fmt: skip
    rows = policy.rollout.min_step_rows or DEFAULT_STEP_ROWS
    seen = s.shadow.rows if s.shadow is not None else s.report.canary_rows if s.report is not None else 0
    if now - step_started < dwell or seen < rows:
        return Verdict(WAIT, f"{here}: {seen} of {rows} rows", results)
    unjudged = [g.gate for g in results if g.gate in MINIMUMS and not g.sample]
    if unjudged:  # a shadow gate the policy asks for must have judged before the step may end
        return Verdict(WAIT, f"{here}: waiting for enough labelled rows to judge {', '.join(unjudged)}", results)
    held = ", ".join(f"{g.gate} {g.value:.4g}" for g in results if g.sample)
    if step + 1 < len(pct):
        nxt = pct[step + 1]
        move = f"canary {pct[step]:g}% -> {nxt:g}%" if pct[step] != SHADOW else f"shadow -> canary {nxt:g}%"
        return Verdict(ADVANCE, f"{move}: gates held ({held})", results)
    through = ", ".join("shadow" if p == SHADOW else f"{p:g}%" for p in pct)
    return Verdict(PROMOTE, f"rolled out through {through}: gates held ({held})", results)


def ended(
    model: str, version: int, champion: int, promoted: bool, reason: str, actor: str,
    status: R.RolloutStatus | None = None,
) -> events_pb2.RolloutEnded:  # fmt: skip
    """The rollout.ended event of a rollout that ended (promoted, aborted, stopped or superseded)."""
    event = events_pb2.RolloutEnded(
        meta=new_meta("registry"), model=K.ModelRef(name=model, version=version), champion_version=champion,
        promoted=promoted, reason=reason, actor=actor,
    )  # fmt: skip
    if status is not None:
        event.gates.extend(gate_scores(status))
    return event
