"""Runs `flywheel up` as a subprocess on free ports under a temporary FLYWHEEL_HOME, and makes
clients for it the way a user would: with the admin credentials `flywheel up` leaves in
$FLYWHEEL_HOME/credentials (the bearer token and, with --tls, the CA and client certificate).

With `--replicas` among the arguments, every replica gets a free port too; `address(service)` stays
replica 0's, `addresses(service)` lists them all, and clients (`channel`, `settings`, `triton`, the
CLI) balance over every replica, as `flywheel up` hands them out."""

from __future__ import annotations

import asyncio
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
from flywheel.grpc.channels import tritonclient_args
from flywheel.stack.health import grpc_serving
from flywheel.stack.procs import free_port, pid_alive, port_open
from flywheel.stack.replicas import parse_counts
from flywheel.stack.up import read_state

FLYWHEEL = Path(sys.executable).parent / "flywheel"
_CALLER_CREDENTIALS = ("FLYWHEEL_AUTH_TOKEN", "FLYWHEEL_TLS_")


class UpProcess:
    def __init__(self, home: Path, *up_args: str, env: dict[str, str] | None = None) -> None:
        """`up_args` go to `flywheel up` (e.g. --tls); `env` adds to the stack's environment."""
        self.home = home
        self.up_args = up_args
        self.replicas = parse_counts(_replica_args(up_args))
        step = 97  # replica i listens on replica 0's port + i x step; every one is checked free below
        self.replica_ports = _free_replica_ports(self.replicas, step)
        self.ports = {name: ports[0] for name, ports in self.replica_ports.items()}  # replica 0's
        # A developer's own credentials in the environment must not stand in for the stack's.
        inherited = {k: v for k, v in os.environ.items() if not k.upper().startswith(_CALLER_CREDENTIALS)}
        self.env = {
            **inherited,
            "FLYWHEEL_HOME": str(home),
            "FLYWHEEL_PG_PORT": str(free_port()),
            "FLYWHEEL_BROKER_PORT": str(free_port()),
            **{f"FLYWHEEL_{n.upper()}_PORT": str(p) for n, p in self.ports.items()},
            "FLYWHEEL_REPLICA_PORT_STEP": str(step),
            # One serving process, as the tests were written for; tests/e2e/test_serving_workers.py
            # runs the worker pool (the default elsewhere: one worker per core).
            "FLYWHEEL_SERVING_WORKERS": "1",
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
        """Replica 0's address: one process, as with a one-replica stack."""
        return f"127.0.0.1:{self.ports[service]}"

    def addresses(self, service: str) -> list[str]:
        """Every replica's address, replica 0 first."""
        return [f"127.0.0.1:{p}" for p in self.replica_ports[service]]

    def target(self, service: str) -> str:
        """What FLYWHEEL_<SERVICE>_ADDR says for this stack: every replica, comma-separated."""
        return ",".join(self.addresses(service))

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
            **{f"{n}_addr": self.target(n) for n in SERVICES},
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

    def triton(
        self, creds: ClientCredentials | None = None, address: str | None = None
    ) -> triton.InferenceServerClient:
        """tritonclient for serving; over TLS with the stack's CA (and client certificate, for mTLS).
        Calls still need `headers=`: tritonclient has no per-client headers. With several serving
        replicas it gets flywheel's balanced target and channel arguments (it fails over); `address`
        points it at that one replica instead (it cannot)."""
        c = creds or self.credentials
        where: dict[str, object] = {"url": address or self.address("serving")}
        if address is None and self.replicas["serving"] > 1:
            where = tritonclient_args(self.settings(), "serving")
        return triton.InferenceServerClient(
            **where,
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

    # -- replicas ------------------------------------------------------------------------------------

    def replica_pid(self, service: str, replica: int = 0) -> int:
        """The pid of `replica` of `service` as `flywheel up` last recorded it (stack.json)."""
        state = read_state(self.home)
        assert state is not None, f"no stack.json in {self.home}"
        return int(state["services"][service]["replicas"][replica]["pid"])

    def kill_replica(self, service: str, replica: int, sig: int = signal.SIGKILL) -> int:
        """Sends `sig` (SIGKILL: a crash) to one replica's process; returns the pid it had."""
        pid = self.replica_pid(service, replica)
        os.kill(pid, sig)
        return pid

    def wait_replica_back(self, service: str, replica: int, old_pid: int, timeout_s: float = 90) -> float:
        """Seconds until the supervisor has restarted `replica` (a new pid) and it is SERVING again."""
        start = time.monotonic()
        address = self.addresses(service)[replica]
        host, port = address.rsplit(":", 1)
        while time.monotonic() - start < timeout_s:
            pid = self.replica_pid(service, replica)
            # One replica's health, on a channel to it alone (never balanced to another).
            if (
                pid != old_pid
                and pid_alive(pid)
                and port_open(host, int(port))
                and asyncio.run(grpc_serving(address, self.settings(), self.credentials))
            ):
                return time.monotonic() - start
            time.sleep(0.2)
        raise AssertionError(f"{service} replica {replica} not back within {timeout_s}s")

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


def _replica_args(up_args: tuple[str, ...]) -> list[str]:
    """The values of every --replicas (or --replicas=) among `flywheel up`'s arguments."""
    values: list[str] = []
    for i, arg in enumerate(up_args):
        if arg == "--replicas" and i + 1 < len(up_args):
            values.append(up_args[i + 1])
        elif arg.startswith("--replicas="):
            values.append(arg.split("=", 1)[1])
    return values


def _free_replica_ports(counts: dict[str, int], step: int) -> dict[str, list[int]]:
    """For each service a free port p with p + i x step free too for each further replica i, all distinct."""
    taken: set[int] = set()
    found: dict[str, list[int]] = {}
    for name in SERVICES:
        for _ in range(100):
            base = free_port()
            ports = [base + i * step for i in range(counts[name])]
            if ports[-1] < 65536 and not taken.intersection(ports) and all(_bindable(p) for p in ports[1:]):
                break
        else:
            raise AssertionError(f"no free ports for {counts[name]} replicas of {name}")
        taken.update(ports)
        found[name] = ports
    return found


def _bindable(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
