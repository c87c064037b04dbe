"""Event reactions of the ingestion service.

`flywheel.ingest.records` is micro-batched per dataset (the record key) into versions by the
dataset's policy; offsets commit with the version. JSON values may be one row object, a list of
rows, or {"rows": [...]} (values without a content-type header are read as JSON); values with
content-type application/x-protobuf are `IngestRecords`. A batch the dataset's policy
rejects, or that names no dataset, goes to the DLQ with the reason.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg
from aiokafka import ConsumerRecord
from google.protobuf import json_format

from flywheel.app import ServiceContext
from flywheel.bus import BatchConsumer, Handler, RejectBatch, Topics
from flywheel.bus.serde import CONTENT_PROTOBUF, MalformedEvent, decode, header
from flywheel.errors import FlywheelError
from flywheel.v1 import common_pb2, events_pb2, ingestion_pb2
from services.ingestion import datasets, store
from services.ingestion.tables import rows_to_table
from services.ingestion.writer import write_version


def handlers(ctx: ServiceContext) -> dict[str, Handler]:
    return {}


def decode_rows(record: ConsumerRecord) -> list[dict[str, Any]]:
    if not record.key:
        raise MalformedEvent("records must be keyed by dataset name")
    # Outside producers rarely set headers: anything not declared protobuf is read as JSON.
    if not (header(record.headers, "content-type") or "").startswith(CONTENT_PROTOBUF):
        try:
            value = json.loads(record.value or b"")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MalformedEvent(f"not JSON: {exc}") from exc
        rows = value.get("rows") if isinstance(value, dict) and "rows" in value else value
        rows = [rows] if isinstance(rows, dict) else rows
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise MalformedEvent('expected a row object, a list of rows, or {"rows": [...]}')
        return rows
    msg = decode(events_pb2.IngestRecords, record.value, record.headers)
    return [_struct_row(r) for r in msg.rows]


def _struct_row(struct: Any) -> dict[str, Any]:
    """A protobuf Struct as a row: Struct numbers are doubles, so whole ones become ints again
    (an INT field would otherwise read "9000.0" and reject it as a type mismatch)."""
    row = json_format.MessageToDict(struct)
    return {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in row.items()}


def records_consumer(ctx: ServiceContext) -> BatchConsumer:
    policies: dict[str, tuple[int, float]] = {}

    async def on_batch(conn: asyncpg.Connection, dataset: str, batches: list[list[dict[str, Any]]]) -> None:
        rows = [row for batch in batches for row in batch]
        try:
            ds = await store.get_dataset(conn, dataset)
            policies[dataset] = datasets.micro_batch(ds)
            raw = rows_to_table(rows, ds.schema)
            await write_version(ctx, dataset, raw, common_pb2.WRITE_MODE_APPEND, "kafka", conn=conn)
        except FlywheelError as exc:
            raise RejectBatch(str(exc)) from exc

    def policy(dataset: str) -> tuple[int, float]:
        return policies.get(dataset, (datasets.DEFAULT_MAX_ROWS, datasets.DEFAULT_MAX_WAIT_S))

    return BatchConsumer(
        ctx.settings, ctx.name, ctx.pool, ctx.producer, Topics.INGEST_RECORDS, decode_rows, on_batch, policy
    )


async def run_records_consumer(ctx: ServiceContext) -> None:
    consumer = records_consumer(ctx)
    try:
        await consumer.run()
    finally:
        await consumer.stop()


def decode_feedback(record: ConsumerRecord) -> dict[str, Any] | None:
    """A labelled production row (features + label), or None for labels that carry no features."""
    event = decode(events_pb2.Feedback, record.value, record.headers)
    if not event.HasField("features") or not event.features.fields:
        return None
    row = _struct_row(event.features)
    # A google.protobuf.Value converts to the bare JSON value (number, string, ...), not a dict.
    label: Any = json_format.MessageToDict(event.label)
    row["__label__"] = int(label) if isinstance(label, float) and label.is_integer() else label
    return row


def feedback_consumer(ctx: ServiceContext) -> BatchConsumer:
    """Labelled production data into the datasets that opted in (Dataset.feedback_model), so the
    next retraining sees it. Micro-batched like ingest.records: one version per batch, offsets with it."""

    async def on_batch(conn: asyncpg.Connection, model: str, items: list[dict[str, Any] | None]) -> None:
        rows = [r for r in items if r is not None]
        if not rows:
            return
        specs = await conn.fetch("SELECT spec FROM datasets")
        targets = [
            ds for ds in (ingestion_pb2.Dataset.FromString(r["spec"]) for r in specs) if ds.feedback_model == model
        ]
        for ds in targets:
            labelled = [
                {**{k: v for k, v in r.items() if k != "__label__"}, ds.schema.label_field: r["__label__"]}
                for r in rows
            ]
            try:
                raw = rows_to_table(labelled, ds.schema)
                await write_version(ctx, ds.name, raw, common_pb2.WRITE_MODE_APPEND, "feedback", conn=conn)
            except FlywheelError as exc:
                raise RejectBatch(f"dataset {ds.name}: {exc}") from exc

    def policy(model: str) -> tuple[int, float]:
        return datasets.DEFAULT_MAX_ROWS, datasets.DEFAULT_MAX_WAIT_S

    return BatchConsumer(
        ctx.settings, ctx.name, ctx.pool, ctx.producer, Topics.FEEDBACK, decode_feedback, on_batch, policy,
        name=f"flywheel-{ctx.name}-feedback",
    )  # fmt: skip


async def run_feedback_consumer(ctx: ServiceContext) -> None:
    consumer = feedback_consumer(ctx)
    try:
        await consumer.run()
    finally:
        await consumer.stop()
