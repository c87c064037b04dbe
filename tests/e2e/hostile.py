"""Helpers for hostile-input tests against a running stack: which process serves a service (to
show it survived), how much memory a call made it take, what a refused call answered, and what a
consumer dead-lettered.

    pid = service_pid(stack, "ingestion")
    code, details = refusal(lambda: api.ingestion.CreateDataset(bad))
    assert_same_process(stack, "ingestion", pid)

    base = reset_peak_rss(pid)  # memory a call made the service take at its peak
    ...
    grown = peak_rss(pid) - base
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord

from flywheel.bus.topics import dlq_topic
from flywheel.stack.procs import pid_alive

from .stack import UpProcess


def service_pid(stack: UpProcess, service: str) -> int:
    """The PID of the one process running `python -m services.<service>` for this stack."""
    found = [
        p.pid
        for p in stack.descendants()
        if (p.info["cmdline"] or [])[-2:] == ["-m", f"services.{service}"] and pid_alive(p.pid)
    ]
    assert len(found) == 1, f"expected one {service} process, found {found}\n{log_tail(stack, service)}"
    return found[0]


def assert_same_process(stack: UpProcess, service: str, pid: int) -> None:
    """The service still runs as `pid`: it neither crashed nor was restarted by `flywheel up`."""
    now = service_pid(stack, service)
    assert now == pid, f"{service} was restarted (pid {pid} -> {now})\n{log_tail(stack, service)}"


def reset_peak_rss(pid: int) -> int:
    """Resets the process's peak resident memory (VmHWM) to its current size; returns that size in
    bytes. Linux only: writes 5 to /proc/<pid>/clear_refs (same user as the stack)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status_kib(pid, "VmRSS") * 1024


def peak_rss(pid: int) -> int:
    """The process's peak resident memory (VmHWM) in bytes, since it started or the last reset."""
    return _status_kib(pid, "VmHWM") * 1024


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def log_tail(stack: UpProcess, service: str, lines: int = 60) -> str:
    """The end of the service's log under the stack's home, for assertion messages."""
    path = stack.home / "log" / f"{service}.log"
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def refusal(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    """The status code and details of a call expected to fail; AssertionError if it succeeded."""
    try:
        answer = call()
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    raise AssertionError(f"the call was accepted: {str(answer)[:300]!r}")


def produce(stack: UpProcess, topic: str, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]] = ()) -> None:
    """One record onto the stack's broker, as an outside producer would send it."""

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topic, value, key=key, headers=list(headers))
        finally:
            await producer.stop()

    asyncio.run(send())


def dead_letters(stack: UpProcess, topic: str, key: bytes, idle_s: float = 1.0) -> list[ConsumerRecord]:
    """Every record keyed `key` on `<topic>.dlq` so far (read until the topic is idle for idle_s)."""
    return _read_dlq(stack, topic, key, None, idle_s, 30.0)


def dead_letter(stack: UpProcess, topic: str, value: bytes, key: bytes, timeout_s: float = 30.0) -> ConsumerRecord:
    """The record on `<topic>.dlq` whose value is `value`, waiting up to timeout_s for it to arrive."""
    found = _read_dlq(stack, topic, key, value, None, timeout_s)
    assert found, f"no record on {dlq_topic(topic)} after {timeout_s}s (key {key!r})"
    return found[0]


def dlq_headers(record: ConsumerRecord) -> dict[str, bytes]:
    return {k: v for k, v in record.headers}


def _read_dlq(
    stack: UpProcess, topic: str, key: bytes, value: bytes | None, idle_s: float | None, max_s: float
) -> list[ConsumerRecord]:
    async def read() -> list[ConsumerRecord]:
        consumer = AIOKafkaConsumer(dlq_topic(topic), bootstrap_servers=stack.bootstrap, auto_offset_reset="earliest")
        await consumer.start()
        found: list[ConsumerRecord] = []
        try:
            deadline = last = time.monotonic()
            deadline += max_s
            while time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    last = time.monotonic()
                    found += [r for r in records if r.key == key and (value is None or r.value == value)]
                if value is not None and found:
                    break
                if idle_s is not None and time.monotonic() - last >= idle_s:
                    break
        finally:
            await consumer.stop()
        return found

    return asyncio.run(read())
