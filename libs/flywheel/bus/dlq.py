"""Dead-letter records: the original bytes and headers, plus why and where they failed."""

from __future__ import annotations

from aiokafka import ConsumerRecord


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
