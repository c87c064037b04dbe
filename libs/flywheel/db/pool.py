"""Connection pool whose search_path is the service's own schema."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

import asyncpg

from flywheel.errors import StartupError


def describe_dsn(dsn: str) -> str:
    """host:port/db without credentials (and the TLS mode, when the DSN sets one), for error lines and logs."""
    parts = urlsplit(dsn)
    where = f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or ''}"
    sslmode = parse_qs(parts.query).get("sslmode")
    return f"{where} (sslmode={sslmode[0]})" if sslmode else where


async def connect(
    dsn: str, schema: str, *, min_size: int = 1, max_size: int = 10, timeout_s: float = 5.0
) -> asyncpg.Pool:
    """Open the pool or raise StartupError with one clear line; fail fast rather than hang.

    TLS is configured in the DSN, as libpq does: `?sslmode=verify-full&sslrootcert=/path/ca.crt` (and
    `sslcert`/`sslkey` for a client certificate); asyncpg reads those parameters itself.
    """
    _check_tls_files(dsn)
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
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
        # OSError covers TLS failures (ssl.SSLError); InterfaceError and ValueError a DSN asyncpg rejects,
        # such as an unknown sslmode.
        raise StartupError(f"cannot reach PostgreSQL at {describe_dsn(dsn)}: {_reason(exc)}") from exc
    assert pool is not None
    return pool


async def ensure_database(dsn: str, timeout_s: float = 5.0) -> None:
    """Create the DSN's database if missing (embedded stack and tests; real deployments provision it)."""
    parts = urlsplit(dsn)
    name = parts.path.lstrip("/") or "postgres"
    admin_dsn = urlunsplit(parts._replace(path="/postgres"))
    conn = await _connect_when_up(admin_dsn, timeout_s)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            except asyncpg.DuplicateDatabaseError:
                pass
    finally:
        await conn.close()


async def _connect_when_up(dsn: str, timeout_s: float, starting_s: float = 30.0) -> asyncpg.Connection:
    """A server just started may accept connections before it has finished recovery ("the database
    system is starting up"): wait for it, up to `starting_s`, instead of failing the stack's start."""
    deadline = time.monotonic() + starting_s
    while True:
        try:
            return await asyncpg.connect(dsn, timeout=timeout_s)
        except asyncpg.CannotConnectNowError:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.2)


def _check_tls_files(dsn: str) -> None:
    # asyncpg reports a missing certificate file as a bare "No such file or directory"; name it instead.
    query = parse_qs(urlsplit(dsn).query)
    for param in ("sslrootcert", "sslcert", "sslkey"):
        for value in query.get(param, []):
            if value != "system" and not Path(value).expanduser().is_file():
                raise StartupError(f"cannot reach PostgreSQL at {describe_dsn(dsn)}: {param}={value}: no such file")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
