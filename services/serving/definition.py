"""How the serving service is assembled: its APIs, its event reactions, its tables."""

from pathlib import Path

from flywheel.app import ServiceDefinition
from services.serving import handlers, service

DEFINITION = ServiceDefinition(
    name="serving",
    register=service.register,
    handlers=handlers.handlers,
    migrations=Path(__file__).parent / "migrations",
)
