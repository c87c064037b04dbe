"""All SQL of the registry. Reads return protobuf messages; writes take a connection, inside the
caller's transaction when they must commit together. Nothing else in the service writes SQL."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import asyncpg
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from flywheel.errors import InvalidArgument, NotFound
from flywheel.pbutil import struct, timestamp
from flywheel.v1 import common_pb2, registry_pb2
from services.registry.rules import ALIAS, GUARD_ACTOR, NAME, PRODUCTION

R = registry_pb2
# A result row: an asyncpg.Record, or any mapping with the same keys.
Row = Mapping[str, Any]

VERSION_COLUMNS = (
    "v.name, v.version, v.description, v.task, v.checksum, v.size_bytes, v.format, v.signature, v.metrics,"
    " v.params, v.lineage, v.tags, v.created_by, v.created_at, v.archived, v.archive_reason, v.staging,"
    " v.calibration_uri,"
    " v.promotion, coalesce((SELECT array_agg(a.alias ORDER BY a.alias) FROM aliases a"
    " WHERE a.name = v.name AND a.version = v.version), '{}') AS aliases"
)
# A model with its aliases (a JSON object alias -> version) and latest version, in one row.
MODEL_COLUMNS = (
    "m.name, m.policy, m.created_at,"
    " coalesce((SELECT jsonb_object_agg(a.alias, a.version) FROM aliases a WHERE a.name = m.name), '{}')"
    " AS aliases,"
    " coalesce((SELECT max(v.version) FROM model_versions v WHERE v.name = m.name), 0) AS latest_version"
)
COMPARISONS: dict[registry_pb2.Comparison.ValueType, str] = {
    R.COMPARISON_GT: ">", R.COMPARISON_GTE: ">=", R.COMPARISON_LT: "<", R.COMPARISON_LTE: "<=", R.COMPARISON_EQ: "=",
}  # fmt: skip
UPSERT_ALIAS = (
    "INSERT INTO aliases (name, alias, version, updated_by) VALUES ($1, $2, $3, $4)"
    " ON CONFLICT (name, alias) DO UPDATE SET version = $3, updated_by = $4, updated_at = now()"
    " RETURNING updated_at"
)


def when(ts: Timestamp, field: str) -> datetime:
    """A request's timestamp as a datetime; INVALID_ARGUMENT when it is none (nanos outside [0, 1e9),
    seconds beyond year 9999)."""
    try:
        return ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument("not a valid timestamp", field=field) from None


def _shown(name: str) -> str:
    """A model name as an error repeats it: only a well-formed one (a request may carry anything)."""
    return repr(name) if NAME.match(name) else "(not a valid model name)"


# -- row -> message -------------------------------------------------------------------------


def to_version(row: Row) -> registry_pb2.ModelVersion:
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
        calibration_uri=row["calibration_uri"],
    )
    mv.metrics.extend(registry_pb2.ModelVersion.FromString(row["metrics"]).metrics)
    if row["staging"]:
        mv.staging.CopyFrom(registry_pb2.StagingReport.FromString(row["staging"]))
    if row["promotion"]:
        mv.promotion.CopyFrom(registry_pb2.PromotionDecision.FromString(row["promotion"]))
    return mv


def to_model(row: Row) -> registry_pb2.Model:
    """A row selected with MODEL_COLUMNS (aliases as the JSON text asyncpg returns for jsonb)."""
    model = registry_pb2.Model(
        name=row["name"],
        latest_version=row["latest_version"],
        aliases=json.loads(row["aliases"]),
        create_time=timestamp(row["created_at"]),
    )
    if row["policy"]:
        model.policy.CopyFrom(common_pb2.PromotionPolicy.FromString(row["policy"]))
    return model


def to_audit(row: Row) -> registry_pb2.AuditEvent:
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


def params_json(header: registry_pb2.RegisterModelHeader) -> str:
    return json.dumps(json_format.MessageToDict(header.params))


# -- models -----------------------------------------------------------------------------------


async def ensure_model(conn: asyncpg.Connection, name: str, *, lock: bool = False) -> asyncpg.Record:
    """The model's row, or NotFound; `lock` holds it for the transaction (serialises alias moves
    and version numbering per model)."""
    sql = "SELECT name, policy, created_at FROM models WHERE name = $1" + (" FOR UPDATE" if lock else "")
    # A name no model can have (a NUL, say, which PostgreSQL text cannot even hold) is not looked up.
    row = await conn.fetchrow(sql, name) if NAME.match(name) else None
    if row is None:
        raise NotFound(f"no model named {_shown(name)}", field="name")
    return row


async def add_model(conn: asyncpg.Connection, name: str) -> None:
    await conn.execute("INSERT INTO models (name) VALUES ($1) ON CONFLICT DO NOTHING", name)


async def save_policy(conn: asyncpg.Connection, name: str, policy: common_pb2.PromotionPolicy) -> None:
    """Sets the model's promotion policy, creating the model when there is none yet."""
    await conn.execute(
        "INSERT INTO models (name, policy) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET policy = $2",
        name,
        policy.SerializeToString(),
    )


