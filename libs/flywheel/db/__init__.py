"""asyncpg pool and forward-only SQL migrations, one Postgres schema per service."""

from flywheel.db.errors import CONNECTION_ERRORS
from flywheel.db.migrations import LIBRARY_MIGRATIONS, migrate, require_migrated
from flywheel.db.pool import connect, describe_dsn, ensure_database

__all__ = [
    "CONNECTION_ERRORS",
    "LIBRARY_MIGRATIONS",
    "connect",
    "describe_dsn",
    "ensure_database",
    "migrate",
    "require_migrated",
]
