"""Migrations as a step of their own, with the roles of deploy/postgres/roles.sql (applied by
deploy/postgres/init-roles.sh, as the Compose PostgreSQL does): service roles may only read and write
rows, so a service refuses to start on an unmigrated schema and cannot migrate it either;
`flywheel migrate` as the migration owner applies every schema, idempotently; then real service
processes, started with their row-only roles and FLYWHEEL_MIGRATE_ON_START=false, serve calls that
write (a dataset version through the outbox, a token in the registry's token store)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import pytest

from flywheel.config import SERVICES
from flywheel.db import ensure_database
from flywheel.stack.identities import service_identity
from flywheel.stack.postgres import _bin
from flywheel.stack.procs import free_port
from flywheel.v1 import auth_pb2, auth_pb2_grpc, ingestion_pb2, ingestion_pb2_grpc
from tests.e2e.clients import ingest_requests, make_csv, schema
from tests.integration.identities import mint_many
from tests.polling import wait_until

REPO = Path(__file__).resolve().parents[2]
POSTGRES_DIR = REPO / "deploy" / "postgres"
FLYWHEEL = Path(sys.executable).parent / "flywheel"
SCHEMAS = (*SERVICES, "flywheel_auth")


@dataclass
class RolesDb:
    host: str
    port: int
    name: str

    def dsn(self, role: str = "postgres") -> str:
        return f"postgresql://{role}@{self.host}:{self.port}/{self.name}"


@pytest.fixture(scope="module")
def roles_db(infra) -> Iterator[RolesDb]:
    """A new database on the session's PostgreSQL with the roles and schemas of roles.sql. Roles are
    global to the server: they stay for the rest of the session (no other test uses these names)."""
    pg = infra.postgres
    db = RolesDb("127.0.0.1", pg.port, f"fw_roles_{uuid.uuid4().hex[:8]}")
    asyncio.run(ensure_database(db.dsn()))
    env = {
        **os.environ,
        "PATH": f"{Path(_bin('psql')).parent}:{os.environ['PATH']}",
        "PGHOST": db.host,
        "PGPORT": str(db.port),
        "POSTGRES_USER": "postgres",
        "POSTGRES_DB": db.name,
        "FLYWHEEL_ROLES_SQL": str(POSTGRES_DIR / "roles.sql"),
        **{f"FLYWHEEL_DB_PASSWORD_{r.upper()}": uuid.uuid4().hex for r in ("migrator", *SERVICES)},
    }
    done = subprocess.run(
        ["sh", str(POSTGRES_DIR / "init-roles.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    yield db


def _service_env(infra, db: RolesDb, service: str, home: Path, **extra: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")},
        "FLYWHEEL_HOME": str(home),
        "FLYWHEEL_DATABASE_URL": db.dsn(f"flywheel_{service}"),
        "FLYWHEEL_KAFKA_BOOTSTRAP": infra.broker.bootstrap,
        "FLYWHEEL_MIGRATE_ON_START": "false",
        **extra,
    }


def _run_once(env: dict[str, str], service: str) -> subprocess.CompletedProcess[str]:
    env = {**env, "FLYWHEEL_GRPC_PORT": str(free_port())}
    return subprocess.run(
        [sys.executable, "-m", f"services.{service}"], env=env, capture_output=True, text=True, timeout=60
    )


def _migrate(db: RolesDb, *args: str, role: str = "flywheel_migrator") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
    env["FLYWHEEL_DATABASE_URL"] = db.dsn(role)
    return subprocess.run([str(FLYWHEEL), "migrate", *args], env=env, capture_output=True, text=True, timeout=120)


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line]


def test_migrate_step_then_services_with_row_only_roles(infra, roles_db, tmp_path):
    db = roles_db

    # Before `flywheel migrate`: a service told not to migrate names the step it needs ...
    refused = _run_once(_service_env(infra, db, "registry", tmp_path / "r0"), "registry")
    assert refused.returncode == 2, refused.stderr
    lines = _errors(refused.stderr)
    assert len(lines) == 1 and lines[0].startswith("flywheel-registry: error: schema registry is not migrated ("), lines
    assert "run `flywheel migrate`" in lines[0] and "Traceback" not in refused.stderr

    # ... and one told to migrate cannot: its role has no right to create tables.
    denied = _run_once(
        _service_env(infra, db, "registry", tmp_path / "r1", FLYWHEEL_MIGRATE_ON_START="true"), "registry"
    )
    assert denied.returncode == 2
    lines = _errors(denied.stderr)
    assert len(lines) == 1 and lines[0].startswith(
        "flywheel-registry: error: cannot migrate schema registry as database role flywheel_registry: permission denied"
    ), lines

    # The step needs the migration owner: with a service's role it stops at the first schema, saying so.
    wrong = _migrate(db, role="flywheel_ingestion")
    assert wrong.returncode == 1 and wrong.stdout == ""
    assert wrong.stderr.startswith(
        "error: cannot migrate schema ingestion as database role flywheel_ingestion: permission denied"
    ), wrong.stderr

    # The step: every service's schema and the token store, as the migration owner; then idempotent.
    first = _migrate(db)
    assert first.returncode == 0, first.stderr
    applied = dict(line.split(": ", 1) for line in first.stdout.splitlines())
    assert list(applied) == list(SCHEMAS)
    assert applied["training"] == "applied 0000_flywheel_bus.sql, 0001_flywheel_offsets.sql, " + (
        "0002_flywheel_dead_letters.sql, 0001_training.sql, 0002_cancel.sql"
    )
    assert applied["serving"].startswith("applied 0000_flywheel_bus.sql")  # library tables only
    assert applied["flywheel_auth"] == "applied 0000_tokens.sql"
    again = _migrate(db)
    assert again.returncode == 0 and again.stdout.splitlines() == [f"{s}: up to date" for s in SCHEMAS]
    assert _migrate(db, "--service", "ingestion").stdout.splitlines() == [
        "ingestion: up to date",
        "flywheel_auth: up to date",
    ]
    asyncio.run(_check_privileges(db))

    # Services with their row-only roles, migrate_on_start off, serving calls that write.
    tokens = asyncio.run(
        mint_many(
            db.dsn(),
            {
                "admin": ("migrate-step-admin", "admin"),
                **{s: service_identity(s) for s in ("ingestion", "registry")},
            },
        )
    )
    procs: list[subprocess.Popen[bytes]] = []
    ports = {s: free_port() for s in ("ingestion", "registry")}
    try:
        for service, port in ports.items():
            env = _service_env(
                infra,
                db,
                service,
                tmp_path / service,
                FLYWHEEL_GRPC_PORT=str(port),
                FLYWHEEL_AUTH_TOKEN=tokens[service],
                FLYWHEEL_OUTBOX_POLL_S="0.2",
            )
            with (tmp_path / f"{service}.log").open("wb") as log:
                procs.append(
                    subprocess.Popen([sys.executable, "-m", f"services.{service}"], env=env, stdout=log, stderr=log)
                )
        for service, port in ports.items():
            wait_until(lambda p=port: _ready(p), 60, f"{service} ready with its row-only role")  # type: ignore[misc]
        _write_calls(db, ports, tokens["admin"])
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
    for service in ports:  # no permission error hidden in a background loop either
        records = [json.loads(line) for line in (tmp_path / f"{service}.log").read_text().splitlines()]
        assert [r for r in records if r["level"] not in ("debug", "info")] == [], service


def _ready(port: int) -> bool:
    done = subprocess.run(
        [str(FLYWHEEL), "health", "--address", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=30
    )
    return done.returncode == 0


def _write_calls(db: RolesDb, ports: dict[str, int], admin: str) -> None:
    metadata = [("authorization", f"Bearer {admin}")]
    with grpc.insecure_channel(f"127.0.0.1:{ports['ingestion']}") as channel:
        ingestion = ingestion_pb2_grpc.IngestionServiceStub(channel)
        dataset = ingestion_pb2.Dataset(name="migrated", schema=schema())
        ingestion.CreateDataset(ingestion_pb2.CreateDatasetRequest(dataset=dataset), metadata=metadata, timeout=30)
        version = ingestion.IngestDataset(ingest_requests("migrated", make_csv(200)), metadata=metadata, timeout=60)
        assert version.version.ref.version == 1

    # The version's event went through the outbox (a bigserial id: the sequence is granted too) and the
    # relay marked it sent (UPDATE) once the broker took it.
    async def sent() -> int:
        conn = await asyncpg.connect(db.dsn())
        try:
            return int(await conn.fetchval("SELECT count(*) FROM ingestion.outbox WHERE sent_at IS NOT NULL"))
        finally:
            await conn.close()

    wait_until(lambda: asyncio.run(sent()) >= 1, 30, "the data.versioned event relayed")

    # The registry writes the token store; ingestion, which may only read it, accepts the new token.
    with grpc.insecure_channel(f"127.0.0.1:{ports['registry']}") as channel:
        created = auth_pb2_grpc.TokenServiceStub(channel).CreateToken(
            auth_pb2.CreateTokenRequest(name="migrate-step-viewer", role="viewer"), metadata=metadata, timeout=30
        )
    with grpc.insecure_channel(f"127.0.0.1:{ports['ingestion']}") as channel:
        listed = ingestion_pb2_grpc.IngestionServiceStub(channel).ListDatasets(
            ingestion_pb2.ListDatasetsRequest(), metadata=[("authorization", f"Bearer {created.secret}")], timeout=30
        )
    assert [d.name for d in listed.datasets] == ["migrated"]


async def _check_privileges(db: RolesDb) -> None:
    conn = await asyncpg.connect(db.dsn())
    try:
        owners = await conn.fetch(
            "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = ANY($1::text[])", list(SCHEMAS)
        )
        assert [r["tableowner"] for r in owners] == ["flywheel_migrator"]
        for service in SERVICES:
            role = f"flywheel_{service}"
            may = await conn.fetchrow(
                "SELECT has_schema_privilege($1, $2, 'CREATE') AS create_own,"
                " has_schema_privilege($1, 'flywheel_auth', 'CREATE') AS create_auth,"
                " has_database_privilege($1, current_database(), 'CREATE') AS create_schema,"
                " has_database_privilege($1, current_database(), 'TEMP') AS temp,"
                " has_table_privilege($1, $2 || '.outbox', 'SELECT, INSERT, UPDATE, DELETE') AS rows,"
                " has_table_privilege($1, 'flywheel_auth.tokens', 'INSERT') AS write_tokens,"
                " has_table_privilege($1, 'flywheel_auth.tokens', 'SELECT') AS read_tokens",
                role,
                service,
            )
            assert dict(may) == {
                "create_own": False,
                "create_auth": False,
                "create_schema": False,
                "temp": False,
                "rows": True,
                "write_tokens": service == "registry",
                "read_tokens": True,
            }, service
        # No service reads another's tables.
        assert not await conn.fetchval("SELECT has_table_privilege('flywheel_ingestion', 'registry.outbox', 'SELECT')")
    finally:
        await conn.close()


def test_migrate_finds_what_each_service_applies_at_start() -> None:
    """`flywheel migrate` locates migrations without importing the services; they are the ones each
    service's definition names."""
    import importlib

    from flywheel.cli.migrate import service_migrations

    for service in SERVICES:
        definition = importlib.import_module(f"services.{service}.definition").DEFINITION
        assert service_migrations(service) == definition.migrations
