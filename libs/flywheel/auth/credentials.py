"""What a client presents: a bearer token and, with TLS, the CA (and its own certificate for mTLS).

Explicit settings win (FLYWHEEL_AUTH_TOKEN, FLYWHEEL_TLS_*: services get their identity that way);
otherwise the CLI, the demo and the tests read `$FLYWHEEL_HOME/credentials`, which `flywheel up`
writes (mode 0600) with the admin token and the TLS files of the stack it started.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from flywheel.config import Settings


@dataclass(frozen=True)
class ClientCredentials:
    token: str | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    @property
    def tls(self) -> bool:
        return self.tls_ca_file is not None


def client_credentials(settings: Settings, *, saved_file: bool = True) -> ClientCredentials:
    """`saved_file=False` is for services: they call with their own identity from the environment
    and never fall back to the admin credential a local `flywheel up` leaves in FLYWHEEL_HOME."""
    saved = read_credentials(settings.credentials_file) if saved_file else ClientCredentials()
    return ClientCredentials(
        token=settings.auth_token or saved.token,
        tls_ca_file=settings.tls_ca_file or saved.tls_ca_file,
        tls_cert_file=settings.tls_client_cert_file or saved.tls_cert_file,
        tls_key_file=settings.tls_client_key_file or saved.tls_key_file,
    )


def read_credentials(path: Path) -> ClientCredentials:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return ClientCredentials()

    def file(key: str) -> Path | None:
        value = data.get(key)
        return Path(value) if isinstance(value, str) and value else None

    token = data.get("token")
    return ClientCredentials(
        token=token if isinstance(token, str) and token else None,
        tls_ca_file=file("tls_ca_file"),
        tls_cert_file=file("tls_cert_file"),
        tls_key_file=file("tls_key_file"),
    )


def write_credentials(path: Path, creds: ClientCredentials, **extra: str) -> None:
    """Writes the file readable by its owner only, atomically (never briefly world-readable)."""
    data: dict[str, str] = {k: v for k, v in extra.items() if v}
    if creds.token:
        data["token"] = creds.token
    for key in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
        value = getattr(creds, key)
        if value is not None:
            data[key] = str(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
