"""A service's owned tasks are cancelled and awaited at SIGTERM, then its shutdown hook runs
while the database is still reachable, and the process exits 0."""

from __future__ import annotations

import json

from .harness import EchoProcess


async def test_sigterm_cancels_owned_tasks_then_runs_the_shutdown_hook(infra, unique, tmp_path):
    name, topic = f"echo_{unique}", f"test.shutdown.{unique}"
    report = tmp_path / "shutdown.json"
    echo = EchoProcess(infra.settings(), name, topic, tmp_path / "echo.log", ECHO_SHUTDOWN_FILE=str(report))
    echo.start()
    try:
        await echo.emit("linger-1")
        await echo.emit("linger-2")
    finally:
        echo.stop()
    assert echo.proc is not None and echo.proc.returncode == 0
    seen = json.loads(report.read_text())
    assert seen == {"tasks": {"linger-1": "cancelled", "linger-2": "cancelled"}, "running": 0, "db_ok": True}
