"""A local certificate authority for `flywheel up --tls`: one CA, one server certificate that every
service presents (localhost, 127.0.0.1, ::1) and one client certificate per identity (the admin
and each service), under $FLYWHEEL_HOME/tls.

Files are reused across starts while they are valid (issued by the CA on disk, not within
RENEW_BEFORE of expiring, and for a server certificate naming the same hosts), so clients that
trust the CA keep trusting a restarted stack. Private keys are written readable by their owner only.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_DNS = ("localhost",)
SERVER_IPS = ("127.0.0.1", "::1")
CA_VALIDITY = timedelta(days=3650)
LEAF_VALIDITY = timedelta(days=397)  # what browsers accept for a leaf; nothing here needs longer
RENEW_BEFORE = timedelta(days=30)  # a certificate this close to expiry is issued again at start
_CLOCK_SKEW = timedelta(minutes=5)  # not-before a little in the past: other hosts' clocks differ
_Key = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class CertPair:
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class LocalPki:
    ca_file: Path
    server: CertPair
    clients: dict[str, CertPair]  # identity name -> its client certificate


def ensure_pki(directory: Path, client_names: list[str]) -> LocalPki:
    """The CA, the server certificate and a client certificate per name, reusing valid files."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    ca_key, ca_cert, ca_new = _ensure_ca(directory)
    server = _ensure_leaf(directory, "server", ca_key, ca_cert, server=True, force=ca_new)
    clients = {
        name: _ensure_leaf(directory, name, ca_key, ca_cert, server=False, force=ca_new) for name in client_names
    }
    return LocalPki(ca_file=directory / "ca.crt", server=server, clients=clients)


# -- the CA ------------------------------------------------------------------------------------------


def _ensure_ca(directory: Path) -> tuple[_Key, x509.Certificate, bool]:
    cert_file, key_file = directory / "ca.crt", directory / "ca.key"
    loaded = _load(cert_file, key_file)
    if loaded is not None:
        key, cert = loaded
        if _fresh(cert) and _is_ca(cert):
            return key, cert, False
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Flywheel local CA")])
    now = datetime.now(UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(cert_file, key_file, key, cert)
    return key, cert, True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


# -- leaf certificates -------------------------------------------------------------------------------


def _ensure_leaf(
    directory: Path, name: str, ca_key: _Key, ca_cert: x509.Certificate, *, server: bool, force: bool
) -> CertPair:
    pair = CertPair(directory / f"{name}.crt", directory / f"{name}.key")
    loaded = None if force else _load(pair.cert_file, pair.key_file)
    if loaded is not None and _reusable(loaded[1], ca_cert, name, server):
        return pair
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost" if server else name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(min(now + LEAF_VALIDITY, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(_server_names()), critical=False)
    else:
        # Clients are named in the SAN too: verifiers that ignore the subject still see who it is.
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"flywheel://{name}")]), critical=False
        )
    _write(pair.cert_file, pair.key_file, key, builder.sign(ca_key, hashes.SHA256()))
    return pair


def _server_names() -> list[x509.GeneralName]:
    return [x509.DNSName(d) for d in SERVER_DNS] + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in SERVER_IPS]


def _reusable(cert: x509.Certificate, ca_cert: x509.Certificate, name: str, server: bool) -> bool:
    if not _fresh(cert):
        return False
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    if server:
        return set(sans) == set(_server_names())
    return list(sans.get_values_for_type(x509.UniformResourceIdentifier)) == [f"flywheel://{name}"]


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


# -- files -------------------------------------------------------------------------------------------


def _fresh(cert: x509.Certificate) -> bool:
    now = datetime.now(UTC)
    return cert.not_valid_before_utc <= now and cert.not_valid_after_utc - RENEW_BEFORE > now


def _load(cert_file: Path, key_file: Path) -> tuple[_Key, x509.Certificate] | None:
    """The pair on disk, or None when missing, unreadable, not EC, or the key is not the cert's."""
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return None
    if key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        return None
    return key, cert


def _write(cert_file: Path, key_file: Path, key: _Key, cert: x509.Certificate) -> None:
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_private(key_file, key_pem)
    tmp = cert_file.with_name(cert_file.name + ".tmp")
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp, cert_file)


def write_private(path: Path, data: bytes) -> None:
    """Writes `data` readable by its owner only, atomically (never briefly readable by others)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o600)  # O_CREAT's mode only applies to a new file
    os.replace(tmp, path)
