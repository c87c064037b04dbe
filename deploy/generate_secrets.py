#!/usr/bin/env python3
"""Secrets for the secured Compose stack: a private CA, TLS certificates, passwords and env files.

    .venv/bin/python deploy/generate_secrets.py           # writes deploy/secrets/ (ignored by git)
    .venv/bin/python deploy/generate_secrets.py --force   # replaces everything (then `docker compose down -v`)

It needs only `cryptography`, a Flywheel dependency. What it writes (see deploy/README.md):

    ca.crt, ca.key                     the CA every client trusts (keep ca.key offline once done)
    grpc/<service>.crt|.key            each service's gRPC server certificate (<service>, localhost, 127.0.0.1)
    postgres/server.crt|.key           PostgreSQL's server certificate (postgres, localhost, 127.0.0.1)
    kafka/                             the broker's PKCS#12 keystore and truststore with their password
                                       files, as the apache/kafka image expects them, and the kafka-admin
                                       client keystore (mTLS on the admin listener) with admin.properties
    compose.env                        what docker-compose.yml interpolates (POSTGRES_PASSWORD, the
                                       superuser's; GRAFANA_ADMIN_PASSWORD): export
                                       COMPOSE_ENV_FILES=deploy/secrets/compose.env
    env/postgres.env                   the database password of the migration owner (flywheel_migrator)
                                       and of every service role, for deploy/postgres/init-roles.sh
    env/migrate.env                    the migration owner's DSN, for `flywheel migrate` (service migrate)
    env/kafka-users.env                the SCRAM-SHA-512 password of every Kafka user
    env/<service>.env                  the service's DSN (its DML-only role, sslmode=verify-full) and its
                                       Kafka user
    env/producer.env                   Kafka settings for an outside producer on the host
    tokens/<service>.env               FLYWHEEL_AUTH_TOKEN, filled by deploy/mint-tokens.sh

Everything is written readable by its owner only; deploy/secrets-init.sh copies each file into the
volume of the one container that needs it, owned by that container's user.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVICES = ("ingestion", "training", "registry", "serving", "monitoring")
KAFKA_USERS = (*(f"svc-{s}" for s in SERVICES), "producer")  # producer: an outside team's producer
# The one role with DDL rights (deploy/postgres/roles.sql): only `flywheel migrate` connects as it.
MIGRATOR = "migrator"
DATABASE = "flywheel"
CA_DAYS, LEAF_DAYS = 3650, 825
DEFAULT_OUT = Path(__file__).resolve().parent / "secrets"
_KEY = ec.EllipticCurvePrivateKey


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"where to write (default {DEFAULT_OUT})")
    parser.add_argument("--force", action="store_true", help="replace existing secrets (new CA and passwords)")
    args = parser.parse_args(argv)
    if (args.out / "ca.crt").exists() and not args.force:
        print(f"{args.out} already holds secrets; nothing to do (--force replaces them all)", file=sys.stderr)
        return 0
    generate(args.out)
    print(
        f"secrets written to {args.out}; next: export COMPOSE_ENV_FILES={args.out / 'compose.env'},"
        " docker compose up -d postgres, then deploy/mint-tokens.sh"
    )
    return 0


def generate(out: Path) -> None:
    """The whole layout described above, under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    ca_key, ca = issue_ca(out)
    for service in SERVICES:
        issue_leaf(out / "grpc", service, ca_key, ca, hosts=(service, "localhost", "127.0.0.1"), server=True)
    issue_leaf(out / "postgres", "server", ca_key, ca, hosts=("postgres", "localhost", "127.0.0.1"), server=True)
    kafka_files(out / "kafka", ca_key, ca)
    env_files(out)


# -- certificates -------------------------------------------------------------------------------------


