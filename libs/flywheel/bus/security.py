"""Kafka client security: the one place that turns the `kafka_*` settings into aiokafka arguments.

Every producer, consumer and admin client the library creates is built with `**kafka_security(settings)`,
so a process talks to the broker one way. Settings that cannot work together are refused here, at
start-up, with the setting to fix, rather than surfacing later as a broker that "cannot be reached".
Certificates are always verified: against `kafka_ssl_cafile` when set, else the system's trust store
(a broker with a public certificate, as managed services have). There is no switch to skip it.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TypedDict

from aiokafka.helpers import create_ssl_context

from flywheel.config import Settings
from flywheel.errors import StartupError

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_TLS = ("SSL", "SASL_SSL")
_SASL = ("SASL_PLAINTEXT", "SASL_SSL")


class KafkaSecurity(TypedDict, total=False):
    """Keyword arguments shared by AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaAdminClient."""

    security_protocol: str
    ssl_context: ssl.SSLContext
    sasl_mechanism: str
    sasl_plain_username: str
    sasl_plain_password: str


def kafka_security(settings: Settings) -> KafkaSecurity:
    """The security arguments for a Kafka client of this process; StartupError when the settings are unusable."""
    protocol = settings.kafka_security_protocol.strip().upper()
    if protocol not in PROTOCOLS:
        given = settings.kafka_security_protocol
        raise StartupError(f"FLYWHEEL_KAFKA_SECURITY_PROTOCOL={given!r} is not one of {', '.join(PROTOCOLS)}")
    security = KafkaSecurity(security_protocol=protocol)
    if protocol in _TLS:
        security["ssl_context"] = _ssl_context(settings)
    else:
        _refuse_unused(
            protocol,
            "SSL or SASL_SSL",
            FLYWHEEL_KAFKA_SSL_CAFILE=settings.kafka_ssl_cafile,
            FLYWHEEL_KAFKA_SSL_CERTFILE=settings.kafka_ssl_certfile,
            FLYWHEEL_KAFKA_SSL_KEYFILE=settings.kafka_ssl_keyfile,
        )
    if protocol in _SASL:
        security.update(_sasl(settings, protocol))
    else:
        _refuse_unused(
            protocol,
            "SASL_PLAINTEXT or SASL_SSL",
            FLYWHEEL_KAFKA_SASL_MECHANISM=settings.kafka_sasl_mechanism,
            FLYWHEEL_KAFKA_SASL_USERNAME=settings.kafka_sasl_username,
            FLYWHEEL_KAFKA_SASL_PASSWORD=settings.kafka_sasl_password,
        )
    return security


def describe(settings: Settings) -> str:
    """How this process connects, without secrets, for error lines: "SASL_SSL (SCRAM-SHA-512 as svc-serving)"."""
    protocol = settings.kafka_security_protocol.strip().upper()
    if protocol in _SASL and settings.kafka_sasl_mechanism:
        return f"{protocol} ({settings.kafka_sasl_mechanism.upper()} as {settings.kafka_sasl_username})"
    return protocol


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    cafile, certfile, keyfile = settings.kafka_ssl_cafile, settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile
    if keyfile is not None and certfile is None:
        raise StartupError(
            "FLYWHEEL_KAFKA_SSL_KEYFILE is set without FLYWHEEL_KAFKA_SSL_CERTFILE (the client certificate)"
        )
    for name, path in (
        ("FLYWHEEL_KAFKA_SSL_CAFILE", cafile),
        ("FLYWHEEL_KAFKA_SSL_CERTFILE", certfile),
        ("FLYWHEEL_KAFKA_SSL_KEYFILE", keyfile),
    ):
        if path is not None and not Path(path).is_file():
            raise StartupError(f"{name}={path}: no such file")
    try:
        # create_default_context underneath: CERT_REQUIRED and hostname checking, which stay on.
        return create_ssl_context(cafile=cafile, certfile=certfile, keyfile=keyfile)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise StartupError(
            f"cannot load the Kafka TLS files (FLYWHEEL_KAFKA_SSL_CAFILE={cafile}, "
            f"FLYWHEEL_KAFKA_SSL_CERTFILE={certfile}, FLYWHEEL_KAFKA_SSL_KEYFILE={keyfile}): {exc}"
        ) from exc


def _sasl(settings: Settings, protocol: str) -> KafkaSecurity:
    mechanism = (settings.kafka_sasl_mechanism or "").strip().upper()
    if not mechanism:
        raise StartupError(
            f"FLYWHEEL_KAFKA_SECURITY_PROTOCOL={protocol} needs FLYWHEEL_KAFKA_SASL_MECHANISM ({', '.join(MECHANISMS)})"
        )
    if mechanism not in MECHANISMS:
        raise StartupError(
            f"FLYWHEEL_KAFKA_SASL_MECHANISM={settings.kafka_sasl_mechanism!r} is not one of {', '.join(MECHANISMS)}"
        )
    missing = [
        name
        for name, value in (
            ("FLYWHEEL_KAFKA_SASL_USERNAME", settings.kafka_sasl_username),
            ("FLYWHEEL_KAFKA_SASL_PASSWORD", settings.kafka_sasl_password),
        )
        if not value
    ]
    if missing:
        raise StartupError(f"SASL ({mechanism}) needs {' and '.join(missing)}")
    assert settings.kafka_sasl_username is not None and settings.kafka_sasl_password is not None
    return KafkaSecurity(
        sasl_mechanism=mechanism,
        sasl_plain_username=settings.kafka_sasl_username,
        sasl_plain_password=settings.kafka_sasl_password,
    )


def _refuse_unused(protocol: str, needs: str, **values: object) -> None:
    # Credentials or certificates that the chosen protocol would silently ignore are a misconfiguration:
    # the operator meant the connection to be authenticated or encrypted, and it would not be.
    given = [name for name, value in values.items() if value]
    if given:
        raise StartupError(
            f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} set but FLYWHEEL_KAFKA_SECURITY_PROTOCOL"
            f"={protocol} does not use {'it' if len(given) == 1 else 'them'}; set the protocol to {needs}"
        )
