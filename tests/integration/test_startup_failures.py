"""A service that cannot reach PostgreSQL or the broker, or whose port is taken, exits at once
with one clear line on stderr (exit code 2) instead of hanging or printing a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from flywheel.stack.procs import free_port

# A guard against hanging, not a speed goal: the services give up on a dependency after 5 s.
HANG_GUARD_S = 30


def _run_registry(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.registry"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line]


def test_unreachable_postgres(infra, tmp_path):
    dead = free_port()
    result = _run_registry(
        {
            "FLYWHEEL_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{dead}/flywheel",
            "FLYWHEEL_KAFKA_BOOTSTRAP": infra.broker.bootstrap,
            "FLYWHEEL_GRPC_PORT": str(free_port()),
        }
    )
    assert result.returncode == 2
    lines = _error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith(
        f"flywheel-registry: error: cannot reach PostgreSQL at 127.0.0.1:{dead}/flywheel: "
    ), result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_broker(infra, tmp_path):
    dead = free_port()
    result = _run_registry(
        {
            "FLYWHEEL_DATABASE_URL": infra.dsn,
            "FLYWHEEL_KAFKA_BOOTSTRAP": f"127.0.0.1:{dead}",
            "FLYWHEEL_GRPC_PORT": str(free_port()),
        }
    )
    assert result.returncode == 2
    lines = _error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith(
        f"flywheel-registry: error: cannot reach Kafka broker at 127.0.0.1:{dead}"
    ), result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use(infra, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run_registry(
            {
                "FLYWHEEL_DATABASE_URL": infra.dsn,
                "FLYWHEEL_KAFKA_BOOTSTRAP": infra.broker.bootstrap,
                "FLYWHEEL_GRPC_PORT": str(port),
            }
        )
    assert result.returncode == 2
    assert _error_lines(result.stderr) == [
        f"flywheel-registry: error: cannot listen on 127.0.0.1:{port}: port already in use or not bindable"
    ], result.stderr
