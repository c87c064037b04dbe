"""`flywheel up`: start PostgreSQL, the broker, topics and the five services; supervise; stop.

State lives under $FLYWHEEL_HOME (./var): postgres/ data, log/*.log, spans.jsonl, and
stack.json, which `flywheel status` and `flywheel down` read.
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

from flywheel.bus.topics import all_topics, ensure_topics
from flywheel.config import SERVICES, Settings
from flywheel.db import ensure_database
from flywheel.errors import StartupError

from .broker import EmbeddedBroker
from .health import broker_ok, grpc_serving
from .postgres import EmbeddedPostgres
from .supervisor import SupervisedService

console = Console(stderr=True)


def state_file(home: Path) -> Path:
    return home / "stack.json"


class Stack:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.home.resolve()
        self.logs = self.home / "log"
        self.postgres = EmbeddedPostgres(self.home / "postgres", settings.pg_port, self.logs / "postgres.log")
        self.broker = EmbeddedBroker(settings.broker_port, self.logs / "broker.log")
        self.services: dict[str, SupervisedService] = {}
        self._stopping = False

    def service_env(self) -> dict[str, str]:
        s = self.settings
        env = dict(os.environ)
        env.update(
            {
                "FLYWHEEL_HOME": str(self.home),
                "FLYWHEEL_DATABASE_URL": self.postgres.dsn(),
                "FLYWHEEL_KAFKA_BOOTSTRAP": self.broker.bootstrap,
                "FLYWHEEL_KAFKA_ENABLE_IDEMPOTENCE": "false",
                "FLYWHEEL_SPANS_FILE": str(self.home / "spans.jsonl"),
                "FLYWHEEL_ARTIFACT_ROOT": str(s.artifacts_dir.resolve()),
                **{f"FLYWHEEL_{n.upper()}_PORT": str(s.port_for(n)) for n in SERVICES},
                **{f"FLYWHEEL_{n.upper()}_ADDR": s.addr_for(n) for n in SERVICES},
            }
        )
        return env

    def start(self, wait_s: float = 90.0) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        console.print(f"[bold]flywheel[/] starting the embedded stack in {self.home}")
        self.postgres.start()
        asyncio.run(ensure_database(self.postgres.dsn()))
        console.print(f"  postgres   {self.postgres.dsn()}")
        self.broker.start()
        self._create_topics()
        console.print(f"  kafka      {self.broker.bootstrap}")
        env = self.service_env()
        for i, name in enumerate(SERVICES):
            own = dict(env)
            if self.settings.metrics_port:  # a base port: one Prometheus endpoint per service
                own["FLYWHEEL_METRICS_PORT"] = str(self.settings.metrics_port + i)
            svc = SupervisedService(name, own, self.logs / f"{name}.log")
            svc.start()
            self.services[name] = svc
        self.write_state()
        self._await_healthy(wait_s)
        for i, name in enumerate(SERVICES):
            line = f"  {name:<10} grpc://{self.settings.addr_for(name)}"
            if self.settings.metrics_port:
                line += f"  metrics http://127.0.0.1:{self.settings.metrics_port + i}/metrics"
            console.print(line)
        console.print(f"  traces     {self.home / 'spans.jsonl'}")
        console.print("[green]ready[/]: Ctrl-C or `flywheel down` stops everything")

    def _create_topics(self) -> None:
        asyncio.run(
            ensure_topics(
                self.broker.bootstrap,
                all_topics(),
                partitions=self.settings.kafka_partitions,
                replication_factor=self.settings.kafka_replication_factor,
            )
        )

    def _await_healthy(self, wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        pending = set(SERVICES)
        while pending and time.monotonic() < deadline:
            for svc in self.services.values():
                svc.poll()
            results = asyncio.run(_check_all({n: self.settings.addr_for(n) for n in pending}))
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
            "services": {n: {"address": self.settings.addr_for(n), "pid": s.pid} for n, s in self.services.items()},
        }
        tmp = state_file(self.home).with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(state_file(self.home))

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
            for svc in self.services.values():
                before = svc.pid
                svc.poll()
                changed |= svc.pid != before
            if changed:
                self.write_state()
            time.sleep(0.5)

    def stop(self) -> None:
        self._stopping = True
        console.print("stopping services")
        for svc in self.services.values():  # SIGTERM all first so they drain in parallel
            if svc.proc is not None and svc.proc.poll() is None:
                svc.proc.terminate()
        for svc in self.services.values():
            svc.stop()
        self.broker.stop()
        self.postgres.stop()
        state_file(self.home).unlink(missing_ok=True)
        console.print("stopped")


async def _check_all(addresses: dict[str, str]) -> dict[str, bool]:
    names = list(addresses)
    results = await asyncio.gather(*(grpc_serving(addresses[n]) for n in names))
    return dict(zip(names, results, strict=True))


def read_state(home: Path) -> dict[str, Any] | None:
    path = state_file(home.resolve())
    if not path.exists():
        return None
    return json.loads(path.read_text())


async def status(home: Path) -> list[tuple[str, str, bool]]:
    """(component, address, healthy) for every component of a running stack."""
    from .health import postgres_ok

    state = read_state(home)
    if state is None:
        return []
    rows: list[tuple[str, str, bool]] = []
    rows.append(("postgres", state["postgres"]["dsn"], await postgres_ok(state["postgres"]["dsn"])))
    rows.append(("kafka", state["broker"]["bootstrap"], await broker_ok(state["broker"]["bootstrap"])))
    svc = state["services"]
    checks = await _check_all({n: v["address"] for n, v in svc.items()})
    rows += [(n, svc[n]["address"], checks[n]) for n in svc]
    return rows
