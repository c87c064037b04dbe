"""What runs inside the training process pool's worker process (kept import-light)."""

from __future__ import annotations

from typing import Any

from flywheel.stack.procs import die_with_parent
from services.training.trainer import TrainJob, TrainResult, train

_progress: Any = None


def init_worker(progress: Any) -> None:
    """Pool initializer: inherit the progress queue, and die with the service process."""
    global _progress
    die_with_parent()
    _progress = progress


def run_job(job: TrainJob) -> TrainResult:
    return train(job, _progress)