async def list_models(conn: asyncpg.Connection, alias: str, limit: int, offset: int) -> list[registry_pb2.Model]:
    """Models by name, each with its aliases and latest version; only those holding `alias` when given."""
    rows = await conn.fetch(
        f"SELECT {MODEL_COLUMNS} FROM models m"
        " WHERE $1 = '' OR EXISTS (SELECT 1 FROM aliases a WHERE a.name = m.name AND a.alias = $1)"
        " ORDER BY m.name LIMIT $2 OFFSET $3",
        alias,
        limit,
        offset,
    )
    return [to_model(r) for r in rows]


# -- versions ---------------------------------------------------------------------------------


async def get_version(conn: asyncpg.Connection, name: str, version: int) -> registry_pb2.ModelVersion:
    query = f"SELECT {VERSION_COLUMNS} FROM model_versions v WHERE v.name = $1 AND v.version = $2"
    row = await conn.fetchrow(query, name, version) if NAME.match(name) else None
    if row is None:
        raise NotFound(f"model {_shown(name)} has no version {version}", field="version")
    return to_version(row)


async def resolve(conn: asyncpg.Connection, name: str, version: int = 0, alias: str = "") -> int:
    """The version a request means: explicit, by alias, or (0 and no alias) the latest."""
    if alias:
        v = await alias_version(conn, name, alias)
        if v is None:
            raise await missing_alias(conn, name, alias)
        return v
    if version:
        return version
    v = await conn.fetchval("SELECT max(version) FROM model_versions WHERE name = $1", name)
    if v is None:
        raise NotFound(f"model {_shown(name)} has no versions", field="name")
    return int(v)


async def registered_with_key(
    conn: asyncpg.Connection, name: str, idempotency_key: str
) -> registry_pb2.ModelVersion | None:
    """The version an earlier registration with this idempotency key created, if any."""
    row = await conn.fetchrow(
        f"SELECT {VERSION_COLUMNS} FROM model_versions v WHERE v.name = $1 AND v.idempotency_key = $2",
        name,
        idempotency_key,
    )
    return to_version(row) if row is not None else None


async def next_version(conn: asyncpg.Connection, name: str) -> int:
    """The number the model's next version gets; call it holding the model's lock."""
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) + 1 FROM model_versions WHERE name = $1", name))


async def insert_version(
    conn: asyncpg.Connection,
    header: registry_pb2.RegisterModelHeader,
    *,
    name: str,
    version: int,
    checksum: str,
    size_bytes: int,
    fmt: str,
    metric_values: dict[str, float],
    created_by: str,
    promotion: registry_pb2.PromotionDecision,
) -> None:
    await conn.execute(
        "INSERT INTO model_versions (name, version, description, task, checksum, size_bytes, format,"
        " signature, metrics, metric_values, params, lineage, dataset_name, dataset_version, run_id, tags,"
        " idempotency_key, created_by, promotion, calibration_uri)"
        " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10::jsonb,$11::jsonb,$12,$13,$14,$15,$16::jsonb,$17,$18,$19,$20)",
        name,
        version,
        header.description,
        header.task,
        checksum,
        size_bytes,
        fmt,
        header.signature.SerializeToString(),
        registry_pb2.ModelVersion(metrics=header.metrics).SerializeToString(),
        json.dumps(metric_values),
        params_json(header),
        header.lineage.SerializeToString(),
        header.lineage.dataset.name,
        header.lineage.dataset.version,
        header.lineage.run_id,
        json.dumps(dict(header.tags)),
        header.idempotency_key or None,
        created_by,
        promotion.SerializeToString(),
        header.calibration_uri,
    )


