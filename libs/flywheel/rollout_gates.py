"""A progressive rollout's gates as FeatureScores, the form alerts and events carry scores in (the
registry's rollout.ended event and monitoring's rollout-aborted alert write them the same way)."""

from __future__ import annotations

from flywheel.v1 import common_pb2, registry_pb2


def gate_scores(status: registry_pb2.RolloutStatus) -> list[common_pb2.FeatureScore]:
    """One score per gate: feature = the step ("shadow", "canary 20%"), statistic = the gate."""
    step = "shadow" if status.shadow else f"canary {status.percent:g}%"
    score = common_pb2.FeatureScore
    return [score(feature=step, statistic=g.gate, score=g.value, threshold=g.threshold, breached=g.breached)
            for g in status.gates]  # fmt: skip
