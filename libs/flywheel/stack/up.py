"""`flywheel up`: start PostgreSQL, the broker, topics and the five services; supervise; stop.

With --replicas, each service runs as several processes (flywheel.stack.replicas) against the one
PostgreSQL and broker, each on its own port with its own log, each restarted on crash; every service
and the CLI get the list of a service's replicas and balance over it (flywheel.grpc.channels).

State lives under $FLYWHEEL_HOME (./var): postgres/ data, log/*.log, spans.jsonl, stack.json
(which `flywheel status` and `flywheel down` read), credentials (the admin token, and the TLS
files with --tls), addresses.json (every service's replicas, which the CLI reads),
service-tokens/<service> and, with --tls, tls/ (a local CA and certificates).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from flywheel import addresses as saved_addresses
from flywheel.auth.credentials import ClientCredentials, write_credentials
from flywheel.bus.topics import all_topics, ensure_topics
from flywheel.config import SERVICES, Settings
from flywheel.db import ensure_database
from flywheel.errors import StartupError

from .broker import EmbeddedBroker
from .health import broker_ok, grpc_serving
from .identities import ADMIN_NAME, Identities, provision, service_identity
from .pki import LocalPki, ensure_pki
from .postgres import EmbeddedPostgres
from .replicas import Replica, addresses, plan
from .supervisor import SupervisedService

console = Console(stderr=True)


def state_file(home: Path) -> Path:
    return home / "stack.json"


# Variables `up` sets itself for every service: whatever the caller's environment holds for them
# must not reach a service (above all, a person's FLYWHEEL_AUTH_TOKEN). The embedded broker has one
# plaintext listener, so the caller's Kafka security settings (meant for a real cluster) go too.
_OWNED_PREFIXES = ("FLYWHEEL_AUTH_TOKEN", "FLYWHEEL_TLS_", "FLYWHEEL_KAFKA_SASL_", "FLYWHEEL_KAFKA_SSL_")


class Stack:
    def __init__(
        self, settings: Settings, *, tls: bool = False, mtls: bool = False, replicas: dict[str, int] | None = None
    ) -> None:
        """`replicas`: processes per service (1 for any not named)."""
        self.settings = settings
        self.replicas: dict[str, list[Replica]] = plan(settings, replicas or {})
        self.addresses = addresses(self.replicas)
        self.home = settings.home.resolve()
        self.logs = self.home / "log"
        self.credentials_file = self.home / "credentials"
        self.tls = tls or mtls
        self.mtls = mtls
        self.postgres = EmbeddedPostgres(self.home / "postgres", settings.pg_port, self.logs / "postgres.log")
        self.broker = EmbeddedBroker(settings.broker_port, self.logs / "broker.log")
        self.services: dict[str, list[SupervisedService]] = {}  # service -> its replicas' processes
        self.identities: Identities | None = None
        self.pki: LocalPki | None = None
        self._stopping = False

    def service_env(self) -> dict[str, str]:
        """What every service shares; `own_env` adds each one's identity."""
        s = self.settings
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith(_OWNED_PREFIXES)}
        env.update(
            {
                "FLYWHEEL_HOME": str(self.home),
                "FLYWHEEL_DATABASE_URL": self.postgres.dsn(),
                "FLYWHEEL_KAFKA_BOOTSTRAP": self.broker.bootstrap,
                "FLYWHEEL_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
                "FLYWHEEL_KAFKA_ENABLE_IDEMPOTENCE": "false",
                "FLYWHEEL_SPANS_FILE": str(self.home / "spans.jsonl"),
                "FLYWHEEL_ARTIFACT_ROOT": s.artifact_location,
                **{f"FLYWHEEL_{n.upper()}_PORT": str(s.port_for(n)) for n in SERVICES},
                # Every replica of every service: inter-service calls balance over them.
                **{f"FLYWHEEL_{n.upper()}_ADDR": saved_addresses.join(self.addresses[n]) for n in SERVICES},
            }
        )
        if self.pki is not None:
            env.update(
                {
                    "FLYWHEEL_TLS_CERT_FILE": str(self.pki.server.cert_file),
                    "FLYWHEEL_TLS_KEY_FILE": str(self.pki.server.key_file),
                    "FLYWHEEL_TLS_CA_FILE": str(self.pki.ca_file),
                    "FLYWHEEL_TLS_REQUIRE_CLIENT_AUTH": "true" if self.mtls else "false",
                }
            )
        return env

    def own_env(self, name: str, index: int, replica: int = 0) -> dict[str, str]:
        """The environment of `replica` of `name` (SERVICES[index]): the shared one plus its own port,
        its service's token (only its own) and certificate."""
        env = self.service_env()
        env["FLYWHEEL_GRPC_PORT"] = str(self.replicas[name][replica].port)
        if self.identities is not None:
            env["FLYWHEEL_AUTH_TOKEN"] = self.identities.services[name]
        if self.pki is not None:
            pair = self.pki.clients[service_identity(name)[0]]
            env["FLYWHEEL_TLS_CLIENT_CERT_FILE"] = str(pair.cert_file)
            env["FLYWHEEL_TLS_CLIENT_KEY_FILE"] = str(pair.key_file)
        if self.settings.metrics_port:  # a base port: one Prometheus endpoint per process
            env["FLYWHEEL_METRICS_PORT"] = str(self._metrics_port(index, replica))
        return env

    def _metrics_port(self, index: int, replica: int) -> int:
        return self.settings.metrics_port + index + replica * self.settings.replica_port_step

    def admin_credentials(self) -> ClientCredentials:
        """What the CLI, the demo and the tests use: the admin token and, with TLS, the CA and the
        admin's client certificate."""
        token = self.identities.admin if self.identities is not None else None
        if self.pki is None:
            return ClientCredentials(token=token)
        pair = self.pki.clients[ADMIN_NAME]
        return ClientCredentials(token, self.pki.ca_file, pair.cert_file, pair.key_file)

    def client_env(self) -> dict[str, str]:
        """An environment in which the CLI talks to this stack with its credentials file."""
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith(_OWNED_PREFIXES)}
        env["FLYWHEEL_HOME"] = str(self.home)
        return env

    def probe_credentials(self) -> ClientCredentials:
        """Health needs no token; over TLS a probe still needs the CA (and a certificate for mTLS)."""
        creds = self.admin_credentials()
        return ClientCredentials(None, creds.tls_ca_file, creds.tls_cert_file, creds.tls_key_file)

    def start(self, wait_s: float = 90.0) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        console.print(f"[bold]flywheel[/] starting the embedded stack in {self.home}")
        self.postgres.start()
        asyncio.run(ensure_database(self.postgres.dsn()))
        console.print(f"  postgres   {self.postgres.dsn()}")
        self._provision_identities()
        self.broker.start()
        self._create_topics()
        console.print(f"  kafka      {self.broker.bootstrap}")
        for i, name in enumerate(SERVICES):
            self.services[name] = []
            for r in self.replicas[name]:
                svc = SupervisedService(name, self.own_env(name, i, r.index), r.log_file(self.logs), label=r.name)
                svc.start()
                self.services[name].append(svc)
        self.write_state()
        saved_addresses.write_saved(self.home, self.addresses)
        self._await_healthy(wait_s)
        scheme = "grpcs" if self.tls else "grpc"
        for i, name in enumerate(SERVICES):
            for r in self.replicas[name]:
                line = f"  {r.name:<10} {scheme}://{r.address}"
                if self.settings.metrics_port:
                    line += f"  metrics http://127.0.0.1:{self._metrics_port(i, r.index)}/metrics"
                console.print(line)
        console.print(f"  traces     {self.home / 'spans.jsonl'}")
        if self.pki is not None:
            mode = "mutual TLS: clients need a certificate from" if self.mtls else "TLS, clients verify with"
            console.print(f"  tls        {mode} {self.pki.ca_file}", soft_wrap=True)
        console.print(f"  admin      credentials in {self.credentials_file} (the CLI reads them)", soft_wrap=True)
        console.print("[green]ready[/]: Ctrl-C or `flywheel down` stops everything")

    def _provision_identities(self) -> None:
        """Tokens (and with --tls certificates) before any service starts, so each starts with its own."""
        self.identities = asyncio.run(provision(self.postgres.dsn(), self.home, self.credentials_file, tuple(SERVICES)))
        if self.tls:
            names = [ADMIN_NAME, *(service_identity(n)[0] for n in SERVICES)]
            self.pki = ensure_pki(self.home / "tls", names)
        write_credentials(self.credentials_file, self.admin_credentials())

    def _create_topics(self) -> None:
        asyncio.run(
            ensure_topics(
                self.broker.bootstrap,
                all_topics(),
                partitions=self.settings.kafka_partitions,
                replication_factor=self.settings.kafka_replication_factor,
            )
        )

    def _processes(self) -> list[SupervisedService]:
        return [svc for group in self.services.values() for svc in group]

    def _await_healthy(self, wait_s: float) -> None:
        """Until every replica of every service is SERVING."""
        deadline = time.monotonic() + wait_s
        every = {r.name: r.address for group in self.replicas.values() for r in group}
        pending = set(every)
        while pending and time.monotonic() < deadline:
            for svc in self._processes():
                svc.poll()
            probes = {n: every[n] for n in pending}
            results = asyncio.run(_check_all(probes, self.settings, self.probe_credentials()))
            pending = {n for n, ok in results.items() if not ok}
            if pending:
                time.sleep(0.3)
        if pending:
            raise StartupError(
                f"services not healthy after {wait_s:.0f}s: {', '.join(sorted(pending))} (see {self.logs})"
            )

    def write_state(self) -> None:
        state: dict[str, Any] = {
            "supervisor_pid": os.getpid(),
            "home": str(self.home),
            "postgres": {
                "dsn": self.postgres.dsn(),
                "pid": self.postgres.proc.pid if self.postgres.proc else None,
            },
            "broker": {
                "bootstrap": self.broker.bootstrap,
                "pid": self.broker.proc.pid if self.broker.proc else None,
            },
            # address and pid: replica 0's (what a one-process stack had); replicas: every one.
            "services": {n: self._service_state(n) for n in self.services},
            # How to reach the services: `flywheel status` probes them with these files.
            "tls": _tls_state(self.probe_credentials(), self.mtls) if self.tls else None,
            "credentials": str(self.credentials_file),
        }
        tmp = state_file(self.home).with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(state_file(self.home))

    def _service_state(self, name: str) -> dict[str, Any]:
        replicas = [
            {"name": r.name, "address": r.address, "pid": svc.pid, "log": str(r.log_file(self.logs))}
            for r, svc in zip(self.replicas[name], self.services[name], strict=True)
        ]
        return {"address": replicas[0]["address"], "pid": replicas[0]["pid"], "replicas": replicas}

    def supervise(self) -> None:
        """Block until SIGINT/SIGTERM, restarting whatever crashes."""

        def on_signal(*_: object) -> None:
            self._stopping = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        while not self._stopping:
            changed = False
            if self.postgres.proc is not None and self.postgres.proc.poll() is not None:
                console.print("[yellow]postgres exited; restarting[/]")
                self.postgres.proc = None
                self.postgres.start()
                changed = True
            if self.broker.proc is not None and self.broker.proc.poll() is not None:
                console.print("[yellow]broker exited; restarting (memory storage: topics re-created)[/]")
                self.broker.proc = None
                self.broker.start()
                self._create_topics()
                changed = True
            for svc in self._processes():
                before = svc.pid
                svc.poll()
                changed |= svc.pid != before
            if changed:
                self.write_state()
            time.sleep(0.5)

    def stop(self) -> None:
        self._stopping = True
        console.print("stopping services")
        for svc in self._processes():  # SIGTERM all first so they drain in parallel
            if svc.proc is not None and svc.proc.poll() is None:
                svc.proc.terminate()
        for svc in self._processes():
            svc.stop()
        self.broker.stop()
        self.postgres.stop()
        state_file(self.home).unlink(missing_ok=True)
        saved_addresses.saved_file(self.home).unlink(missing_ok=True)
        console.print("stopped")


