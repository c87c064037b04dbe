"""Registry tables: reads return protobuf messages; writes take a connection inside a transaction."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
from google.protobuf import json_format

from flywheel.errors import NotFound
from flywheel.pbutil import struct, timestamp
from flywheel.v1 import common_pb2, registry_pb2

VERSION_COLUMNS = (
    "v.name, v.version, v.description, v.task, v.checksum, v.size_bytes, v.format, v.signature, v.metrics,"
    " v.params, v.lineage, v.tags, v.created_by, v.created_at, v.archived, v.archive_reason, v.staging,"
    " v.promotion, coalesce((SELECT array_agg(a.alias ORDER BY a.alias) FROM aliases a"
    " WHERE a.name = v.name AND a.version = v.version), '{}') AS aliases"
)


def to_version(row: asyncpg.Record) -> registry_pb2.ModelVersion:
    mv = registry_pb2.ModelVersion(
        ref=common_pb2.ModelRef(name=row["name"], version=row["version"]),
        description=row["description"],
        task=row["task"],
        checksum=row["checksum"],
        size_bytes=row["size_bytes"],
        artifact_uri=f"sha256:{row['checksum']}",
        format=row["format"],
        signature=common_pb2.ModelSignature.FromString(row["signature"]),
        params=struct(json.loads(row["params"])),
        lineage=common_pb2.Lineage.FromString(row["lineage"]),
        tags=json.loads(row["tags"]),
        aliases=list(row["aliases"]),
        create_time=timestamp(row["created_at"]),
        created_by=row["created_by"],
        archived=row["archived"],
        archive_reason=row["archive_reason"],
    )
    mv.metrics.extend(registry_pb2.ModelVersion.FromString(row["metrics"]).metrics)
    if row["staging"]:
        mv.staging.CopyFrom(registry_pb2.StagingReport.FromString(row["staging"]))
    if row["promotion"]:
        mv.promotion.CopyFrom(registry_pb2.PromotionDecision.FromString(row["promotion"]))
    return mv


async def get_version(conn: asyncpg.Connection, name: str, version: int) -> registry_pb2.ModelVersion:
    row = await conn.fetchrow(
        f"SELECT {VERSION_COLUMNS} FROM model_versions v WHERE v.name = $1 AND v.version = $2", name, version
    )
    if row is None:
        raise NotFound(f"model {name!r} has no version {version}", field="version")
    return to_version(row)


async def resolve(conn: asyncpg.Connection, name: str, version: int = 0, alias: str = "") -> int:
    """The version a request means: explicit, by alias, or (0 and no alias) the latest."""
    if alias:
        v = await alias_version(conn, name, alias)
        if v is None:
            await ensure_model(conn, name)
            raise NotFound(f"model {name!r} has no alias {alias!r}", field="alias")
        return int(v)
    if version:
        return version
    v = await conn.fetchval("SELECT max(version) FROM model_versions WHERE name = $1", name)
    if v is None:
        raise NotFound(f"model {name!r} has no versions", field="name")
    return int(v)


async def ensure_model(conn: asyncpg.Connection, name: str, *, lock: bool = False) -> asyncpg.Record:
    """The model's row, or NotFound; `lock` holds it for the transaction (serialises alias moves
    and version numbering per model)."""
    sql = "SELECT name, policy, created_at FROM models WHERE name = $1" + (" FOR UPDATE" if lock else "")
    row = await conn.fetchrow(sql, name)
    if row is None:
        raise NotFound(f"no model named {name!r}", field="name")
    return row


async def alias_version(conn: asyncpg.Connection, name: str, alias: str) -> int | None:
    v = await conn.fetchval("SELECT version FROM aliases WHERE name = $1 AND alias = $2", name, alias)
    return int(v) if v is not None else None


async def audit(
    conn: asyncpg.Connection,
    *,
    actor: str,
    action: int,
    name: str,
    version: int = 0,
    alias: str = "",
    from_version: int = 0,
    to_version: int = 0,
    reason: str = "",
    causation_id: str = "",
    details: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO audit_events (actor, action, name, version, alias, from_version, to_version, reason,"
        " causation_id, details) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb)",
        actor,
        action,
        name,
        version,
        alias,
        from_version,
        to_version,
        reason,
        causation_id,
        json.dumps(details or {}),
    )


def to_audit(row: asyncpg.Record) -> registry_pb2.AuditEvent:
    return registry_pb2.AuditEvent(
        id=str(row["id"]),
        time=timestamp(row["at"]),
        actor=row["actor"],
        action=row["action"],
        model_name=row["name"],
        version=row["version"],
        alias=row["alias"],
        from_version=row["from_version"],
        to_version=row["to_version"],
        reason=row["reason"],
        causation_id=row["causation_id"],
        details=struct(json.loads(row["details"])),
    )


def to_model(row: asyncpg.Record, aliases: dict[str, int], latest: int) -> registry_pb2.Model:
    model = registry_pb2.Model(
        name=row["name"], latest_version=latest, aliases=aliases, create_time=timestamp(row["created_at"])
    )
    if row["policy"]:
        model.policy.CopyFrom(common_pb2.PromotionPolicy.FromString(row["policy"]))
    return model


def params_json(header: registry_pb2.RegisterModelHeader) -> str:
    return json.dumps(json_format.MessageToDict(header.params))
