"""Helpers the integration tests share: run the echo service, call it (with the session's admin
token: authentication is on), read topics and spans."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from aiokafka import AIOKafkaConsumer

from flywheel.config import Settings
from flywheel.stack.procs import free_port
from tests.polling import wait_until

ECHO = Path(__file__).parent / "echo_service.py"


class EchoProcess:
    def __init__(self, settings: Settings, name: str, topic: str, log_file: Path, **env: str) -> None:
        self.port = free_port()
        self.name = name
        self.topic = topic
        self.log_file = log_file
        self.token = settings.auth_token
        self.env = {
            **os.environ,
            "FLYWHEEL_DATABASE_URL": settings.database_url,
            "FLYWHEEL_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "FLYWHEEL_HOME": str(settings.home),
            "FLYWHEEL_GRPC_PORT": str(self.port),
            "FLYWHEEL_CONSUMER_MAX_ATTEMPTS": "3",
            "FLYWHEEL_CONSUMER_BACKOFF_S": "0.05",
            "FLYWHEEL_OUTBOX_POLL_S": "0.2",
            "ECHO_NAME": name,
            "ECHO_TOPIC": topic,
            **env,
        }
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, **extra_env: str) -> EchoProcess:
        with self.log_file.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(ECHO)],
                env={**self.env, **extra_env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_until(lambda: serving_sync(self.address), 60, f"echo service {self.name} SERVING")
        return self

    async def emit(self, name: str, timeout_s: float = 10.0) -> str:
        return await emit(self.address, name, self.token, timeout_s)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)

    def log_lines(self) -> list[str]:
        return self.log_file.read_text().splitlines() if self.log_file.exists() else []


def serving_sync(address: str) -> bool:
    """Blocking health check (start-up helpers run inside async tests, so no nested event loop)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
        except grpc.RpcError:
            return False
        return resp.status == health_pb2.HealthCheckResponse.SERVING


async def emit(address: str, name: str, token: str | None, timeout_s: float = 10.0) -> str:
    metadata = [("authorization", f"Bearer {token}")] if token else None
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary("/flywheel.test.Echo/Emit")
        result: bytes = await call(name.encode(), timeout=timeout_s, metadata=metadata)
        return result.decode()


async def await_for(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


async def read_topic(bootstrap: str, topic: str, idle_s: float = 2.0, max_s: float = 20.0) -> list[Any]:
    """Every record on `topic` from the start, until nothing new arrives for `idle_s`."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = time.monotonic() + max_s
        last = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - last < idle_s:
            batch = await consumer.getmany(timeout_ms=300)
            for recs in batch.values():
                records.extend(recs)
                last = time.monotonic()
    finally:
        await consumer.stop()
    return records
