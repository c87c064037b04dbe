"""The one Kafka producer a process holds: acks=all, idempotence as configured."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata

from flywheel.config import Settings
from flywheel.errors import StartupError

from .security import describe, kafka_security
from .serde import Headers


class EventProducer:
    def __init__(self, settings: Settings, client_id: str) -> None:
        self._settings = settings
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            client_id=client_id,
            acks="all",
            enable_idempotence=settings.kafka_enable_idempotence,
            linger_ms=5,
            request_timeout_ms=10_000,
            max_request_size=settings.grpc_max_message_mb * 1024 * 1024,
            **kafka_security(settings),
        )

    async def start(self) -> None:
        timeout = self._settings.connect_timeout_s
        try:
            await asyncio.wait_for(self._producer.start(), timeout)
        except (KafkaError, OSError, TimeoutError, KeyError) as exc:
            # KeyError: aiokafka's SCRAM client fails that way when a broker ends the exchange with an error.
            # aiokafka leaves a half-started client behind; close it so the process can exit cleanly.
            await self._producer.stop()
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            raise StartupError(
                f"cannot reach Kafka broker at {self._settings.kafka_bootstrap} over {describe(self._settings)}:"
                f" {reason}{_hint(self._settings)}"
            ) from exc

    async def stop(self) -> None:
        await self._producer.stop()

    async def send(self, topic: str, value: bytes, *, key: bytes | None, headers: Headers) -> asyncio.Future:
        """Queue one record; await the returned future for the broker's ack."""
        return await self._producer.send(topic, value, key=key, headers=list(headers))

    async def send_and_wait(self, topic: str, value: bytes, *, key: bytes | None, headers: Headers) -> RecordMetadata:
        fut = await self.send(topic, value, key=key, headers=headers)
        return await fut

    async def is_connected(self, timeout_s: float = 2.0) -> bool:
        """A metadata round trip: true only when a broker answers now."""
        client = self._producer.client
        try:
            return bool(await asyncio.wait_for(client.fetch_all_metadata(), timeout_s))
        except (KafkaError, OSError, TimeoutError):
            return False


def _hint(settings: Settings) -> str:
    # aiokafka reports a failed TLS handshake or SASL exchange only as "Unable to bootstrap"; name the usual causes.
    protocol = settings.kafka_security_protocol.strip().upper()
    hints = []
    if protocol in ("SSL", "SASL_SSL"):
        hints.append("does the broker listen with TLS there, signed by FLYWHEEL_KAFKA_SSL_CAFILE (or a system CA)?")
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        hints.append("are the SASL user and password known to the broker?")
    return f" ({' '.join(hints)})" if hints else ""
