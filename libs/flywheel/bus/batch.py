"""Micro-batching consumer: records are grouped by key and handed over in batches; the batch's
effects and the partitions' next offsets commit in one transaction (offsets live in Postgres,
not in the broker), so a crash re-reads exactly what did not commit — effectively once.

A batch is cut when any key holds `max_rows` records or the oldest pending record is `max_wait_s`
old; then every pending key is flushed together, which keeps one offset per partition exact.
A record the decoder rejects goes to `<topic>.dlq` with error headers and is skipped; a key whose
handler keeps failing (any exception, after `consumer_max_attempts`) has its records dead-lettered
and the other keys commit. Only the database being away retries the whole batch.

With each partition's next offset the consumer stores a fingerprint of the last record it took.
A log that was reset (a recreated topic, a broker with memory storage restarted) reuses offsets:
on assignment the record before the stored offset is read back and compared, and when it is not
the one we took, the partition is read from its beginning, so new records at reused offsets are
neither skipped nor taken for ones already processed.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiokafka import ConsumerRebalanceListener, ConsumerRecord, TopicPartition

from flywheel.config import Settings
from flywheel.db import CONNECTION_ERRORS
from flywheel.logging import get_logger
from flywheel.retry import Backoff

from . import metrics
from .consumer import NOT_RETRIED, fingerprint
from .dlq import DeadLetters
from .groups import fetch, group_consumer, join
from .producer import EventProducer

log = get_logger(__name__)

Decoder = Callable[[ConsumerRecord], Any]


class RejectBatch(Exception):
    """Raised by a batch handler: this key's records go to the DLQ with the reason; the rest commit."""


# handler(conn, key, decoded items) runs inside the batch's transaction.
BatchHandler = Callable[[asyncpg.Connection, str, list[Any]], Awaitable[None]]
Policy = Callable[[str], tuple[int, float]]  # key -> (max_rows, max_wait_s)


@dataclass
class _Pending:
    items: list[Any] = field(default_factory=list)
    records: list[ConsumerRecord] = field(default_factory=list)
    first_at: float = 0.0


