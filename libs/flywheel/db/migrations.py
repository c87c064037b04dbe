"""Forward-only migrations: numbered .sql files applied in order, recorded per schema.

Replicas starting together serialise on an advisory lock, so each file runs exactly once.
An applied file whose content changed is an error: migrations are never edited, only added.

Two ways to run them: a service applies its own at start (`migrate`, the default), or a separate
step with a DDL role does (`flywheel migrate`) and services, connecting with roles that may only
read and write rows, merely check that every file their code needs is applied (`require_migrated`).
A database ahead of the code (files it does not know) passes the check: upgrades migrate first.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import asyncpg

from flywheel.errors import StartupError

# The bus tables (outbox, inbox) every service needs, applied before the service's own files.
LIBRARY_MIGRATIONS = Path(__file__).parent / "sql"


async def migrate(pool: asyncpg.Pool, schema: str, dirs: list[Path]) -> list[str]:
    """Apply pending migrations from `dirs` into `schema`; returns the names applied now."""
    files = _files(dirs)
    applied_now: list[str] = []
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"flywheel.migrate.{schema}")
        role, owner = await conn.fetchrow(
            "SELECT current_user, (SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = $1)", schema
        )
        try:
            await _ensure_bookkeeping(conn, schema)
            done = {
                r["name"]: r["checksum"]
                for r in await conn.fetch(f'SELECT name, checksum FROM "{schema}".schema_migrations')
            }
            await conn.execute(f'SET LOCAL search_path TO "{schema}", public')
            for path in files:
                sql = path.read_text()
                checksum = _checksum(sql)
                if path.name in done:
                    if done[path.name] != checksum:
                        raise StartupError(f"migration {path.name} in schema {schema} changed after it was applied")
                    continue
                await conn.execute(sql)
                await conn.execute(
                    f'INSERT INTO "{schema}".schema_migrations (name, checksum) VALUES ($1, $2)',
                    path.name,
                    checksum,
                )
                applied_now.append(path.name)
        except asyncpg.InsufficientPrivilegeError as exc:
            # With one database role per service (deploy/postgres/roles.sql), a schema is migrated only by
            # the role that owns it; the others may read it once it is up to date.
            hint = (
                f" (schema {schema} belongs to {owner}: the service connecting as {owner} migrates it; start it first)"
                if owner is not None and owner != role
                else ""
            )
            raise StartupError(f"cannot migrate schema {schema} as database role {role}: {exc}{hint}") from exc
    return applied_now


async def require_migrated(pool: asyncpg.Pool, schema: str, dirs: list[Path]) -> None:
    """StartupError unless every migration in `dirs` is applied to `schema`, unchanged. Runs no DDL."""
    files = _files(dirs)
    try:
        async with pool.acquire() as conn:
            if await conn.fetchval("SELECT to_regclass($1)", f'"{schema}".schema_migrations') is None:
                done: dict[str, str] = {}
            else:
                rows = await conn.fetch(f'SELECT name, checksum FROM "{schema}".schema_migrations')
                done = {r["name"]: r["checksum"] for r in rows}
    except asyncpg.InsufficientPrivilegeError as exc:
        raise StartupError(f"cannot read the migrations of schema {schema}: {exc}") from exc
    for path in files:
        if path.name in done and done[path.name] != _checksum(path.read_text()):
            raise StartupError(f"migration {path.name} in schema {schema} changed after it was applied")
    pending = [p.name for p in files if p.name not in done]
    if pending:
        shown = ", ".join(pending[:3]) + (f" and {len(pending) - 3} more" if len(pending) > 3 else "")
        raise StartupError(
            f"schema {schema} is not migrated ({len(pending)} pending: {shown}) and FLYWHEEL_MIGRATE_ON_START"
            " is false: run `flywheel migrate` with a role that may create tables first"
        )


def _files(dirs: list[Path]) -> list[Path]:
    # Directory order first (the library's bus tables before the service's own), then file name.
    return [p for d in dirs if d.is_dir() for p in sorted(d.glob("*.sql"), key=lambda p: p.name)]


def _checksum(sql: str) -> str:
    return hashlib.sha256(sql.encode()).hexdigest()


async def _ensure_bookkeeping(conn: asyncpg.Connection, schema: str) -> None:
    # Created only when missing: CREATE ... IF NOT EXISTS still needs the privilege to create, which a
    # role that merely reads a schema (or owns a schema it may not create) does not have.
    if not await conn.fetchval("SELECT true FROM pg_namespace WHERE nspname = $1", schema):
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    if await conn.fetchval("SELECT to_regclass($1)", f'"{schema}".schema_migrations') is None:
        await conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations ('
            " name text PRIMARY KEY, checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
