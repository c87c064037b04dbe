"""Session-wide real servers: one embedded PostgreSQL and one Kafka-protocol broker (tansu).

Integration tests share them (each test uses its own schema, topics and consumer groups);
e2e tests start their own stack with `flywheel up`. Authentication is on, as in production: the
session mints an admin token in the shared database, which `Infra.settings()` carries as this
process's own credential (so channels made with flywheel.grpc send it).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from flywheel.config import Settings
from flywheel.db import ensure_database
from flywheel.stack.broker import EmbeddedBroker
from flywheel.stack.postgres import EmbeddedPostgres
from flywheel.stack.procs import free_port
from tests.integration.identities import mint
from tests.s3_server import AWS_ENV, S3Server


@dataclass
class Infra:
    postgres: EmbeddedPostgres
    broker: EmbeddedBroker
    home: Path
    token: str  # an admin token in the shared database

    @property
    def dsn(self) -> str:
        return self.postgres.dsn()

    def settings(self, **overrides: object) -> Settings:
        base: dict[str, object] = {
            "home": self.home,
            "database_url": self.dsn,
            "kafka_bootstrap": self.broker.bootstrap,
            "consumer_backoff_s": 0.05,
            "consumer_max_attempts": 3,
            "outbox_poll_s": 0.2,
            "auth_token": self.token,
        }
        base.update(overrides)
        return Settings(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    home = tmp_path_factory.mktemp("flywheel-infra")
    pg = EmbeddedPostgres(home / "postgres", free_port(), home / "log" / "postgres.log")
    broker = EmbeddedBroker(free_port(), home / "log" / "broker.log")
    pg.start()
    try:
        asyncio.run(ensure_database(pg.dsn()))
        token = asyncio.run(mint(pg.dsn(), "tests-admin", "admin"))
        broker.start()
        yield Infra(pg, broker, home, token)
    finally:
        broker.stop()
        pg.stop()


@pytest.fixture
def unique() -> str:
    """A short unique suffix for schemas, topics and consumer groups of one test."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory, monkeypatch_session: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """A real S3-compatible server (moto in server mode) for the session; the AWS chain finds its
    credentials in this process's environment."""
    server = S3Server(tmp_path_factory.mktemp("s3") / "moto.log").start()
    for key, value in AWS_ENV.items():
        monkeypatch_session.setenv(key, value)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def monkeypatch_session() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        yield mp