class _SeekToStored(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka ships no type hints
    def __init__(self, batcher: BatchConsumer) -> None:
        self._batcher = batcher

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # Uncommitted records of revoked partitions will be re-read by their next owner.
        self._batcher._drop_pending()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        # Paused first: while the stored offsets are looked up, the fetcher would otherwise start the
        # new partitions from the reset position and hand over records the seek then cannot take back.
        self._batcher._consumer.pause(*assigned)
        try:
            await self._batcher._seek_to_stored(assigned)
        finally:
            self._batcher._consumer.resume(*assigned)


class BatchConsumer:
    def __init__(
        self,
        settings: Settings,
        service: str,
        pool: asyncpg.Pool,
        producer: EventProducer,
        topic: str,
        decode: Decoder,
        handler: BatchHandler,
        policy: Policy,
        *,
        name: str | None = None,
    ) -> None:
        self.name = name or f"flywheel-{service}-batch"
        self._settings = settings
        self._pool = pool
        self._producer = producer
        self._topic = topic
        self._decode = decode
        self._handler = handler
        self._policy = policy
        self._pending: dict[str, _Pending] = {}
        self._next: dict[TopicPartition, tuple[int, str]] = {}  # next offset, last record's fingerprint
        # Partitions whose first record must be the one we took last (offset, fingerprint).
        self._verify: dict[TopicPartition, tuple[int, str]] = {}
        self._consumer = group_consumer(settings, self.name)
        self._dead_letters = DeadLetters(settings, pool, producer, self.name)
        self.batches = 0
        self.dead_lettered = 0
        self.resets = 0

    async def stop(self) -> None:
        await self._consumer.stop()

    async def run(self) -> None:
        await join(self._consumer, self.name)
        self._consumer.subscribe([self._topic], listener=_SeekToStored(self))
        while True:
            batch = await fetch(self._consumer, timeout_ms=200, max_records=1000)
            if batch is None:
                continue
            for tp, records in batch.items():
                if tp in self._verify:
                    records = await self._verified(tp, records)
                for record in records:
                    await self._add(record)
                if records:
                    self._next[tp] = (records[-1].offset + 1, fingerprint(records[-1]))
            await self._check_past_end(batch)
            if self._due():
                await self._flush()

    async def _check_past_end(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """A partition still waiting to read back its last record, whose log ends before that record
        (a fetch's high watermark says so), is a shorter, new log: read it from its start."""
        for tp, (offset, _) in list(self._verify.items()):
            if tp in batch:
                continue
            high = self._consumer.highwater(tp)
            if high is not None and high <= offset:
                del self._verify[tp]
                self.resets += 1
                log.warning(
                    "batch consumer: the log was reset (it ends before the stored offset); reading it from the start",
                    topic=tp.topic,
                    partition=tp.partition,
                    stored_offset=offset + 1,
                    log_end=high,
                )
                await self._consumer.seek_to_beginning(tp)

    async def _verified(self, tp: TopicPartition, records: list[ConsumerRecord]) -> list[ConsumerRecord]:
        """Drop the re-read last record if it is the one we took; on a reset log, go back to its start."""
        offset, expected = self._verify.pop(tp)
        if records[0].offset == offset and fingerprint(records[0]) == expected:
            return records[1:]
        self.resets += 1
        log.warning(
            "batch consumer: the log was reset (the record at the stored offset differs); reading it from the start",
            topic=tp.topic,
            partition=tp.partition,
            stored_offset=offset + 1,
        )
        await self._consumer.seek_to_beginning(tp)
        return []

    async def _add(self, record: ConsumerRecord) -> None:
        key = record.key.decode("utf-8", "replace") if record.key else ""
        try:
            item = self._decode(record)
        except Exception as exc:  # whatever the decoder raises, the record is the problem
            await self._dead_letter(record, exc, 1)
            return
        pending = self._pending.setdefault(key, _Pending(first_at=time.monotonic()))
        pending.items.append(item)
        pending.records.append(record)

    def _due(self) -> bool:
        now = time.monotonic()
        for key, pending in self._pending.items():
            max_rows, max_wait_s = self._policy(key)
            if len(pending.items) >= max_rows or now - pending.first_at >= max_wait_s:
                return True
        # Nothing pending but offsets moved (only DLQ'd records): store them too.
        return not self._pending and bool(self._next)

    async def _flush(self) -> None:
        pending, offsets = self._pending, dict(self._next)
        backoff = Backoff.from_settings(self._settings)
        while True:
            try:
                async with self._pool.acquire() as conn, conn.transaction():
                    for key, p in pending.items():
                        await self._apply(conn, key, p)
                    for tp, (offset, last) in offsets.items():
                        await conn.execute(
                            "INSERT INTO consumer_offsets (consumer, topic, partition, next_offset, last_record)"
                            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (consumer, topic, partition)"
                            " DO UPDATE SET next_offset = $4, last_record = $5, updated_at = now()",
                            self.name,
                            tp.topic,
                            tp.partition,
                            offset,
                            last,
                        )
                break
            except (*CONNECTION_ERRORS, asyncpg.PostgresError, OSError) as exc:
                # The database is away (or the commit failed): nothing committed, keep the batch and try again.
                log.warning("batch consumer: commit failed, will retry", error=repr(exc))
                await backoff.wait()
        self._pending = {}
        self._next = {}
        self.batches += 1
        metrics.consumer_processed.add(sum(len(p.items) for p in pending.values()), {"group": self.name})

    async def _apply(self, conn: asyncpg.Connection, key: str, p: _Pending) -> None:
        """One key's handler in a savepoint, retried; its records dead-lettered when it keeps failing."""
        backoff = Backoff(self._settings.consumer_backoff_s, self._settings.consumer_backoff_max_s)
        attempt = 0
        while True:
            attempt += 1
            try:
                async with conn.transaction():  # a savepoint: one key's failure spares the others
                    await self._handler(conn, key, p.items)
                return
            except CONNECTION_ERRORS:
                raise  # the batch's transaction is gone with the connection: _flush retries it all
            except RejectBatch as exc:
                log.warning("batch consumer: batch rejected, records sent to DLQ", key=key, error=str(exc)[:500])
                failure: Exception = exc
            except Exception as exc:  # any other failure of one key must not stop the consumer
                if not isinstance(exc, NOT_RETRIED) and attempt < self._settings.consumer_max_attempts:
                    log.warning("batch consumer: handler failed, will retry", key=key, error=repr(exc)[:500])
                    metrics.consumer_retries.add(1, {"group": self.name, "topic": self._topic})
                    await backoff.wait()
                    continue
                log.error("batch consumer: giving up on a key, records sent to DLQ", key=key, error=repr(exc)[:500])
                failure = exc
            for record in p.records:
                await self._dead_letter(record, failure, attempt, conn)
            return

    def _drop_pending(self) -> None:
        self._pending = {}
        self._next = {}

    async def _seek_to_stored(self, assigned: list[TopicPartition]) -> None:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT topic, partition, next_offset, last_record FROM consumer_offsets WHERE consumer = $1",
                self.name,
            )
        stored = {TopicPartition(r["topic"], r["partition"]): (r["next_offset"], r["last_record"]) for r in rows}
        self._verify = {}
        for tp in assigned:
            if tp not in stored:
                continue
            next_offset, last = stored[tp]
            start = (await self._consumer.beginning_offsets([tp]))[tp]
            if next_offset <= start or not last:
                # Everything before the log's start is gone: what it holds is all unread. (Or an offset
                # stored before fingerprints were kept: taken as it is.)
                self._consumer.seek(tp, max(next_offset, start))
            else:
                # Read back the record we took last. The log's end offset is not asked here: a broker
                # may report it short (tansu 0.6 answers ListOffsets with the last batch's first
                # offset + 1); the high watermark of a fetch is right, and _check_past_end uses it.
                self._verify[tp] = (next_offset - 1, last)
                self._consumer.seek(tp, next_offset - 1)

    async def _dead_letter(
        self, record: ConsumerRecord, exc: BaseException, attempts: int, conn: asyncpg.Connection | None = None
    ) -> None:
        log.info("batch consumer: record sent to DLQ", error=str(exc)[:500], offset=record.offset)
        await self._dead_letters.park(record, exc, attempts, conn)
        self.dead_lettered += 1
