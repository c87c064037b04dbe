"""A minimal service built only from the shared library, run as a real process by the tests.

It has one RPC, /flywheel.test.Echo/Emit (request and response are raw UTF-8 bytes), that
writes a state row and stages a `Feedback` event on $ECHO_TOPIC in the same transaction, and
one handler that records each event it consumes. It lets the tests exercise outbox, inbox,
relay, tracing and logging end to end before the real services have behaviour of their own.
Emit is in the role table (registered here, as an extension service would) for producers and
admins, so callers need a token like any other RPC.

ECHO_KILL_AFTER_COMMIT=1 makes the process SIGKILL itself right after the commit, before the
relay can publish. A name starting with "rollback" fails after staging, so nothing commits.
A name starting with "linger" also starts a task on ctx.tasks that never ends by itself; the
shutdown hook writes what it saw of those tasks to $ECHO_SHUTDOWN_FILE, if set.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import asyncpg
import grpc
from google.protobuf.message import Message
from opentelemetry import trace

from flywheel.app import ServiceContext, ServiceDefinition, run
from flywheel.auth import roles
from flywheel.bus import EventContext, enqueue
from flywheel.bus.serde import new_meta
from flywheel.bus.topics import register_event_type
from flywheel.errors import InvalidArgument
from flywheel.grpc import GrpcServer
from flywheel.logging import get_logger
from flywheel.v1 import events_pb2

TOPIC = os.environ["ECHO_TOPIC"]
EMIT = "/flywheel.test.Echo/Emit"
register_event_type(TOPIC, events_pb2.Feedback)
roles.register(EMIT, frozenset({roles.PRODUCER, roles.ADMIN}))
log = get_logger("echo")


def register(server: GrpcServer, ctx: ServiceContext) -> list[str]:
    async def emit(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        name = request.decode()
        async with ctx.pool.acquire() as conn, conn.transaction():
            await conn.execute("INSERT INTO echo_state (name) VALUES ($1)", name)
            event = events_pb2.Feedback(meta=new_meta("echo"), model_name=name)
            event_id = await enqueue(conn, TOPIC, name, event)
            if name.startswith("rollback"):
                raise InvalidArgument("rollback requested", field="name")
        if name.startswith("linger"):
            ctx.tasks.spawn(_linger(name), name=name)
        if os.environ.get("ECHO_KILL_AFTER_COMMIT"):
            os.kill(os.getpid(), signal.SIGKILL)
        log.info("echo emitted", name=name, event_id=event_id)
        return event_id.encode()

    handler = grpc.unary_unary_rpc_method_handler(emit)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("flywheel.test.Echo", {"Emit": handler}),))
    return []


LINGERING: dict[str, str] = {}


async def _linger(name: str) -> None:
    LINGERING[name] = "running"
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        LINGERING[name] = "cancelled"
        raise


async def shutdown(ctx: ServiceContext) -> None:
    """Records, for the tests, that the hook ran after the owned tasks were cancelled and awaited."""
    path = os.environ.get("ECHO_SHUTDOWN_FILE")
    if path:
        # The pool is still open: the hook runs before resources close.
        db_ok = await ctx.pool.fetchval("SELECT 1") == 1
        text = json.dumps({"tasks": LINGERING, "running": len(ctx.tasks), "db_ok": db_ok})
        await asyncio.to_thread(Path(path).write_text, text)


def handlers(ctx: ServiceContext) -> dict:
    async def on_event(conn: asyncpg.Connection, event: Message, ectx: EventContext) -> None:
        span = trace.get_current_span().get_span_context()
        await conn.execute(
            "INSERT INTO echo_seen (event_id, name, trace_id) VALUES ($1, $2, $3)",
            ectx.event_id,
            event.model_name,  # type: ignore[attr-defined]
            format(span.trace_id, "032x"),
        )
        log.info("echo handled", name=event.model_name)  # type: ignore[attr-defined]

    return {TOPIC: on_event}


if __name__ == "__main__":
    run(
        ServiceDefinition(
            name=os.environ.get("ECHO_NAME", "echo"),  # also its schema: tests keep theirs apart
            register=register,
            handlers=handlers,
            migrations=Path(__file__).parent / "echo_migrations",
            shutdown=shutdown,
        )
    )
