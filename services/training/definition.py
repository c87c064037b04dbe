"""How the training service is assembled: its API, its event reactions, its worker, its tables."""

from pathlib import Path

from flywheel.app import ServiceContext, ServiceDefinition
from services.training import handlers, reconcile, service
from services.training.jobs import TrainingWorker


async def run_worker(ctx: ServiceContext) -> None:
    await TrainingWorker(ctx).run()


DEFINITION = ServiceDefinition(
    name="training",
    register=service.register,
    handlers=handlers.handlers,
    migrations=Path(__file__).parent / "migrations",
    background=[run_worker, reconcile.reconcile_forever],
)
