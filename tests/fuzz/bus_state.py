"""What the stack's consumers have done with a topic, read from outside: how far each consumer
got (the broker's committed offsets of a consumer group, or a batch consumer's consumer_offsets
rows in PostgreSQL), what they dead-lettered (`<topic>.dlq`, and the dead_letters table where the
DLQ would not take a record), and which events a per-event consumer recorded in its inbox."""

from __future__ import annotations

import time
from dataclasses import dataclass

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from flywheel.bus.topics import Topics, dlq_topic


@dataclass(frozen=True)
class Consumer:
    name: str  # consumer group, or batch consumer name
    schema: str  # the owning service's PostgreSQL schema
    topic: str
    batch: bool  # offsets in PostgreSQL (consumer_offsets) rather than in the broker


# Who reads the topics outside producers write to (docs/architecture.md, "Services and what each owns").
CONSUMERS = (
    Consumer("flywheel-ingestion-batch", "ingestion", Topics.INGEST_RECORDS, batch=True),
    Consumer("flywheel-ingestion-feedback", "ingestion", Topics.FEEDBACK, batch=True),
    Consumer("flywheel-monitoring", "monitoring", Topics.FEEDBACK, batch=False),
    Consumer("flywheel-monitoring", "monitoring", Topics.PREDICTIONS_LOGGED, batch=False),
)


@dataclass(frozen=True)
class DeadLetter:
    consumer: str
    topic: str
    partition: int
    offset: int
    error_type: str
    error_message: str
    where: str  # "dlq" or "table"


async def _partitions(client: AIOKafkaConsumer, topic: str) -> set[int]:
    parts = client.partitions_for_topic(topic)
    if not parts:
        await client._client.force_metadata_update()  # a fresh client knows no topics yet
        parts = client.partitions_for_topic(topic)
    return set(parts or ())


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """partition -> offset after the last record. Read from a fetch's high watermark: the embedded
    broker (tansu 0.6) answers ListOffsets(latest) with the last *batch's* base offset + 1, short of
    the end when a producer batched several records."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        listed = await consumer.end_offsets([TopicPartition(topic, p) for p in await _partitions(consumer, topic)])
        ends = {tp.partition: off for tp, off in listed.items()}
        nonempty = [tp for tp, off in listed.items() if off > 0]
        if nonempty:
            consumer.assign(nonempty)
            for tp in nonempty:
                consumer.seek(tp, listed[tp] - 1)  # the last batch: its fetch carries the high watermark
            deadline = time.monotonic() + 30
            while any(consumer.highwater(tp) is None for tp in nonempty) and time.monotonic() < deadline:
                await consumer.getmany(*nonempty, timeout_ms=500, max_records=1)
            ends.update({tp.partition: consumer.highwater(tp) or listed[tp] for tp in nonempty})
        return ends
    finally:
        await consumer.stop()


async def positions(bootstrap: str, dsn: str, consumer: Consumer) -> dict[int, int]:
    """partition -> next offset the consumer will read (committed)."""
    if consumer.batch:
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch(
                f"SELECT partition, next_offset FROM {consumer.schema}.consumer_offsets"
                " WHERE consumer = $1 AND topic = $2",
                consumer.name,
                consumer.topic,
            )
        finally:
            await conn.close()
        return {r["partition"]: r["next_offset"] for r in rows}
    # A group member that never subscribes: it reads the group's committed offsets without joining.
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=consumer.name, enable_auto_commit=False)
    await reader.start()
    try:
        found = {}
        for partition in await _partitions(reader, consumer.topic):
            committed = await reader.committed(TopicPartition(consumer.topic, partition))
            if committed is not None and committed >= 0:
                found[partition] = committed
        return found
    finally:
        await reader.stop()


async def read_all(bootstrap: str, topic: str) -> list[ConsumerRecord]:
    """Every record of `topic` up to its current end."""
    ends = await end_offsets(bootstrap, topic)
    records: list[ConsumerRecord] = []
    parts = [TopicPartition(topic, p) for p, end in ends.items() if end > 0]
    if not parts:
        return records
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        deadline = time.monotonic() + 60
        remaining = set(parts)
        while remaining and time.monotonic() < deadline:
            for recs in (await consumer.getmany(*remaining, timeout_ms=500)).values():
                records.extend(recs)
            remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp.partition]}
    finally:
        await consumer.stop()
    return records


def _header(record: ConsumerRecord, name: str) -> bytes | None:
    found = [v for k, v in record.headers if k == name]
    return found[-1] if found else None


async def dead_letters(bootstrap: str, dsn: str, topic: str) -> tuple[list[DeadLetter], list[str]]:
    """Every dead letter of `topic` (DLQ topic and tables), and the DLQ records that carry no reason."""
    found: list[DeadLetter] = []
    unexplained: list[str] = []
    for record in await read_all(bootstrap, dlq_topic(topic)):
        error_type, error_message = _header(record, "error.type"), _header(record, "error.message")
        if not error_type or not error_message:
            unexplained.append(
                f"{dlq_topic(topic)}@{record.partition}:{record.offset} headers={[k for k, _ in record.headers]}"
            )
        try:
            found.append(
                DeadLetter(
                    (_header(record, "error.consumer") or b"").decode(),
                    (_header(record, "source.topic") or b"").decode(),
                    int(_header(record, "source.partition") or -1),
                    int(_header(record, "source.offset") or -1),
                    (error_type or b"").decode("utf-8", "replace"),
                    (error_message or b"").decode("utf-8", "replace"),
                    "dlq",
                )
            )
        except ValueError:
            unexplained.append(f"{dlq_topic(topic)}@{record.partition}:{record.offset}: unreadable source headers")
    conn = await asyncpg.connect(dsn)
    try:
        for schema in sorted({c.schema for c in CONSUMERS}):
            if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{schema}.dead_letters"):
                continue  # (a stack from before the dead-letter table)
            rows = await conn.fetch(
                f"SELECT consumer, topic, partition, record_offset, error_type, error FROM {schema}.dead_letters"
                " WHERE origin = 'consumer' AND topic = $1",
                topic,
            )
            for r in rows:
                if not r["error_type"] or not r["error"]:
                    unexplained.append(f"{schema}.dead_letters row for {topic}@{r['partition']}:{r['record_offset']}")
                found.append(
                    DeadLetter(
                        r["consumer"] or "",
                        r["topic"],
                        r["partition"],
                        r["record_offset"],
                        r["error_type"],
                        r["error"],
                        "table",
                    )
                )
    finally:
        await conn.close()
    return found, unexplained


async def inbox_ids(dsn: str, schema: str, consumer: str) -> set[str]:
    """The event ids the consumer recorded as handled; a JSON record without meta is recorded by its
    position, "<topic>:<partition>:<offset>[:<fingerprint>]", and appears here by that position too."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(f"SELECT event_id FROM {schema}.inbox WHERE consumer = $1", consumer)
    finally:
        await conn.close()
    ids = {r["event_id"] for r in rows}
    return ids | {":".join(i.split(":")[:3]) for i in ids if i.count(":") >= 2}
