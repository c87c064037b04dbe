"""How the registry service is assembled: its API, its event reactions, its tables, its rollout driver."""

from pathlib import Path

from flywheel.app import ServiceDefinition
from services.registry import handlers, rollouts, service

DEFINITION = ServiceDefinition(
    name="registry",
    register=service.register,
    handlers=handlers.handlers,
    migrations=Path(__file__).parent / "migrations",
    background=[rollouts.drive],
)
