"""A progressive rollout's step as text and its gates as FeatureScores, the form alerts and events
carry scores in (the registry's rollout.ended event, monitoring's rollout-aborted alert and the CLI
name them the same way)."""

from __future__ import annotations

from flywheel.v1 import common_pb2, registry_pb2


def step_name(status: registry_pb2.RolloutStatus) -> str:
    """ "shadow" or "canary 20%"."""
    return "shadow" if status.shadow else f"canary {status.percent:g}%"


def gate_scores(status: registry_pb2.RolloutStatus) -> list[common_pb2.FeatureScore]:
    """One score per gate: feature = the step (step_name), statistic = the gate."""
    step = step_name(status)
    score = common_pb2.FeatureScore
    return [score(feature=step, statistic=g.gate, score=g.value, threshold=g.threshold, breached=g.breached)
            for g in status.gates]  # fmt: skip
