"""How the ingestion service is assembled: its API, its event reactions, its tables."""

from pathlib import Path

from flywheel.app import ServiceDefinition
from services.ingestion import handlers, service

DEFINITION = ServiceDefinition(
    name="ingestion",
    register=service.register,
    handlers=handlers.handlers,
    migrations=Path(__file__).parent / "migrations",
    background=[handlers.run_records_consumer, handlers.run_feedback_consumer],
)
