"""The serving process's shared state: one model manager and one prediction logger."""

from __future__ import annotations

from dataclasses import dataclass

from flywheel.app import ServiceContext
from services.serving.models import ModelManager
from services.serving.prediction_log import PredictionLogger


@dataclass
class ServingRuntime:
    manager: ModelManager
    logger: PredictionLogger


_runtime: ServingRuntime | None = None


def runtime(ctx: ServiceContext) -> ServingRuntime:
    global _runtime
    if _runtime is None:
        s = ctx.settings
        _runtime = ServingRuntime(
            ModelManager(s), PredictionLogger(ctx.producer, s.serving_log_sample_rate, s.serving_log_buffer)
        )
    return _runtime
