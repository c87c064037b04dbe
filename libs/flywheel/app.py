"""Runs one service process: config, logging, telemetry, DB + migrations, bus, gRPC, consumers.

Each service describes itself with a `ServiceDefinition`; this module owns the lifecycle so no
service re-implements start-up, readiness or shutdown. Start-up failures (database or broker
unreachable, port taken, schema not migrated while migrate_on_start is off) end the process at once
with one line on stderr and exit code 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import structlog

from flywheel import db
from flywheel.artifacts import ArtifactStore, open_store
from flywheel.auth import Authenticator, tokens
from flywheel.bus import EventConsumer, EventProducer, Handler, OutboxRelay, ensure_topics, kafka_security
from flywheel.bus.topics import all_topics
from flywheel.config import Settings, get_settings
from flywheel.errors import StartupError
from flywheel.grpc import GrpcServer
from flywheel.logging import configure_logging, get_logger
from flywheel.tasks import TaskSet
from flywheel.telemetry import setup_telemetry, shutdown_telemetry, untraced
from flywheel.workers import run_pool

log = get_logger(__name__)


@dataclass
class ServiceContext:
    """What a service's servicers and handlers are given: shared resources, built once."""

    name: str
    settings: Settings
    pool: asyncpg.Pool
    producer: EventProducer
    artifacts: ArtifactStore
    # Tasks started while serving (a model's retirement, a shadow call): cancelled and awaited at stop.
    tasks: TaskSet = field(default_factory=TaskSet)


@dataclass
class ServiceDefinition:
    name: str
    # Adds servicers to the server; returns the full names of the services added.
    register: Callable[[GrpcServer, ServiceContext], list[str]]
    migrations: Path
    handlers: Callable[[ServiceContext], dict[str, Handler[Any]]] = lambda _ctx: {}
    # Level-triggered recovery run once before SERVING (e.g. serving loads production models).
    reconcile: Callable[[ServiceContext], Awaitable[None]] | None = None
    background: list[Callable[[ServiceContext], Coroutine[Any, Any, None]]] = field(default_factory=list)
    # Releases what the service built (model sessions, executors) after calls and tasks have stopped
    # and before the database pool and the producer close.
    shutdown: Callable[[ServiceContext], Awaitable[None]] | None = None
    # How many processes share the service's port (flywheel.workers); None: always one.
    workers: Callable[[Settings], int] | None = None


def run(definition: ServiceDefinition) -> None:
    settings = get_settings()
    configure_logging(definition.name, settings.log_level)
    count = definition.workers(settings) if definition.workers and settings.worker_index is None else 1
    if count > 1:  # this process only supervises the workers, each of which comes back through here
        sys.exit(run_pool(count, stop_timeout_s=settings.grpc_grace_s + 15))
    if settings.worker_index is not None:
        structlog.contextvars.bind_contextvars(worker=settings.worker_index)
    setup_telemetry(definition.name, settings)
    try:
        code = asyncio.run(_main(definition, settings))
    except StartupError as exc:
        print(f"flywheel-{definition.name}: error: {exc}", file=sys.stderr, flush=True)
        code = 2
    except KeyboardInterrupt:
        code = 0
    finally:
        shutdown_telemetry()
    sys.exit(code)


async def _main(definition: ServiceDefinition, settings: Settings) -> int:
    name = definition.name
    server = GrpcServer(
        settings, settings.grpc_port or settings.port_for(name)
    )  # binds first: a taken port fails fastest
    pool = await db.connect(
        settings.database_url,
        name,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        timeout_s=settings.connect_timeout_s,
    )
    producer = EventProducer(settings, client_id=f"flywheel-{name}")
    consumer: EventConsumer | None = None
    ctx: ServiceContext | None = None
    tasks: list[asyncio.Task[None]] = []
    try:
        await _migrations(definition, settings, pool)
        try:
            server.guard.authenticator = Authenticator(settings, pool)
        except ValueError as exc:  # incomplete OIDC settings
            raise StartupError(str(exc)) from exc
        if not server.guard.enabled:
            log.warning("authentication is OFF (FLYWHEEL_AUTH_MODE=off): every caller is trusted")
        await producer.start()
        await ensure_topics(
            settings.kafka_bootstrap,
            all_topics(),
            partitions=settings.kafka_partitions,
            replication_factor=settings.kafka_replication_factor,
            security=kafka_security(settings),
        )
        ctx = ServiceContext(name, settings, pool, producer, open_store(settings))
        server.add_services(definition.register(server, ctx))
        # A worker of a pool (flywheel.workers) listens only once reconciled: the kernel hands new
        # connections to any listening worker, and they must find its models loaded. A lone process
        # listens first, so that liveness answers while it loads.
        listen_late = settings.worker_index is not None
        if not listen_late:
            await server.start()
        if definition.reconcile is not None:
            await definition.reconcile(ctx)
        if listen_late:
            await server.start()

        handlers = definition.handlers(ctx)
        relay = OutboxRelay(pool, producer, settings)
        jobs: list[Coroutine[Any, Any, None]] = [relay.run()]
        if handlers:
            consumer = EventConsumer(settings, name, pool, producer, handlers)
            jobs.append(consumer.run())
        jobs += [job(ctx) for job in definition.background]

        async def db_ready() -> bool:
            try:
                with untraced():
                    await asyncio.wait_for(pool.fetchval("SELECT 1"), 2.0)
                return True
            except Exception:
                return False

        jobs.append(server.watch_readiness([db_ready, producer.is_connected]))
        tasks = [asyncio.create_task(j) for j in jobs]
        log.info("service started", port=server.port, consumers=sorted(handlers))
        return await _until_stopped(tasks)
    finally:
        log.info("service stopping")
        await server.stop()  # drain calls in flight first
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if ctx is not None:
            await ctx.tasks.close()
            if definition.shutdown is not None:
                try:
                    await definition.shutdown(ctx)
                except Exception as exc:
                    log.error("shutdown hook failed", error=repr(exc))
        if ctx is not None:
            with contextlib.suppress(Exception):
                await ctx.artifacts.close()
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()
        with contextlib.suppress(Exception):
            await producer.stop()
        await pool.close()


async def _migrations(definition: ServiceDefinition, settings: Settings, pool: asyncpg.Pool) -> None:
    """Apply this service's migrations (its schema and the token store), or with migrate_on_start off
    only check them: then the service's database role needs no DDL right (`flywheel migrate` ran first)."""
    own = [db.LIBRARY_MIGRATIONS, definition.migrations]
    if not settings.migrate_on_start:
        await db.require_migrated(pool, definition.name, own)
        await db.require_migrated(pool, tokens.SCHEMA, [tokens.MIGRATIONS])
        return
    applied = await db.migrate(pool, definition.name, own)
    applied += await tokens.migrate(pool)
    if applied:
        log.info("migrations applied", migrations=applied)


async def _until_stopped(tasks: list[asyncio.Task[None]]) -> int:
    """Wait for SIGTERM/SIGINT (exit 0) or for a background task to die (exit 1, supervisor restarts)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
    if stopper in done:
        return 0
    stopper.cancel()
    for t in done:
        if t.exception() is not None:
            log.error("background task died", error=repr(t.exception()))
    return 1
