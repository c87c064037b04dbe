"""Connection pool whose search_path is the service's own schema."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from flywheel.errors import StartupError


def describe_dsn(dsn: str) -> str:
    """host:port/db without credentials, for error lines and logs."""
    parts = urlsplit(dsn)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or ''}"


async def connect(
    dsn: str, schema: str, *, min_size: int = 1, max_size: int = 10, timeout_s: float = 5.0
) -> asyncpg.Pool:
    """Open the pool or raise StartupError with one clear line; fail fast rather than hang."""
    try:
        pool = await asyncio.wait_for(
            asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                timeout=timeout_s,
                server_settings={"search_path": f"{schema},public", "application_name": f"flywheel-{schema}"},
            ),
            timeout_s,
        )
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise StartupError(f"cannot reach PostgreSQL at {describe_dsn(dsn)}: {_reason(exc)}") from exc
    assert pool is not None
    return pool


async def ensure_database(dsn: str, timeout_s: float = 5.0) -> None:
    """Create the DSN's database if missing (embedded stack and tests; real deployments provision it)."""
    parts = urlsplit(dsn)
    name = parts.path.lstrip("/") or "postgres"
    admin_dsn = urlunsplit(parts._replace(path="/postgres"))
    conn = await asyncpg.connect(admin_dsn, timeout=timeout_s)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            except asyncpg.DuplicateDatabaseError:
                pass
    finally:
        await conn.close()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