def _tls_state(creds: ClientCredentials, mtls: bool) -> dict[str, Any]:
    return {
        "mtls": mtls,
        "ca_file": str(creds.tls_ca_file),
        "client_cert_file": str(creds.tls_cert_file),
        "client_key_file": str(creds.tls_key_file),
    }


def _probe_credentials(state: dict[str, Any]) -> ClientCredentials:
    tls = state.get("tls")
    if not isinstance(tls, dict):
        return ClientCredentials()

    def path(key: str) -> Path | None:
        value = tls.get(key)
        return Path(value) if isinstance(value, str) and value else None

    return ClientCredentials(None, path("ca_file"), path("client_cert_file"), path("client_key_file"))


async def _check_all(addresses: dict[str, str], settings: Settings, creds: ClientCredentials) -> dict[str, bool]:
    names = list(addresses)
    results = await asyncio.gather(*(grpc_serving(addresses[n], settings, creds) for n in names))
    return dict(zip(names, results, strict=True))


def read_state(home: Path) -> dict[str, Any] | None:
    path = state_file(home.resolve())
    if not path.exists():
        return None
    return json.loads(path.read_text())


async def status(settings: Settings) -> list[tuple[str, str, bool]]:
    """(component, address, healthy) for every component of the stack running in settings.home."""
    from .health import postgres_ok

    state = read_state(settings.home)
    if state is None:
        return []
    rows: list[tuple[str, str, bool]] = []
    rows.append(("postgres", state["postgres"]["dsn"], await postgres_ok(state["postgres"]["dsn"])))
    rows.append(("kafka", state["broker"]["bootstrap"], await broker_ok(state["broker"]["bootstrap"])))
    every = {r["name"]: r["address"] for r in _replica_states(state)}
    checks = await _check_all(every, settings, _probe_credentials(state))
    rows += [(n, every[n], checks[n]) for n in every]
    return rows


def _replica_states(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Every replica in a stack.json (one written before replicas existed lists each service once)."""
    found: list[dict[str, Any]] = []
    for name, svc in state["services"].items():
        found += svc.get("replicas") or [{"name": name, "address": svc["address"], "pid": svc["pid"]}]
    return found
