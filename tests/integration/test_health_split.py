"""Liveness is not readiness: while PostgreSQL is down a real service reports NOT_SERVING for
readiness (load balancers drain it) and SERVING for liveness (nothing restarts it), and it is ready
again once PostgreSQL is back, with no restart. Checked with `flywheel health`, as probes do."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from flywheel.db import ensure_database
from flywheel.stack.postgres import EmbeddedPostgres
from flywheel.stack.procs import free_port
from tests.polling import wait_until

FLYWHEEL = Path(sys.executable).parent / "flywheel"


def _health(address: str, *flags: str) -> tuple[int, str]:
    done = subprocess.run(
        [str(FLYWHEEL), "health", "--address", address, *flags],
        capture_output=True,
        text=True,
        timeout=30,
        env={k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")},
    )
    return done.returncode, done.stdout.strip()


# The registry answers calls only; training also runs a worker, a heartbeat and a reconcile loop that
# all meet the outage (none may take the process down).
@pytest.mark.parametrize("service", ["registry", "training"])
def test_liveness_stays_serving_while_postgres_is_down(infra, tmp_path, service):
    # A PostgreSQL of this test's own: stopping the session's shared one would disturb other tests. Its
    # data lives outside pytest's base directory, which another pytest session may make private again
    # (0700) while this one runs, and PostgreSQL (an unprivileged user) must get back in to restart.
    data = Path(tempfile.mkdtemp(prefix="flywheel-health-"))
    pg = EmbeddedPostgres(data / "pg", free_port(), tmp_path / "pg.log")
    pg.start()
    port = free_port()
    address = f"127.0.0.1:{port}"
    log = (tmp_path / f"{service}.log").open("wb")
    proc = None
    try:
        asyncio.run(ensure_database(pg.dsn()))
        env = {
            **os.environ,
            "FLYWHEEL_HOME": str(tmp_path / "home"),
            "FLYWHEEL_DATABASE_URL": pg.dsn(),
            "FLYWHEEL_KAFKA_BOOTSTRAP": infra.broker.bootstrap,
            "FLYWHEEL_GRPC_PORT": str(port),
        }
        proc = subprocess.Popen([sys.executable, "-m", f"services.{service}"], env=env, stdout=log, stderr=log)
        wait_until(lambda: _health(address)[0] == 0, 60, f"{service} ready")
        assert _health(address, "--liveness") == (0, f"liveness {address}: SERVING")

        pg.stop()
        wait_until(lambda: _health(address) == (1, f"readiness {address}: NOT_SERVING"), 30, "readiness to fall")
        for _ in range(3):  # and it stays alive through the outage, across several probe periods
            assert _health(address, "--liveness") == (0, f"liveness {address}: SERVING")
            assert proc.poll() is None
            assert _health(address)[0] == 1

        pg.start()
        wait_until(lambda: _health(address) == (0, f"readiness {address}: SERVING"), 60, "readiness back")
        assert proc.poll() is None, "the same process serves again: nothing had to restart it"
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(30)
        log.close()
        pg.stop()
        shutil.rmtree(data, ignore_errors=True)
