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
            ModelManager(s, ctx.tasks),
            PredictionLogger(ctx.producer, s.serving_log_sample_rate, s.serving_log_buffer, s.serving_log_flush_s),
        )
    return _runtime


async def close_runtime(ctx: ServiceContext) -> None:
    """At stop (calls drained, tasks cancelled, producer still open): publish the last predictions,
    then unload every model and stop the ONNX Runtime threads."""
    global _runtime
    state, _runtime = _runtime, None
    if state is None:
        return
    try:
        await state.logger.close(timeout_s=ctx.settings.connect_timeout_s)
    finally:
        await state.manager.close()