def issue_ca(out: Path, name: str = "Flywheel deployment CA") -> tuple[_KEY, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(out / "ca.crt", cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(out / "ca.key", _pem_key(key), 0o600)
    return key, cert


def issue_leaf(
    directory: Path,
    name: str,
    ca_key: _KEY,
    ca: x509.Certificate,
    *,
    hosts: tuple[str, ...] = (),
    server: bool = False,
    client: bool = False,
    write: bool = True,
) -> tuple[_KEY, x509.Certificate]:
    """A certificate for `name` signed by the CA; written as <name>.crt and <name>.key when `write`."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
    usages += [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        # The EKU limits what a stolen key can pass for: a server certificate is no client identity.
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    if write:
        _write(directory / f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM), 0o644)
        _write(directory / f"{name}.key", _pem_key(key), 0o600)
    return key, cert


def kafka_files(directory: Path, ca_key: _KEY, ca: x509.Certificate) -> None:
    """PKCS#12 stores for the apache/kafka image: it reads them from /etc/kafka/secrets by file name, with
    their passwords from files (KAFKA_SSL_KEYSTORE_FILENAME, KAFKA_SSL_KEYSTORE_CREDENTIALS, ...)."""
    password = secrets.token_hex(24)
    encryption = serialization.BestAvailableEncryption(password.encode())
    # The broker's certificate also authenticates it as a client on its own admin listener (inter-broker).
    key, cert = issue_leaf(
        directory, "kafka", ca_key, ca, hosts=("kafka", "localhost", "127.0.0.1"), server=True, client=True, write=False
    )
    keystore = pkcs12.serialize_key_and_certificates(b"kafka", key, cert, [ca], encryption)
    _write(directory / "kafka.keystore.p12", keystore)
    truststore = pkcs12.serialize_java_truststore([pkcs12.PKCS12Certificate(ca, b"flywheel-ca")], encryption)
    _write(directory / "kafka.truststore.p12", truststore)
    admin_key, admin = issue_leaf(directory, "kafka-admin", ca_key, ca, client=True, write=False)
    _write(
        directory / "admin.keystore.p12",
        pkcs12.serialize_key_and_certificates(b"kafka-admin", admin_key, admin, [ca], encryption),
    )
    for name in ("keystore_creds", "key_creds", "truststore_creds"):
        _write(directory / name, password.encode())
    admin_properties = f"""\
# Kafka CLI tools (kafka-acls.sh, kafka-configs.sh) as the super user kafka-admin, over the mTLS admin listener.
security.protocol=SSL
ssl.keystore.type=PKCS12
ssl.keystore.location=/etc/kafka/secrets/admin.keystore.p12
ssl.keystore.password={password}
ssl.key.password={password}
ssl.truststore.type=PKCS12
ssl.truststore.location=/etc/kafka/secrets/kafka.truststore.p12
ssl.truststore.password={password}
"""
    _write(directory / "admin.properties", admin_properties.encode())


# -- passwords and env files --------------------------------------------------------------------------


def env_files(out: Path) -> None:
    db_passwords = {r: secrets.token_hex(24) for r in (MIGRATOR, *SERVICES)}
    kafka_passwords = {u: secrets.token_hex(24) for u in KAFKA_USERS}
    # Compose interpolates these (${POSTGRES_PASSWORD:?...}): required, with no default in the file.
    _env(
        out / "compose.env",
        {"POSTGRES_PASSWORD": secrets.token_hex(24), "GRAFANA_ADMIN_PASSWORD": secrets.token_hex(16)},
    )
    _env(out / "env" / "postgres.env", {f"FLYWHEEL_DB_PASSWORD_{r.upper()}": pw for r, pw in db_passwords.items()})
    _env(out / "env" / "migrate.env", {"FLYWHEEL_DATABASE_URL": _dsn(MIGRATOR, db_passwords[MIGRATOR])})
    _env(
        out / "env" / "kafka-users.env",
        {f"SCRAM_PASSWORD_{u.upper().replace('-', '_')}": pw for u, pw in kafka_passwords.items()},
    )
    for service in SERVICES:
        user = f"svc-{service}"
        _env(
            out / "env" / f"{service}.env",
            {
                "FLYWHEEL_DATABASE_URL": _dsn(service, db_passwords[service]),
                "FLYWHEEL_KAFKA_SASL_USERNAME": user,
                "FLYWHEEL_KAFKA_SASL_PASSWORD": kafka_passwords[user],
            },
        )
        token_file = out / "tokens" / f"{service}.env"
        if not token_file.exists():  # minted into the database by deploy/mint-tokens.sh, never here
            _write(token_file, b"# FLYWHEEL_AUTH_TOKEN is written here by deploy/mint-tokens.sh\n")
    _env(
        out / "env" / "producer.env",
        {
            "FLYWHEEL_KAFKA_BOOTSTRAP": "localhost:29092",
            "FLYWHEEL_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "FLYWHEEL_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "FLYWHEEL_KAFKA_SASL_USERNAME": "producer",
            "FLYWHEEL_KAFKA_SASL_PASSWORD": kafka_passwords["producer"],
            "FLYWHEEL_KAFKA_SSL_CAFILE": str((out / "ca.crt").resolve()),
        },
    )


# -- helpers ------------------------------------------------------------------------------------------


def _dsn(role: str, password: str) -> str:
    """The Compose network's PostgreSQL as flywheel_<role>, over TLS with the host name checked."""
    return (
        f"postgresql://flywheel_{role}:{password}@postgres:5432/{DATABASE}"
        "?sslmode=verify-full&sslrootcert=/certs/ca.crt"
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _pem_key(key: _KEY) -> bytes:
    encoding, unencrypted = serialization.Encoding.PEM, serialization.NoEncryption()
    return key.private_bytes(encoding, serialization.PrivateFormat.PKCS8, unencrypted)


def _env(path: Path, values: dict[str, str]) -> None:
    _write(path, "".join(f"{k}={v}\n" for k, v in values.items()).encode())


def _write(path: Path, data: bytes, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    # Created with its final mode, so a secret is never readable by others, not even for a moment.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


if __name__ == "__main__":
    sys.exit(main())
