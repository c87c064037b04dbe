"""`flywheel migrate`: apply the services' database migrations as a step of its own.

It connects with FLYWHEEL_DATABASE_URL, which here names a role that may create tables (the
migration owner of deploy/postgres/roles.sql), and applies for each service its schema's files (the
library's bus tables, then the service's own) and the token store (`flywheel_auth`). Idempotent:
applied files are skipped, and replicas or jobs running it together serialise per schema. Services
then start with FLYWHEEL_MIGRATE_ON_START=false and a role that may only read and write rows.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sys
from pathlib import Path

import asyncpg

from flywheel import db
from flywheel.auth import tokens
from flywheel.config import SERVICES, get_settings
from flywheel.errors import StartupError


def service_migrations(service: str) -> Path:
    """services/<name>/migrations, found without importing the service (that would load its whole
    stack, onnxruntime and scikit-learn included); the unit tests hold it equal to each definition's."""
    spec = importlib.util.find_spec(f"services.{service}")
    if spec is None or not spec.submodule_search_locations:
        raise StartupError(f"service {service} is not installed (no package services.{service})")
    return Path(next(iter(spec.submodule_search_locations))) / "migrations"


async def migrate(dsn: str, services: list[str], timeout_s: float) -> list[tuple[str, list[str]]]:
    """(schema, files applied now) for every schema touched, the token store last."""
    done: list[tuple[str, list[str]]] = []
    pool = await db.connect(dsn, tokens.SCHEMA, min_size=1, max_size=1, timeout_s=timeout_s)
    try:
        for service in services:
            done.append(
                (service, await db.migrate(pool, service, [db.LIBRARY_MIGRATIONS, service_migrations(service)]))
            )
        done.append((tokens.SCHEMA, await tokens.migrate(pool)))
    finally:
        await pool.close()
    return done


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = get_settings()
    where = db.describe_dsn(settings.database_url)
    services = [args.service] if args.service else list(SERVICES)
    try:
        results = asyncio.run(migrate(settings.database_url, services, settings.connect_timeout_s))
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except asyncpg.PostgresError as exc:  # a migration's own SQL failed: nothing of that file committed
        print(f"error: PostgreSQL at {where}: {exc}", file=sys.stderr)
        return 1
    for schema, applied in results:
        print(f"{schema}: " + (f"applied {', '.join(applied)}" if applied else "up to date"))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "migrate",
        help="apply every service's database migrations with FLYWHEEL_DATABASE_URL (a role with DDL rights)",
    )
    p.add_argument("--service", choices=SERVICES, help="only this service's schema (and the token store)")
    p.set_defaults(func=cmd_migrate)
