"""How the monitoring service is assembled: its API, its event reactions, its window ticker."""

from pathlib import Path

from flywheel.app import ServiceDefinition
from services.monitoring import background, handlers, service

DEFINITION = ServiceDefinition(
    name="monitoring",
    register=service.register,
    handlers=handlers.handlers,
    migrations=Path(__file__).parent / "migrations",
    reconcile=background.reconcile,
    background=[background.close_due_windows],
)
