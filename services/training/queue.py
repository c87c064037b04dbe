"""Putting runs on the durable queue: one per (spec version, dataset version, trigger)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

import asyncpg
from opentelemetry import propagate

from flywheel.v1 import common_pb2, training_pb2
from services.training.store import RUN_NOTIFY

T = training_pb2


@dataclass(frozen=True)
class DataVersion:
    """What a run needs to know of a dataset version (from data.versioned or GetDatasetVersion)."""

    name: str
    version: int
    content_hash: str
    data_uri: str
    schema: common_pb2.Schema
    parents: list[int] = field(default_factory=list)


def dedup_key(
    spec: training_pb2.TrainingSpec, data: DataVersion, trigger: training_pb2.RunTrigger.ValueType, request_id: str = ""
) -> str:
    if trigger == T.RUN_TRIGGER_MANUAL:
        return f"manual:{spec.name}:{request_id or uuid.uuid4()}"
    return f"{spec.name}:{spec.version}:{data.name}:{data.version}:{trigger}"


async def enqueue_run(
    conn: asyncpg.Connection,
    spec: training_pb2.TrainingSpec,
    data: DataVersion,
    *,
    trigger: training_pb2.RunTrigger.ValueType,
    trigger_event_id: str = "",
    request_id: str = "",
    seed: int | None = None,
    trace_carrier: dict[str, str] | None = None,
) -> tuple[str, bool]:
    """Returns (run_id, created); an existing run for the same key is returned as is.

    The run continues the current trace, or the one in `trace_carrier` (a trigger that waited)."""
    key = dedup_key(spec, data, trigger, request_id)
    carrier: dict[str, str] = dict(trace_carrier or {})
    if not carrier:
        propagate.inject(carrier)
    run_id = await conn.fetchval(
        "INSERT INTO runs (run_id, dedup_key, spec_name, spec_version, dataset, dataset_version, dataset_hash,"
        " data_uri, parent_versions, schema, trigger, trigger_event_id, status, stage, seed, trace_context)"
        " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16::jsonb)"
        " ON CONFLICT (dedup_key) DO NOTHING RETURNING run_id",
        str(uuid.uuid4()),
        key,
        spec.name,
        spec.version,
        data.name,
        data.version,
        data.content_hash,
        data.data_uri,
        data.parents,
        data.schema.SerializeToString(),
        trigger,
        trigger_event_id,
        T.RUN_STATUS_QUEUED,
        T.RUN_STAGE_QUEUED,
        seed if seed is not None else spec.search_space.seed,
        json.dumps(carrier),
    )
    if run_id is None:
        return str(await conn.fetchval("SELECT run_id FROM runs WHERE dedup_key = $1", key)), False
    await conn.execute("SELECT pg_notify($1, $2)", RUN_NOTIFY, run_id)
    return str(run_id), True


async def covering_run(conn: asyncpg.Connection, spec: training_pb2.TrainingSpec, data: DataVersion) -> str | None:
    """A run of this spec version on this dataset version, whatever triggered it (manual, drift, data)."""
    run_id = await conn.fetchval(
        "SELECT run_id FROM runs WHERE spec_name = $1 AND spec_version = $2 AND dataset = $3 AND dataset_version = $4"
        " ORDER BY created_at LIMIT 1",
        spec.name,
        spec.version,
        data.name,
        data.version,
    )
    return str(run_id) if run_id else None