async def list_versions(
    conn: asyncpg.Connection, name: str, include_archived: bool, limit: int, offset: int
) -> list[registry_pb2.ModelVersion]:
    rows = await conn.fetch(
        f"SELECT {VERSION_COLUMNS} FROM model_versions v WHERE v.name = $1 AND ($2 OR NOT v.archived)"
        " ORDER BY v.version DESC LIMIT $3 OFFSET $4",
        name,
        include_archived,
        limit,
        offset,
    )
    return [to_version(r) for r in rows]


def search_query(request: registry_pb2.SearchModelVersionsRequest, limit: int, offset: int) -> tuple[str, list[object]]:
    """SearchModelVersions as one parameterised statement: every value the caller sent is a $n argument."""
    where: list[str] = ["($1 OR NOT v.archived)"]
    args: list[object] = [request.include_archived]

    def arg(value: object) -> str:
        args.append(value)
        return f"${len(args)}"

    if request.name:
        where.append(f"v.name = {arg(request.name)}")
    for key, value in request.tags.items():
        where.append(f"v.tags ->> {arg(key)} = {arg(value)}")
    for i, f in enumerate(request.metric_filters):
        op = COMPARISONS.get(f.op)
        if op is None or not f.metric:
            raise InvalidArgument("needs a metric and a comparison", field=f"metric_filters[{i}]")
        where.append(f"(v.metric_values ->> {arg(f.metric)})::float8 {op} {arg(f.value)}")
    if request.dataset_name:
        where.append(f"v.dataset_name = {arg(request.dataset_name)}")
    if request.dataset_version:
        where.append(f"v.dataset_version = {arg(request.dataset_version)}")
    if request.HasField("created_after"):
        where.append(f"v.created_at > {arg(when(request.created_after, 'created_after'))}")
    if request.HasField("created_before"):
        where.append(f"v.created_at < {arg(when(request.created_before, 'created_before'))}")
    order = "v.created_at DESC, v.name, v.version DESC"
    if request.order_by_metric:
        direction = "ASC" if request.ascending else "DESC"
        order = f"(v.metric_values ->> {arg(request.order_by_metric)})::float8 {direction} NULLS LAST, " + order
    sql = (
        f"SELECT {VERSION_COLUMNS} FROM model_versions v WHERE {' AND '.join(where)}"
        f" ORDER BY {order} LIMIT {arg(limit)} OFFSET {arg(offset)}"
    )
    return sql, args


async def search_versions(conn: asyncpg.Connection, sql: str, args: list[object]) -> list[registry_pb2.ModelVersion]:
    """Runs a statement built by `search_query`."""
    return [to_version(r) for r in await conn.fetch(sql, *args)]


async def update_tags(
    conn: asyncpg.Connection, name: str, version: int, tags: Mapping[str, str], remove_keys: list[str]
) -> None:
    await conn.execute(
        "UPDATE model_versions SET tags = (tags - $3::text[]) || $4::jsonb WHERE name = $1 AND version = $2",
        name,
        version,
        remove_keys,
        json.dumps(dict(tags)),
    )


async def archive_version(conn: asyncpg.Connection, name: str, version: int, reason: str) -> None:
    await conn.execute(
        "UPDATE model_versions SET archived = true, archive_reason = $3 WHERE name = $1 AND version = $2",
        name,
        version,
        reason,
    )


async def save_staging(conn: asyncpg.Connection, name: str, version: int, report: registry_pb2.StagingReport) -> None:
    await conn.execute(
        "UPDATE model_versions SET staging = $3 WHERE name = $1 AND version = $2",
        name,
        version,
        report.SerializeToString(),
    )


async def save_promotion(
    conn: asyncpg.Connection, name: str, version: int, decision: registry_pb2.PromotionDecision
) -> None:
    await conn.execute(
        "UPDATE model_versions SET promotion = $3 WHERE name = $1 AND version = $2",
        name,
        version,
        decision.SerializeToString(),
    )


