"""How the serving service is assembled: its APIs, its event reactions, its start-up reconciliation
and what it releases at stop."""

from pathlib import Path

from flywheel.app import ServiceContext, ServiceDefinition
from flywheel.grpc import GrpcServer
from flywheel.workers import worker_count
from services.serving import handlers, service
from services.serving.runtime_state import close_runtime, runtime


def register(server: GrpcServer, ctx: ServiceContext) -> list[str]:
    state = runtime(ctx, server.port)
    return service.register(server, ctx, state)


DEFINITION = ServiceDefinition(
    name="serving",
    register=register,
    handlers=handlers.handlers,
    migrations=Path(__file__).parent / "migrations",
    reconcile=handlers.start_up,
    background=[
        handlers.run_swap_consumer,
        handlers.run_prediction_logger,
        handlers.reconcile_forever,
        handlers.refresh_views_forever,
    ],
    shutdown=close_runtime,
    workers=lambda settings: worker_count(settings.serving_workers),
)
