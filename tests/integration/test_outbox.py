"""Transactional outbox: committed events survive a SIGKILL before publishing; rollbacks publish nothing."""

from __future__ import annotations

import signal

import asyncpg
import grpc
import pytest

from flywheel.bus.topics import dlq_topic
from flywheel.v1 import events_pb2

from .harness import EchoProcess, await_for, read_topic


async def _fetch(dsn: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def test_event_committed_before_sigkill_is_published_after_restart(infra, unique, tmp_path):
    name, topic = f"echo_{unique}", f"test.outbox.{unique}"
    echo = EchoProcess(infra.settings(), name, topic, tmp_path / "echo.log")
    echo.start(ECHO_KILL_AFTER_COMMIT="1")

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await echo.emit("m1")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # the process died mid-call
    assert echo.proc.wait(10) == -signal.SIGKILL

    rows = await _fetch(infra.dsn, f'SELECT event_id, sent_at FROM "{name}".outbox')
    assert len(rows) == 1 and rows[0]["sent_at"] is None, "the commit holds the event, unpublished"
    event_id = rows[0]["event_id"]
    assert await _fetch(infra.dsn, f'SELECT 1 FROM "{name}".echo_state WHERE name = $1', "m1")

    echo.start()  # restart without the kill switch: the relay publishes what the commit staged
    try:
        seen = await await_for(
            lambda: _fetch(infra.dsn, f'SELECT name FROM "{name}".echo_seen WHERE event_id = $1', event_id),
            30,
            "the event to reach the consumer after restart",
        )
        assert seen[0]["name"] == "m1"
        records = await read_topic(infra.broker.bootstrap, topic)
        published = [events_pb2.Feedback.FromString(r.value) for r in records]
        assert [e.meta.event_id for e in published] == [event_id]
        assert (await _fetch(infra.dsn, f'SELECT sent_at FROM "{name}".outbox'))[0]["sent_at"] is not None
    finally:
        echo.stop()


async def test_rolled_back_transaction_publishes_nothing(infra, unique, tmp_path):
    name, topic = f"echo_{unique}", f"test.rollback.{unique}"
    echo = EchoProcess(infra.settings(), name, topic, tmp_path / "echo.log").start()
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await echo.emit("rollback-1")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "name: rollback requested" in err.value.details()

        good_id = await echo.emit("kept-1")
        await await_for(
            lambda: _fetch(infra.dsn, f'SELECT 1 FROM "{name}".echo_seen WHERE event_id = $1', good_id),
            30,
            "the committed event to be consumed",
        )
        names = [
            events_pb2.Feedback.FromString(r.value).model_name for r in await read_topic(infra.broker.bootstrap, topic)
        ]
        assert names == ["kept-1"]
        outbox = await _fetch(infra.dsn, f'SELECT topic FROM "{name}".outbox')
        assert len(outbox) == 1
        assert not await _fetch(infra.dsn, f'SELECT 1 FROM "{name}".echo_state WHERE name = $1', "rollback-1")
        assert await read_topic(infra.broker.bootstrap, dlq_topic(topic), idle_s=0.5) == []
    finally:
        echo.stop()
