"""Kafka client security from settings: what each protocol/mechanism gives aiokafka, what is refused at
start, that every client the library builds carries it, and the Compose stack's ACLs.

The embedded broker (tansu 0.6.0) cannot serve TLS or usable SASL (see tests/integration/test_kafka_tls.py,
which runs the TLS path for real through a TLS terminator), so these are configuration tests.
"""

from __future__ import annotations

import importlib.util
import ssl
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from flywheel.bus import groups, outbox, producer, topics
from flywheel.bus.security import MECHANISMS, PROTOCOLS, kafka_security
from flywheel.bus.topics import Topics, all_topics, dlq_topic
from flywheel.config import Settings
from flywheel.errors import StartupError
from flywheel.stack.procs import free_port

ROOT = Path(__file__).resolve().parents[2]


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_secrets", ROOT / "deploy" / "generate_secrets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a client certificate it signed, and a key that belongs to neither."""
    out = tmp_path_factory.mktemp("kafka-pki")
    generator = load_generator()
    ca_key, ca = generator.issue_ca(out)
    generator.issue_leaf(out, "client", ca_key, ca, client=True)
    generator.issue_leaf(out, "stranger", ca_key, ca, client=True)
    return {
        "ca": out / "ca.crt",
        "cert": out / "client.crt",
        "key": out / "client.key",
        "other_key": out / "stranger.key",
    }


def ca_names(context: ssl.SSLContext) -> list[str]:
    """The common names of the CAs a context trusts (those loaded from files; the system's load lazily)."""
    names = []
    for cert in context.get_ca_certs():
        for rdn in cert["subject"]:
            names += [str(pair[1]) for pair in rdn if pair[0] == "commonName"]
    return names


def settings(**values: Any) -> Settings:
    return Settings(**values)


def sasl(mechanism: str = "SCRAM-SHA-512") -> dict[str, str]:
    return {"kafka_sasl_mechanism": mechanism, "kafka_sasl_username": "svc-serving", "kafka_sasl_password": "s3cret"}


# -- what each combination gives aiokafka ---------------------------------------------------------------


def test_plaintext_is_the_default() -> None:
    assert kafka_security(settings()) == {"security_protocol": "PLAINTEXT"}


def test_ssl_verifies_the_broker_against_the_ca(pki: dict[str, Path]) -> None:
    security = kafka_security(settings(kafka_security_protocol="SSL", kafka_ssl_cafile=pki["ca"]))
    assert set(security) == {"security_protocol", "ssl_context"}
    assert security["security_protocol"] == "SSL"
    context = security["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert ca_names(context) == ["Flywheel deployment CA"]


def test_ssl_without_a_ca_file_still_verifies_with_the_system_store() -> None:
    # A broker with a publicly trusted certificate (managed Kafka) needs no CA file; nothing turns verification off.
    context = kafka_security(settings(kafka_security_protocol="SSL"))["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert "Flywheel deployment CA" not in ca_names(context)


def test_ssl_with_a_client_certificate(pki: dict[str, Path]) -> None:
    security = kafka_security(
        settings(
            kafka_security_protocol="SSL",
            kafka_ssl_cafile=pki["ca"],
            kafka_ssl_certfile=pki["cert"],
            kafka_ssl_keyfile=pki["key"],
        )
    )
    assert isinstance(security["ssl_context"], ssl.SSLContext)


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_sasl_plaintext(mechanism: str) -> None:
    security = kafka_security(settings(kafka_security_protocol="SASL_PLAINTEXT", **sasl(mechanism)))
    assert security == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": "svc-serving",
        "sasl_plain_password": "s3cret",
    }


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_sasl_ssl(mechanism: str, pki: dict[str, Path]) -> None:
    security = kafka_security(
        settings(kafka_security_protocol="SASL_SSL", kafka_ssl_cafile=pki["ca"], **sasl(mechanism))
    )
    assert set(security) == {
        "security_protocol",
        "ssl_context",
        "sasl_mechanism",
        "sasl_plain_username",
        "sasl_plain_password",
    }
    assert (security["security_protocol"], security["sasl_mechanism"]) == ("SASL_SSL", mechanism)
    assert security["ssl_context"].verify_mode == ssl.CERT_REQUIRED


def test_names_are_case_insensitive(pki: dict[str, Path]) -> None:
    security = kafka_security(
        settings(kafka_security_protocol=" sasl_ssl ", kafka_ssl_cafile=pki["ca"], **sasl("scram-sha-256"))
    )
    assert (security["security_protocol"], security["sasl_mechanism"]) == ("SASL_SSL", "SCRAM-SHA-256")


def test_every_protocol_is_covered() -> None:
    assert PROTOCOLS == ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
    assert MECHANISMS == ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


# -- refused at start, naming the setting to fix --------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"kafka_security_protocol": "TLS"}, "FLYWHEEL_KAFKA_SECURITY_PROTOCOL='TLS' is not one of"),
        (
            {"kafka_security_protocol": "SASL_SSL", **sasl("GSSAPI")},
            "FLYWHEEL_KAFKA_SASL_MECHANISM='GSSAPI' is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512",
        ),
        ({"kafka_security_protocol": "SASL_PLAINTEXT", **sasl("SCRAM-SHA-1")}, "'SCRAM-SHA-1' is not one of"),
        (
            {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_username": "u", "kafka_sasl_password": "p"},
            "FLYWHEEL_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs FLYWHEEL_KAFKA_SASL_MECHANISM",
        ),
        (
            {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "SCRAM-SHA-512"},
            "SASL (SCRAM-SHA-512) needs FLYWHEEL_KAFKA_SASL_USERNAME and FLYWHEEL_KAFKA_SASL_PASSWORD",
        ),
        (
            {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "PLAIN", "kafka_sasl_username": "u"},
            "SASL (PLAIN) needs FLYWHEEL_KAFKA_SASL_PASSWORD",
        ),
        (
            {**sasl()},  # credentials the PLAINTEXT protocol would silently not send
            "FLYWHEEL_KAFKA_SASL_MECHANISM, FLYWHEEL_KAFKA_SASL_USERNAME, FLYWHEEL_KAFKA_SASL_PASSWORD are set but"
            " FLYWHEEL_KAFKA_SECURITY_PROTOCOL=PLAINTEXT does not use them; set the protocol to SASL_PLAINTEXT or"
            " SASL_SSL",
        ),
        (
            {"kafka_security_protocol": "SSL", "kafka_sasl_mechanism": "PLAIN"},
            "FLYWHEEL_KAFKA_SASL_MECHANISM is set but FLYWHEEL_KAFKA_SECURITY_PROTOCOL=SSL does not use it",
        ),
        (
            {"kafka_ssl_cafile": "/etc/ssl/ca.pem"},  # a CA meant to be used, over a plaintext connection
            "FLYWHEEL_KAFKA_SSL_CAFILE is set but FLYWHEEL_KAFKA_SECURITY_PROTOCOL=PLAINTEXT does not use it;"
            " set the protocol to SSL or SASL_SSL",
        ),
        (
            {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_ssl_cafile": "/etc/ssl/ca.pem", **sasl()},
            "FLYWHEEL_KAFKA_SSL_CAFILE is set but FLYWHEEL_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT does not use it",
        ),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "/nonexistent/ca.pem"},
            "FLYWHEEL_KAFKA_SSL_CAFILE=/nonexistent/ca.pem: no such file",
        ),
    ],
)
def test_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(StartupError) as refused:
        kafka_security(settings(**values))
    assert message in str(refused.value)
    assert "s3cret" not in str(refused.value)


