"""The serving process's shared state: one model manager, one prediction logger and the traffic
sync that keeps the manager on the stored policy (traffic_sync.py)."""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass

from flywheel.app import ServiceContext
from services.serving.models import ModelManager
from services.serving.prediction_log import PredictionLogger
from services.serving.traffic_store import TrafficStore
from services.serving.traffic_sync import TrafficSync


@dataclass
class ServingRuntime:
    manager: ModelManager
    logger: PredictionLogger
    traffic: TrafficSync


_runtime: ServingRuntime | None = None


def replica_name(port: int, worker: int | None = None) -> str:
    """host:port, and /wN for worker N of a pool sharing that port: unique among running replicas
    (a pod's hostname in Kubernetes, the port on one host)."""
    name = f"{socket.gethostname()}:{port}"
    return name if worker is None else f"{name}/w{worker}"


def runtime(ctx: ServiceContext, port: int | None = None) -> ServingRuntime:
    """The process's state, built at the first call (registration, which knows the bound `port`)."""
    global _runtime
    if _runtime is None:
        s = ctx.settings
        manager = ModelManager(s, ctx.tasks)  # first: a StartupError (no GPU) ends start-up here
        bound = port if port is not None else s.grpc_port or s.serving_port
        store = TrafficStore(ctx.pool, replica_name(bound, s.worker_index))
        _runtime = ServingRuntime(
            manager,
            PredictionLogger(ctx.producer, s.serving_log_sample_rate, s.serving_log_buffer, s.serving_log_flush_s),
            TrafficSync(manager, store),
        )
    return _runtime


async def close_runtime(ctx: ServiceContext) -> None:
    """At stop (calls drained, tasks cancelled, producer and pool still open): leave the replicas
    table, publish the last predictions, then unload every model and stop the ONNX Runtime threads."""
    global _runtime
    state, _runtime = _runtime, None
    if state is None:
        return
    with contextlib.suppress(Exception):  # the database away at stop: the row goes stale, then is pruned
        await state.traffic.store.leave()
    try:
        await state.logger.close(timeout_s=ctx.settings.connect_timeout_s)
    finally:
        await state.manager.close()
