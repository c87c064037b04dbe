"""Dead letters: where a record goes when it cannot be handled, so that nothing blocks and nothing is lost.

First choice is `<topic>.dlq` on the broker (the original bytes and headers, plus why and where it
failed). When the broker will not take it (the record is too large, or the broker stays away), the
record goes to the service's `dead_letters` table instead; if PostgreSQL is away too, both are tried
again in turn until one of them has it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence

import asyncpg
from aiokafka import ConsumerRecord
from aiokafka.errors import KafkaError, KafkaTimeoutError

from flywheel.config import Settings
from flywheel.logging import get_logger
from flywheel.retry import Backoff

from . import metrics
from .producer import EventProducer
from .topics import dlq_topic

log = get_logger(__name__)

# Broker attempts per round before the record is written to the table instead.
_DLQ_ATTEMPTS = 3


def dlq_headers(record: ConsumerRecord, exc: BaseException, attempts: int, consumer: str) -> list[tuple[str, bytes]]:
    return [
        *[(k, v) for k, v in record.headers if not k.startswith(("error.", "source."))],
        ("error.type", type(exc).__name__.encode()),
        ("error.message", str(exc)[:2000].encode()),
        ("error.attempts", str(attempts).encode()),
        ("error.consumer", consumer.encode()),
        ("source.topic", record.topic.encode()),
        ("source.partition", str(record.partition).encode()),
        ("source.offset", str(record.offset).encode()),
    ]


def headers_json(headers: Sequence[tuple[str, bytes | None]]) -> str:
    """Headers as JSON an operator can read; values that are not UTF-8 keep their bytes as base64."""
    out: list[list[str]] = []
    for key, value in headers:
        raw = value or b""
        try:
            out.append([key, raw.decode("utf-8")])
        except UnicodeDecodeError:
            out.append([key, "base64:" + base64.b64encode(raw).decode()])
    return json.dumps(out)


async def store(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    origin: str,
    topic: str,
    key: bytes | None,
    payload: bytes,
    headers: Sequence[tuple[str, bytes | None]],
    error: BaseException | str,
    attempts: int,
    consumer: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
    event_id: str | None = None,
) -> None:
    """One row in `dead_letters` (origin: 'consumer' or 'outbox')."""
    error_type = type(error).__name__ if isinstance(error, BaseException) else "Error"
    await conn.execute(
        "INSERT INTO dead_letters (origin, consumer, topic, partition, record_offset, event_id, key, payload,"
        " headers, error_type, error, attempts) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11, $12)",
        origin,
        consumer,
        topic,
        partition,
        offset,
        event_id,
        key,
        payload,
        headers_json(headers),
        error_type,
        str(error)[:2000],
        attempts,
    )
    metrics.dead_letters_stored.add(1, {"origin": origin, "topic": topic})


class DeadLetters:
    """Parks records a consumer gave up on: the DLQ topic, else the table; never raises but for cancellation."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool, producer: EventProducer, consumer: str) -> None:
        self._settings = settings
        self._pool = pool
        self._producer = producer
        self._consumer = consumer

    async def park(
        self, record: ConsumerRecord, exc: BaseException, attempts: int, conn: asyncpg.Connection | None = None
    ) -> None:
        """`conn`: a transaction to write the table row in (a batch's, so the row commits with its offsets)."""
        headers = dlq_headers(record, exc, attempts, self._consumer)
        backoff = Backoff.from_settings(self._settings)
        while True:
            problem = await self._publish(record, headers, backoff)
            if problem is None:
                metrics.consumer_dead_lettered.add(1, {"group": self._consumer, "topic": record.topic})
                return
            try:
                await store(
                    conn if conn is not None else self._pool,
                    origin="consumer",
                    consumer=self._consumer,
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    key=record.key,
                    payload=record.value or b"",
                    headers=headers,
                    error=exc,
                    attempts=attempts,
                )
                log.warning(
                    "dead letter kept in PostgreSQL: the DLQ would not take it",
                    dlq_error=repr(problem),
                    offset=record.offset,
                )
                return
            except Exception as db_exc:
                if conn is not None:
                    raise  # the caller's transaction failed: it retries the whole batch
                log.warning("dead letter: broker and database both refused, will retry", error=repr(db_exc))
                await backoff.wait()

    async def _publish(
        self, record: ConsumerRecord, headers: list[tuple[str, bytes]], backoff: Backoff
    ) -> BaseException | None:
        """None once the DLQ has the record; else the last error (at once when retrying cannot help)."""
        problem: BaseException | None = None
        for attempt in range(_DLQ_ATTEMPTS):
            try:
                await self._producer.send_and_wait(
                    dlq_topic(record.topic), record.value or b"", key=record.key, headers=headers
                )
                return None
            except Exception as exc:
                problem = exc
                if refused_for_itself(exc):
                    return exc  # e.g. MessageSizeTooLargeError: the same record fails the same way
                log.warning("dead letter: DLQ publish failed", error=repr(exc), attempt=attempt + 1)
                await backoff.wait()
        return problem


def refused_for_itself(problem: BaseException) -> bool:
    """Did the broker (or the producer) refuse this record for what it is, so that sending the same
    record again fails the same way? Not when the broker is away, slow or electing a leader."""
    if isinstance(problem, KafkaError):
        # aiokafka marks its own timeout not retriable, yet a slow broker is no fault of the record.
        return not problem.retriable and not isinstance(problem, KafkaTimeoutError)
    return not isinstance(problem, (OSError, TimeoutError))