def test_key_without_certificate_is_refused(pki: dict[str, Path]) -> None:
    with pytest.raises(StartupError, match="FLYWHEEL_KAFKA_SSL_KEYFILE is set without FLYWHEEL_KAFKA_SSL_CERTFILE"):
        kafka_security(
            settings(kafka_security_protocol="SSL", kafka_ssl_cafile=pki["ca"], kafka_ssl_keyfile=pki["key"])
        )


def test_key_of_another_certificate_is_refused(pki: dict[str, Path]) -> None:
    with pytest.raises(StartupError, match="cannot load the Kafka TLS files"):
        kafka_security(
            settings(
                kafka_security_protocol="SSL",
                kafka_ssl_cafile=pki["ca"],
                kafka_ssl_certfile=pki["cert"],
                kafka_ssl_keyfile=pki["other_key"],
            )
        )


def test_a_ca_file_that_is_no_certificate_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(StartupError, match="cannot load the Kafka TLS files"):
        kafka_security(settings(kafka_security_protocol="SSL", kafka_ssl_cafile=junk))


# -- every client the library builds carries it --------------------------------------------------------


class Captured:
    """Stands in for an aiokafka client class and records the keyword arguments it was built with."""

    calls: list[dict[str, Any]]

    def __init__(self) -> None:
        self.calls = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        return _Client()


class _Client:
    async def start(self) -> None:
        raise ConnectionError("captured: not started")

    async def close(self) -> None:
        return None

    async def stop(self) -> None:
        return None


@pytest.fixture
def secured(pki: dict[str, Path]) -> Settings:
    return settings(kafka_security_protocol="SASL_SSL", kafka_ssl_cafile=pki["ca"], **sasl())


def assert_secured(kwargs: dict[str, Any]) -> None:
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("svc-serving", "s3cret")
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)


