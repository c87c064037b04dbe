"""The identities `flywheel up` provisions: an admin token for the CLI, the demo and the tests, and
one service identity per service (`service-<name>`, role `service:<name>`), so services never call
each other with a person's token.

Each token is minted once and kept across starts: a token found on disk is reused while this
database still knows it as live (not revoked, not expired, the right role); otherwise a new one is
minted. The admin's lives in $FLYWHEEL_HOME/credentials, each service's in
$FLYWHEEL_HOME/service-tokens/<name>, all readable by their owner only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from flywheel import db
from flywheel.auth import tokens
from flywheel.auth.credentials import read_credentials
from flywheel.auth.roles import ADMIN

from .pki import write_private

ADMIN_NAME = "admin"
CREATED_BY = "flywheel up"


def service_identity(service: str) -> tuple[str, str]:
    """(token name, role) of a service's own identity."""
    return f"service-{service}", f"service:{service}"


def service_token_file(home: Path, service: str) -> Path:
    return home / "service-tokens" / service


@dataclass(frozen=True)
class Identities:
    admin: str
    services: dict[str, str]  # service -> its token


async def provision(dsn: str, home: Path, credentials_file: Path, services: tuple[str, ...]) -> Identities:
    """Migrates the token store and returns a live token for the admin and for every service, reusing
    those on disk; writes the service tokens (the caller writes the admin's credentials file, which
    also carries the TLS files)."""
    pool = await db.connect(dsn, tokens.SCHEMA, min_size=1, max_size=1)
    try:
        await tokens.migrate(pool)
        async with pool.acquire() as conn:
            admin = await _live_or_new(conn, read_credentials(credentials_file).token, ADMIN_NAME, ADMIN)
            own: dict[str, str] = {}
            for service in services:
                path = service_token_file(home, service)
                own[service] = await _live_or_new(conn, _read_token(path), *service_identity(service))
                if own[service] != _read_token(path):
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.parent.chmod(0o700)
                    write_private(path, own[service].encode())
    finally:
        await pool.close()
    return Identities(admin, own)


async def _live_or_new(conn: asyncpg.Connection, token: str | None, name: str, role: str) -> str:
    if token is not None and await is_live(conn, token, role):
        return token
    _, minted = await tokens.mint(conn, name, role, CREATED_BY)
    return minted


async def is_live(conn: asyncpg.Connection, token: str, role: str) -> bool:
    """True when this database holds `token` with `role`, neither revoked nor expired."""
    parsed = tokens.parse(token)
    if parsed is None:
        return False
    found = await tokens.lookup(conn, parsed[0])
    if found is None or not tokens.matches(parsed[1], found[1]):
        return False
    info = found[0]
    expired = info.expires_at is not None and info.expires_at <= datetime.now(UTC)
    return info.role == role and info.revoked_at is None and not expired


def _read_token(path: Path) -> str | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return text or None
