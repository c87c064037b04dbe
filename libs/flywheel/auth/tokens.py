"""API tokens minted by Flywheel: `fwk_<id>_<secret>`, random, shown once, stored as a hash.

The secret has 256 random bits, so a plain SHA-256 of it is as strong as a slow password hash
and costs microseconds to check. The tokens live in their own schema, `flywheel_auth`, which every
service migrates at start and reads; only the token API (in the registry) writes it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg

from flywheel import db
from flywheel.errors import InvalidArgument, NotFound
from flywheel.pbutil import timestamp
from flywheel.v1 import auth_pb2

from .roles import ALL_ROLES

SCHEMA = "flywheel_auth"
MIGRATIONS = Path(__file__).parent / "sql"
PREFIX = "fwk_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")
_TOKEN = re.compile(r"^fwk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
_COLUMNS = "token_id, name, role, created_by, created_at, expires_at, revoked_at, revoked_by"


@dataclass(frozen=True)
class TokenInfo:
    token_id: str
    name: str
    role: str
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    revoked_by: str | None


async def migrate(pool: asyncpg.Pool) -> list[str]:
    return await db.migrate(pool, SCHEMA, [MIGRATIONS])


def parse(token: str) -> tuple[str, str] | None:
    """(token id, secret) of a well-formed Flywheel token, else None."""
    m = _TOKEN.match(token)
    return (m.group(1), m.group(2)) if m else None


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(secret_hash(secret), stored_hash)


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidArgument(
            "1-100 letters, digits, '.', '_', '@' or '-', starting with a letter or digit", field="name"
        )
    return name


def check_role(role: str) -> str:
    if role not in ALL_ROLES:
        raise InvalidArgument(f"unknown role {role!r}; one of {', '.join(ALL_ROLES)}", field="role")
    return role


async def mint(
    conn: asyncpg.Connection, name: str, role: str, created_by: str, expires_at: datetime | None = None
) -> tuple[TokenInfo, str]:
    """A new token; returns its record and the token string, which is never stored."""
    check_name(name)
    check_role(role)
    token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    row = await conn.fetchrow(
        f"INSERT INTO {SCHEMA}.tokens (token_id, name, role, secret_hash, created_by, expires_at)"
        f" VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_COLUMNS}",
        token_id,
        name,
        role,
        secret_hash(secret),
        created_by,
        expires_at,
    )
    return _info(row), f"{PREFIX}{token_id}_{secret}"


async def lookup(conn: asyncpg.Connection, token_id: str) -> tuple[TokenInfo, str] | None:
    """A token's record and stored hash, or None."""
    row = await conn.fetchrow(f"SELECT {_COLUMNS}, secret_hash FROM {SCHEMA}.tokens WHERE token_id = $1", token_id)
    return (_info(row), row["secret_hash"]) if row else None


async def list_tokens(conn: asyncpg.Connection, *, include_revoked: bool = False) -> list[TokenInfo]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM {SCHEMA}.tokens WHERE $1 OR revoked_at IS NULL ORDER BY created_at, token_id",
        include_revoked,
    )
    return [_info(r) for r in rows]


async def revoke(conn: asyncpg.Connection, name_or_id: str, revoked_by: str) -> list[TokenInfo]:
    """Revokes the token with this id, or every live token with this name; NotFound if none."""
    rows = await conn.fetch(
        f"UPDATE {SCHEMA}.tokens SET revoked_at = now(), revoked_by = $2"
        f" WHERE (token_id = $1 OR name = $1) AND revoked_at IS NULL RETURNING {_COLUMNS}",
        name_or_id,
        revoked_by,
    )
    if not rows:
        raise NotFound(f"no live token named or with id {name_or_id!r}", field="name")
    return [_info(r) for r in rows]


def _info(row: asyncpg.Record) -> TokenInfo:
    return TokenInfo(
        token_id=row["token_id"],
        name=row["name"],
        role=row["role"],
        created_by=row["created_by"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        revoked_by=row["revoked_by"],
    )


def to_proto(info: TokenInfo) -> auth_pb2.Token:
    """A token's record as the API shows it (never its secret)."""
    token = auth_pb2.Token(
        token_id=info.token_id,
        name=info.name,
        role=info.role,
        created_by=info.created_by,
        create_time=timestamp(info.created_at),
        revoked_by=info.revoked_by or "",
    )
    if info.expires_at is not None:
        token.expire_time.CopyFrom(timestamp(info.expires_at))
    if info.revoked_at is not None:
        token.revoke_time.CopyFrom(timestamp(info.revoked_at))
    return token