def test_the_producer_is_secured(secured: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    captured = Captured()
    monkeypatch.setattr(producer, "AIOKafkaProducer", captured)
    producer.EventProducer(secured, client_id="flywheel-test")
    assert_secured(captured.calls[0])


def test_group_consumers_are_secured(secured: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    # EventConsumer and BatchConsumer both build their consumer here.
    captured = Captured()
    monkeypatch.setattr(groups, "AIOKafkaConsumer", captured)
    groups.group_consumer(secured, "flywheel-test", Topics.MODEL_PROMOTED)
    assert_secured(captured.calls[0])


async def test_topic_creation_is_secured(secured: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    captured = Captured()
    monkeypatch.setattr(topics, "AIOKafkaAdminClient", captured)
    with pytest.raises(ConnectionError):
        await topics.ensure_topics(
            secured.kafka_bootstrap,
            all_topics(),
            partitions=1,
            replication_factor=1,
            security=kafka_security(secured),
        )
    assert_secured(captured.calls[0])


async def test_the_relay_recreates_topics_securely(secured: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    captured = Captured()
    monkeypatch.setattr(topics, "AIOKafkaAdminClient", captured)
    relay = outbox.OutboxRelay(pool=None, producer=None, settings=secured)  # type: ignore[arg-type]
    await relay._recreate_topics()  # logs the failed start; what matters is how the client was built
    assert_secured(captured.calls[0])


def test_bad_settings_stop_the_producer_from_being_built() -> None:
    with pytest.raises(StartupError, match="needs FLYWHEEL_KAFKA_SASL_MECHANISM"):
        producer.EventProducer(settings(kafka_security_protocol="SASL_SSL"), client_id="flywheel-test")


async def test_an_unreachable_secured_broker_is_one_clear_line(pki: dict[str, Path]) -> None:
    port = free_port()
    secured = settings(
        kafka_bootstrap=f"127.0.0.1:{port}",
        kafka_security_protocol="SASL_SSL",
        kafka_ssl_cafile=pki["ca"],
        connect_timeout_s=3.0,
        **sasl(),
    )
    with pytest.raises(StartupError) as refused:
        await producer.EventProducer(secured, client_id="flywheel-test").start()
    message = str(refused.value)
    assert message.startswith(
        f"cannot reach Kafka broker at 127.0.0.1:{port} over SASL_SSL (SCRAM-SHA-512 as svc-serving): "
    ), message
    assert "FLYWHEEL_KAFKA_SSL_CAFILE" in message and "s3cret" not in message


# -- the Compose stack's ACLs (deploy/kafka/acls.txt) ---------------------------------------------------

EXTERNAL = {Topics.INGEST_RECORDS, Topics.FEEDBACK}  # what outside producers may write
# Flywheel's own topics (EVENT_TYPES may also hold a test harness's extra ones) and their dead-letter topics.
EVENTS = {value for name, value in vars(Topics).items() if name.isupper()}
TOPICS = EVENTS | {dlq_topic(t) for t in EVENTS}


def acl_entries() -> list[tuple[str, set[str], str, str, list[str]]]:
    entries = []
    for line in (ROOT / "deploy" / "kafka" / "acls.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            principal, operations, resource, pattern, *names = line.split()
            entries.append((principal, set(operations.split(",")), resource, pattern, names))
    return entries


def writers(topic: str) -> set[str]:
    return {
        principal
        for principal, operations, resource, pattern, names in acl_entries()
        if resource == "topic"
        and operations & {"Write", "All"}
        and any(topic == n if pattern == "literal" else topic.startswith(n) for n in names)
    }


def test_acls_name_only_real_topics_and_groups() -> None:
    assert TOPICS <= set(all_topics())
    for principal, operations, resource, pattern, names in acl_entries():
        assert resource in ("topic", "group"), principal
        assert pattern in ("literal", "prefixed"), principal
        assert operations <= {"Read", "Write", "Create", "Describe"}, (principal, operations)
        if resource == "topic" and pattern == "literal":
            assert set(names) <= TOPICS, (principal, set(names) - TOPICS)
        if resource == "group":
            assert names == [f"flywheel-{principal.removeprefix('svc-')}"], (principal, names)


def test_only_service_identities_write_internal_topics() -> None:
    for topic in sorted(TOPICS):
        if topic in EXTERNAL:
            continue
        assert writers(topic), f"nobody may write {topic}"
        assert all(p.startswith("svc-") for p in writers(topic)), (topic, writers(topic))


def test_outside_producers_write_only_ingest_records_and_feedback() -> None:
    outsiders = {p for p, *_ in acl_entries() if not p.startswith("svc-")}
    assert "producer" in outsiders
    for principal in outsiders:
        assert {t for t in TOPICS if principal in writers(t)} <= EXTERNAL, principal
        for p, operations, resource, pattern, _names in acl_entries():
            if p == principal:  # writing (and describing) named topics is all an outsider may do
                assert (resource, pattern) == ("topic", "literal") and operations <= {"Write", "Describe"}, p
    assert {t for t in TOPICS if "producer" in writers(t)} == EXTERNAL


def test_each_event_has_its_one_producing_service() -> None:
    # From docs/architecture.md, "Topics and events": who publishes each topic.
    producers = {
        Topics.DATA_VERSIONED: "svc-ingestion",
        Topics.MODEL_REGISTERED: "svc-registry",
        Topics.MODEL_PROMOTED: "svc-registry",
        Topics.DRIFT_DETECTED: "svc-monitoring",
        Topics.PREDICTIONS_LOGGED: "svc-serving",
        Topics.DEPLOYMENT_CHANGED: "svc-serving",
        Topics.ROLLOUT_ENDED: "svc-registry",
    }
    assert set(producers) | EXTERNAL == EVENTS
    for topic, service in producers.items():
        assert writers(topic) == {service}, (topic, writers(topic))
