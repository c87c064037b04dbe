"""How the registry service is assembled: its API, its event reactions, its tables."""

from pathlib import Path

from flywheel.app import ServiceDefinition
from services.registry import handlers, service

DEFINITION = ServiceDefinition(
    name="registry",
    register=service.register,
    handlers=handlers.handlers,
    migrations=Path(__file__).parent / "migrations",
)
