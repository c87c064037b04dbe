"""When a trigger starts a run. Loops must not run away: a cooldown per spec, one open
retraining per spec, and (when the spec says so) no retraining until there is new data.
Plain Python, no gRPC or Kafka."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from flywheel.v1 import training_pb2

QUEUE, WAIT, SKIP_COOLDOWN, SKIP_OPEN = "queued", "waiting_for_data", "skipped_cooldown", "skipped_open_run"


@dataclass(frozen=True)
class Verdict:
    decision: str
    reason: str


def on_drift(
    spec: training_pb2.TrainingSpec,
    *,
    now: datetime,
    last_drift_run_at: datetime | None,
    open_run_id: str | None,
    newest_version: int,
    trained_version: int,
) -> Verdict:
    if open_run_id:
        return Verdict(SKIP_OPEN, f"run {open_run_id} of spec {spec.name} is still open")
    cooldown = spec.triggers.cooldown.ToTimedelta() if spec.triggers.HasField("cooldown") else timedelta(0)
    if last_drift_run_at is not None and now - last_drift_run_at < cooldown:
        left = cooldown - (now - last_drift_run_at)
        return Verdict(SKIP_COOLDOWN, f"a drift retraining started {last_drift_run_at:%H:%M:%S}; cooldown {left} left")
    if spec.triggers.wait_for_new_data and newest_version <= trained_version:
        return Verdict(
            WAIT, f"dataset {spec.dataset} v{newest_version} is what production trained on; waiting for new data"
        )
    return Verdict(QUEUE, f"retraining on dataset {spec.dataset} v{newest_version}")