# -- aliases ----------------------------------------------------------------------------------


async def alias_version(conn: asyncpg.Connection, name: str, alias: str) -> int | None:
    if not (NAME.match(name) and ALIAS.match(alias)):
        return None
    v = await conn.fetchval("SELECT version FROM aliases WHERE name = $1 AND alias = $2", name, alias)
    return int(v) if v is not None else None


async def missing_alias(conn: asyncpg.Connection, name: str, alias: str) -> NotFound:
    """The error for an alias the model lacks: NotFound on the name when there is no such model."""
    await ensure_model(conn, name)
    shown = repr(alias) if ALIAS.match(alias) else "(not a valid alias)"
    return NotFound(f"model {_shown(name)} has no alias {shown}", field="alias")


async def set_alias(conn: asyncpg.Connection, name: str, alias: str, version: int, updated_by: str) -> datetime:
    """Points the alias at the version (creating it if need be); returns when."""
    updated_at: datetime = await conn.fetchval(UPSERT_ALIAS, name, alias, version, updated_by)
    return updated_at


async def delete_alias(conn: asyncpg.Connection, name: str, alias: str) -> int | None:
    """Removes the alias; the version it pointed at, or None when there was no such alias."""
    v = await conn.fetchval("DELETE FROM aliases WHERE name = $1 AND alias = $2 RETURNING version", name, alias)
    return int(v) if v is not None else None


async def get_alias(conn: asyncpg.Connection, name: str, alias: str) -> registry_pb2.Alias | None:
    row = await conn.fetchrow(
        "SELECT version, updated_at, updated_by FROM aliases WHERE name = $1 AND alias = $2", name, alias
    )
    if row is None:
        return None
    return registry_pb2.Alias(
        model_name=name,
        alias=alias,
        version=row["version"],
        update_time=timestamp(row["updated_at"]),
        updated_by=row["updated_by"],
    )


# -- audit ------------------------------------------------------------------------------------


async def audit(
    conn: asyncpg.Connection,
    *,
    actor: str,
    action: registry_pb2.AuditAction.ValueType,
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


async def list_audit_events(
    conn: asyncpg.Connection,
    *,
    name: str,
    version: int,
    action: registry_pb2.AuditAction.ValueType,
    since: datetime | None,
    limit: int,
    offset: int,
) -> list[registry_pb2.AuditEvent]:
    """Oldest first; an empty name, 0 version or action, or no `since` does not filter."""
    rows = await conn.fetch(
        "SELECT * FROM audit_events WHERE ($1 = '' OR name = $1) AND ($2 = 0 OR version = $2)"
        " AND ($3 = 0 OR action = $3) AND ($4::timestamptz IS NULL OR at >= $4)"
        " ORDER BY id LIMIT $5 OFFSET $6",
        name,
        version,
        action,
        since,
        limit,
        offset,
    )
    return [to_audit(r) for r in rows]


async def guard_rolled_back(conn: asyncpg.Connection, name: str, checksum: str) -> int:
    """A version of `name` with this artifact that the post-promotion guard rolled back (0: none)."""
    v = await conn.fetchval(
        "SELECT v.version FROM model_versions v JOIN audit_events a ON a.name = v.name AND a.from_version = v.version"
        " WHERE v.name = $1 AND v.checksum = $2 AND a.action = $3 AND a.actor = $4 AND a.alias = $5"
        " ORDER BY v.version LIMIT 1",
        name,
        checksum,
        registry_pb2.AUDIT_ACTION_ROLLED_BACK,
        GUARD_ACTOR,
        PRODUCTION,
    )
    return int(v) if v else 0


async def previous_production(conn: asyncpg.Connection, name: str, current: int) -> int | None:
    """The version production last moved to `current` from, per the audit log (a rollback's target)."""
    v = await conn.fetchval(
        "SELECT from_version FROM audit_events WHERE name = $1 AND alias = $2 AND to_version = $3"
        " AND from_version <> 0 AND from_version <> $3 ORDER BY id DESC LIMIT 1",
        name,
        PRODUCTION,
        current,
    )
    return int(v) if v else None
