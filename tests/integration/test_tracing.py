"""One trace follows a gRPC call through the outbox and Kafka into the consumer, and logs carry it."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import asyncpg

from flywheel.stack.procs import free_port
from flywheel.telemetry import read_spans
from tests.polling import wait_until

from .harness import EchoProcess, await_for


async def test_consumer_span_and_logs_share_the_trace_of_the_grpc_call(infra, unique, tmp_path):
    name, topic = f"echo_{unique}", f"test.trace.{unique}"
    spans_file = tmp_path / "spans.jsonl"
    metrics_port = free_port()
    echo = EchoProcess(
        infra.settings(),
        name,
        topic,
        tmp_path / "echo.log",
        FLYWHEEL_SPANS_FILE=str(spans_file),
        FLYWHEEL_METRICS_PORT=str(metrics_port),
    )
    echo.start()
    try:
        event_id = await echo.emit("traced-1")

        async def seen() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(infra.dsn)
            try:
                return await conn.fetch(f'SELECT trace_id FROM "{name}".echo_seen WHERE event_id = $1', event_id)
            finally:
                await conn.close()

        handled_trace = (await await_for(seen, 30, "the event to be handled"))[0]["trace_id"]
        exposition = await asyncio.to_thread(_scrape, metrics_port)
    finally:
        echo.stop()  # flushes the span processor

    spans = wait_until(lambda: read_spans(spans_file), 10, "spans in the JSONL file")
    by_id = {s["span_id"]: s for s in spans}
    server = [s for s in spans if s["name"] == "/flywheel.test.Echo/Emit" and s["kind"] == "SERVER"]
    assert len(server) == 1, [s["name"] for s in spans]
    trace_id = server[0]["trace_id"]
    assert handled_trace == trace_id, "the handler ran inside the trace of the gRPC call"

    consumer = [s for s in spans if s["name"] == f"{topic} process" and s["kind"] == "CONSUMER"]
    assert len(consumer) == 1 and consumer[0]["trace_id"] == trace_id
    # Walk parent links from the consumer span up to the gRPC server span: one unbroken chain.
    chain, span = [], consumer[0]
    while span["parent_span_id"]:
        span = by_id[span["parent_span_id"]]
        chain.append(span["name"])
    assert span is server[0] or span["span_id"] == server[0]["span_id"], chain
    assert any(n.startswith("outbox publish") for n in chain), chain
    assert any("send" in n for n in chain), chain  # the aiokafka producer span carried the context

    # The same hop is counted on the Prometheus endpoint.
    samples = {line.split("{")[0]: line for line in exposition.splitlines() if not line.startswith("#")}
    assert any(k.startswith("flywheel_outbox_published") for k in samples), exposition
    processed = [v for k, v in samples.items() if k.startswith("flywheel_consumer_processed")]
    assert processed and f'topic="{topic}"' in processed[0] and processed[0].endswith(" 1.0"), processed

    handled_logs = [json.loads(line) for line in echo.log_lines() if '"echo handled"' in line]
    assert len(handled_logs) == 1
    assert handled_logs[0]["trace_id"] == trace_id
    assert handled_logs[0]["event_id"] == event_id and handled_logs[0]["service"] == name


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()
