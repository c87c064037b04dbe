"""Runs `flywheel up` as a subprocess on free ports under a temporary FLYWHEEL_HOME, and makes
clients for it the way a user would: with the admin credentials `flywheel up` leaves in
$FLYWHEEL_HOME/credentials (the bearer token and, with --tls, the CA and client certificate)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import psutil
import tritonclient.grpc as triton

from flywheel.auth.credentials import ClientCredentials, read_credentials
from flywheel.config import SERVICES, Settings
from flywheel.grpc import sync_channel
from flywheel.stack.procs import free_port

FLYWHEEL = Path(sys.executable).parent / "flywheel"
_CALLER_CREDENTIALS = ("FLYWHEEL_AUTH_TOKEN", "FLYWHEEL_TLS_")


class UpProcess:
    def __init__(self, home: Path, *up_args: str, env: dict[str, str] | None = None) -> None:
        """`up_args` go to `flywheel up` (e.g. --tls); `env` adds to the stack's environment."""
        self.home = home
        self.up_args = up_args
        self.ports = {name: free_port() for name in SERVICES}
        # A developer's own credentials in the environment must not stand in for the stack's.
        inherited = {k: v for k, v in os.environ.items() if not k.upper().startswith(_CALLER_CREDENTIALS)}
        self.env = {
            **inherited,
            "FLYWHEEL_HOME": str(home),
            "FLYWHEEL_PG_PORT": str(free_port()),
            "FLYWHEEL_BROKER_PORT": str(free_port()),
            **{f"FLYWHEEL_{n.upper()}_PORT": str(p) for n, p in self.ports.items()},
            **(env or {}),
        }
        self.output = home / "up.out"
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.env['FLYWHEEL_BROKER_PORT']}"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.env['FLYWHEEL_PG_PORT']}/flywheel"

    def address(self, service: str) -> str:
        return f"127.0.0.1:{self.ports[service]}"

    # -- credentials and clients ---------------------------------------------------------------------

    @property
    def credentials(self) -> ClientCredentials:
        """The admin's, as `flywheel up` wrote them (read afresh: a restarted stack may renew them)."""
        creds = read_credentials(self.home / "credentials")
        assert creds.token, f"flywheel up left no admin token in {self.home / 'credentials'}"
        return creds

    @property
    def token(self) -> str:
        return str(self.credentials.token)

    @property
    def headers(self) -> dict[str, str]:
        """For tritonclient calls: `headers=stack.headers`."""
        return {"authorization": f"Bearer {self.token}"}

    @property
    def metadata(self) -> list[tuple[str, str]]:
        """For raw gRPC calls on a channel without credentials."""
        return [("authorization", f"Bearer {self.token}")]

    def settings(self, **overrides: object) -> Settings:
        """Client settings for this stack: its home (so its credentials file) and its addresses."""
        base: dict[str, object] = {
            "home": self.home,
            **{f"{n}_addr": self.address(n) for n in SERVICES},
            # Explicit settings win over the credentials file: none from this process's environment.
            "auth_token": None,
            "tls_ca_file": None,
            "tls_client_cert_file": None,
            "tls_client_key_file": None,
        }
        base.update(overrides)
        return Settings(**base)  # type: ignore[arg-type]

    def channel(self, service: str, **settings: object) -> grpc.Channel:
        """A blocking channel to `service` with the admin token (and TLS when the stack has it),
        made by flywheel.grpc exactly as the CLI makes its channels."""
        return sync_channel(self.settings(**settings), service)

    def triton(self, creds: ClientCredentials | None = None) -> triton.InferenceServerClient:
        """tritonclient for serving; over TLS with the stack's CA (and client certificate, for mTLS).
        Calls still need `headers=`: tritonclient has no per-client headers."""
        c = creds or self.credentials
        return triton.InferenceServerClient(
            self.address("serving"),
            ssl=c.tls,
            root_certificates=str(c.tls_ca_file) if c.tls_ca_file else None,
            private_key=str(c.tls_key_file) if c.tls_key_file else None,
            certificate_chain=str(c.tls_cert_file) if c.tls_cert_file else None,
        )

    def start(self, timeout_s: float = 120) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        with self.output.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(FLYWHEEL), "up", *self.up_args], env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if "ready" in self.output.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"flywheel up exited {self.proc.returncode}:\n{self.output.read_text()}")
            time.sleep(0.3)
        raise AssertionError(f"flywheel up not ready after {timeout_s}s:\n{self.output.read_text()}")

    def cli(self, *args: str, timeout_s: float = 60, token: str | None = None) -> subprocess.CompletedProcess[str]:
        """The CLI against this stack: FLYWHEEL_HOME is the stack's, so it reads the admin credentials
        `flywheel up` wrote, unless `token` (FLYWHEEL_AUTH_TOKEN) says who else is calling."""
        env = {**self.env, "FLYWHEEL_AUTH_TOKEN": token} if token else self.env
        return subprocess.run([str(FLYWHEEL), *args], env=env, capture_output=True, text=True, timeout=timeout_s)

    def descendants(self) -> list[psutil.Process]:
        """Every process that belongs to this stack: children of `flywheel up`, or using its home."""
        found = []
        for p in psutil.process_iter(["pid", "cmdline", "environ"]):
            try:
                cmd = " ".join(p.info["cmdline"] or [])
                env = p.info["environ"] or {}
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if p.pid == os.getpid():
                continue
            if str(self.home) in cmd or env.get("FLYWHEEL_HOME") == str(self.home):
                found.append(p)
        return found

    def interrupt(self, timeout_s: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)  # what Ctrl-C does
        return self.proc.wait(timeout_s)

    def kill_all(self) -> None:
        for p in self.descendants():
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
