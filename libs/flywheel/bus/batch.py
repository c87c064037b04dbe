"""Micro-batching consumer: records are grouped by key and handed over in batches; the batch's
effects and the partitions' next offsets commit in one transaction (offsets live in Postgres,
not in the broker), so a crash re-reads exactly what did not commit — effectively once.

A batch is cut when any key holds `max_rows` records or the oldest pending record is `max_wait_s`
old; then every pending key is flushed together, which keeps one offset per partition exact.
A record the decoder rejects goes to `<topic>.dlq` with error headers and is skipped.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiokafka import ConsumerRebalanceListener, ConsumerRecord, TopicPartition

from flywheel.config import Settings
from flywheel.logging import get_logger
from flywheel.retry import Backoff

from . import metrics
from .dlq import dlq_headers
from .groups import fetch, group_consumer, join
from .producer import EventProducer
from .topics import dlq_topic

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
        await self._batcher._seek_to_stored(assigned)


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
        self._next: dict[TopicPartition, int] = {}
        self._consumer = group_consumer(settings, self.name)
        self.batches = 0

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
                for record in records:
                    await self._add(record)
                self._next[tp] = records[-1].offset + 1
            if self._due():
                await self._flush()

    async def _add(self, record: ConsumerRecord) -> None:
        key = record.key.decode("utf-8", "replace") if record.key else ""
        try:
            item = self._decode(record)
        except Exception as exc:
            await self._dead_letter(record, exc)
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
                        try:
                            async with conn.transaction():  # a savepoint: one key's rejection spares the others
                                await self._handler(conn, key, p.items)
                        except RejectBatch as exc:
                            log.warning("batch consumer: batch rejected, records sent to DLQ", key=key, error=str(exc))
                            for record in p.records:
                                await self._dead_letter(record, exc)
                    for tp, offset in offsets.items():
                        await conn.execute(
                            "INSERT INTO consumer_offsets (consumer, topic, partition, next_offset)"
                            " VALUES ($1, $2, $3, $4) ON CONFLICT (consumer, topic, partition)"
                            " DO UPDATE SET next_offset = $4, updated_at = now()",
                            self.name,
                            tp.topic,
                            tp.partition,
                            offset,
                        )
                break
            except (asyncpg.PostgresError, OSError) as exc:
                # The database is away: nothing committed, keep the batch and try again.
                log.warning("batch consumer: commit failed, will retry", error=repr(exc))
                await backoff.wait()
        self._pending = {}
        self._next = {}
        self.batches += 1
        metrics.consumer_processed.add(sum(len(p.items) for p in pending.values()), {"group": self.name})

    def _drop_pending(self) -> None:
        self._pending = {}
        self._next = {}

    async def _seek_to_stored(self, assigned: list[TopicPartition]) -> None:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT topic, partition, next_offset FROM consumer_offsets WHERE consumer = $1", self.name
            )
        stored = {TopicPartition(r["topic"], r["partition"]): r["next_offset"] for r in rows}
        for tp in assigned:
            if tp not in stored:
                continue
            end = (await self._consumer.end_offsets([tp]))[tp]
            # A broker with memory storage may come back shorter than our stored offset.
            self._consumer.seek(tp, min(stored[tp], end))

    async def _dead_letter(self, record: ConsumerRecord, exc: BaseException) -> None:
        headers = dlq_headers(record, exc, 1, self.name)
        log.info("batch consumer: record sent to DLQ", error=str(exc), offset=record.offset)
        value = record.value or b""
        await self._producer.send_and_wait(dlq_topic(record.topic), value, key=record.key, headers=headers)
        metrics.consumer_dead_lettered.add(1, {"group": self.name, "topic": record.topic})
