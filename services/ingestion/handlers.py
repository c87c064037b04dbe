"""Event reactions of the ingestion service.

`flywheel.ingest.records` is micro-batched per dataset (the record key) into versions by the
dataset's policy; offsets commit with the version. JSON values may be one row object, a list of
rows, or {"rows": [...]} (values without a content-type header are read as JSON); values with
content-type application/x-protobuf are `IngestRecords`. A batch the dataset's policy
rejects, or that names no dataset, goes to the DLQ with the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiokafka import ConsumerRecord
from google.protobuf import json_format

from flywheel.app import ServiceContext
from flywheel.bus import BatchConsumer, Handler, RejectBatch, Topics
from flywheel.bus.dlq import DeadLetters
from flywheel.bus.serde import CONTENT_PROTOBUF, MalformedEvent, decode, header
from flywheel.db import CONNECTION_ERRORS
from flywheel.errors import FlywheelError, NotFound
from flywheel.logging import get_logger
from flywheel.telemetry import meter
from flywheel.v1 import common_pb2, events_pb2, ingestion_pb2
from services.ingestion import datasets, store
from services.ingestion.policies import MicroBatchPolicies
from services.ingestion.tables import rows_to_table
from services.ingestion.writer import write_version

log = get_logger(__name__)


def handlers(ctx: ServiceContext) -> dict[str, Handler]:
    return {}


def decode_rows(record: ConsumerRecord) -> list[dict[str, Any]]:
    if not record.key:
        raise MalformedEvent("records must be keyed by dataset name")
    # Outside producers rarely set headers: anything not declared protobuf is read as JSON.
    if not (header(record.headers, "content-type") or "").startswith(CONTENT_PROTOBUF):
        try:
            value = json.loads(record.value or b"")
        except json.JSONDecodeError as exc:
            raise MalformedEvent(f"not JSON (at byte {exc.pos})") from None
        except UnicodeDecodeError as exc:  # its message would quote the bytes
            raise MalformedEvent(f"not UTF-8 (at byte {exc.start})") from None
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
    async def lookup(dataset: str) -> ingestion_pb2.Dataset | None:
        if not datasets.NAME.match(dataset):  # a key no dataset can have: no query
            return None
        async with ctx.pool.acquire() as conn:
            try:
                return await store.get_dataset(conn, dataset)
            except NotFound:
                return None

    # Each dataset's own policy from its first record on (the defaults only while it is looked up).
    policies = MicroBatchPolicies(lookup)

    async def on_batch(conn: asyncpg.Connection, dataset: str, batches: list[list[dict[str, Any]]]) -> None:
        rows = [row for batch in batches for row in batch]
        try:
            ds = await store.get_dataset(conn, dataset)
            policies.remember(dataset, ds)
            raw = rows_to_table(rows, ds.schema)
            await write_version(ctx, dataset, raw, common_pb2.WRITE_MODE_APPEND, "kafka", conn=conn)
        except FlywheelError as exc:
            raise RejectBatch(str(exc)) from exc

    return BatchConsumer(
        ctx.settings, ctx.name, ctx.pool, ctx.producer, Topics.INGEST_RECORDS, decode_rows, on_batch, policies
    )


async def run_records_consumer(ctx: ServiceContext) -> None:
    consumer = records_consumer(ctx)
    try:
        await consumer.run()
    finally:
        await consumer.stop()


@dataclass(frozen=True, slots=True)
class FeedbackRow:
    """A labelled production row, and the record it came from (dead-lettered if a dataset refuses it)."""

    row: dict[str, Any]
    record: ConsumerRecord


class FeedbackRejected(Exception):
    """One dataset refused a model's feedback rows; the model's other datasets took theirs."""


# Failures that say nothing about the rows (the database or the disk is in trouble): the whole batch
# is retried, instead of the rows being refused for one dataset.
_NOT_THE_ROWS: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS,
    OSError,
    asyncpg.InsufficientResourcesError,
    asyncpg.OperatorInterventionError,
)
feedback_rejected = meter("flywheel.ingestion").create_counter(
    "flywheel.ingestion.feedback_rejected",
    unit="{row}",
    description="Feedback rows a dataset refused (its schema or policy); other datasets were unaffected",
)


def decode_feedback(record: ConsumerRecord) -> FeedbackRow | None:
    """A labelled production row (features + label), or None for labels that carry no features."""
    event = decode(events_pb2.Feedback, record.value, record.headers)
    if not event.HasField("features") or not event.features.fields:
        return None
    try:
        row = _struct_row(event.features)
        # A google.protobuf.Value converts to the bare JSON value (number, string, ...), not a dict.
        label: Any = json_format.MessageToDict(event.label)
    except ValueError as exc:  # NaN or infinity in a protobuf number: no JSON (and no dataset) holds it
        raise MalformedEvent("features and label must be JSON values (no NaN or infinity)") from exc
    row["__label__"] = int(label) if isinstance(label, float) and label.is_integer() else label
    return FeedbackRow(row, record)


def feedback_consumer(ctx: ServiceContext) -> BatchConsumer:
    """Labelled production data into the datasets that opted in (Dataset.feedback_model), so the
    next retraining sees it. Micro-batched like ingest.records: one version per batch, offsets with it.

    Each dataset takes the batch in a savepoint of its own: a dataset whose schema or policy refuses
    the rows (a missing field, a wrong type, a value outside allowed_values) refuses them for itself
    only. That is logged, counted (flywheel.ingestion.feedback_rejected) and each refused record goes
    to flywheel.feedback.dlq (error.type FeedbackRejected, the dataset named in error.message; once per
    refusing dataset), so it can be replayed once the dataset is fixed. The model's other datasets
    still get their version, and monitoring, which reads the topic in its own group, still joins the labels.
    """
    name = f"flywheel-{ctx.name}-feedback"
    dead_letters = DeadLetters(ctx.settings, ctx.pool, ctx.producer, name)

    async def on_batch(conn: asyncpg.Connection, model: str, items: list[FeedbackRow | None]) -> None:
        rows = [r for r in items if r is not None]
        if not rows:
            return
        specs = await conn.fetch("SELECT spec FROM datasets")
        targets = [
            ds for ds in (ingestion_pb2.Dataset.FromString(r["spec"]) for r in specs) if ds.feedback_model == model
        ]
        for ds in targets:
            labelled = [
                {**{k: v for k, v in r.row.items() if k != "__label__"}, ds.schema.label_field: r.row["__label__"]}
                for r in rows
            ]
            try:
                async with conn.transaction():  # a savepoint: this dataset's refusal spares the others
                    raw = rows_to_table(labelled, ds.schema)
                    await write_version(ctx, ds.name, raw, common_pb2.WRITE_MODE_APPEND, "feedback", conn=conn)
            except _NOT_THE_ROWS:
                raise
            except Exception as exc:
                await _refused(conn, ds.name, model, rows, exc)

    async def _refused(
        conn: asyncpg.Connection, dataset: str, model: str, rows: list[FeedbackRow], exc: Exception
    ) -> None:
        # A domain error names the field and row; anything else is named by its type only (its text
        # could carry the values).
        reason = str(exc)[:500] if isinstance(exc, FlywheelError) else f"{type(exc).__name__} while writing"
        log.warning(
            "feedback refused by one dataset; the model's other datasets are unaffected",
            dataset=dataset,
            model=model,
            rows=len(rows),
            error=reason,
        )
        feedback_rejected.add(len(rows), {"dataset": dataset})
        failure = FeedbackRejected(f"dataset {dataset}: {reason}")
        for r in rows:
            await dead_letters.park(r.record, failure, 1, conn)

    def policy(model: str) -> tuple[int, float]:
        return datasets.DEFAULT_MAX_ROWS, datasets.DEFAULT_MAX_WAIT_S

    return BatchConsumer(
        ctx.settings, ctx.name, ctx.pool, ctx.producer, Topics.FEEDBACK, decode_feedback, on_batch, policy, name=name
    )


async def run_feedback_consumer(ctx: ServiceContext) -> None:
    consumer = feedback_consumer(ctx)
    try:
        await consumer.run()
    finally:
        await consumer.stop()
