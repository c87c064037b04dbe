"""How the monitoring service is assembled: its API, its event reactions, its window ticker."""

from pathlib import Path

from flywheel.app import ServiceDefinition
from services.monitoring import handlers, service

DEFINITION = ServiceDefinition(
    name="monitoring",
    register=service.register,
    handlers=handlers.handlers,
    migrations=Path(__file__).parent / "migrations",
    reconcile=handlers.reconcile,
    background=[handlers.close_due_windows],
)
