"""How the training service is assembled: its API, its event reactions, its worker, its tables."""

import asyncio
import sys
from pathlib import Path

from flywheel.app import ServiceContext, ServiceDefinition
from services.training import handlers, jobs, reconcile, service
from services.training.jobs import TrainingWorker


async def check_backend(ctx: ServiceContext) -> None:
    # Runs before the service reports SERVING: a bad FLYWHEEL_TRAINING_BACKEND (or the Ray backend
    # without Ray installed) is a StartupError, one line and exit, not a worker that dies in a loop.
    jobs.backend(ctx.settings)


async def run_worker(ctx: ServiceContext) -> None:
    await TrainingWorker(ctx).run()


async def shutdown(ctx: ServiceContext) -> None:
    ray_trials = sys.modules.get("services.training.ray_trials")
    if ray_trials is not None:  # the Ray backend joined a cluster (and may have started a local head)
        await asyncio.to_thread(ray_trials.shutdown)


DEFINITION = ServiceDefinition(
    name="training",
    register=service.register,
    handlers=handlers.handlers,
    migrations=Path(__file__).parent / "migrations",
    reconcile=check_backend,
    background=[run_worker, reconcile.reconcile_forever],
    shutdown=shutdown,
)
