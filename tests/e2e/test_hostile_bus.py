"""A record the DLQ itself will not take, sent to a real service: ingestion keeps it in its
dead_letters table (original bytes, error, position), its process lives on, and the next good record
still becomes a dataset version. The stack runs with a 1 MiB producer limit
(FLYWHEEL_GRPC_MAX_MESSAGE_MB=1), so a 1.1 MiB record the broker accepted from an outside producer
cannot be forwarded to flywheel.ingest.records.dlq."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from flywheel.bus.topics import Topics
from flywheel.v1 import common_pb2
from flywheel.v1 import ingestion_pb2 as I
from tests.polling import wait_until

from .clients import Clients
from .hostile import assert_same_process, dead_letters, service_pid
from .stack import UpProcess

DATASET = "bus_hostile"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    up = UpProcess(tmp_path_factory.mktemp("hostile_bus") / "home", env={"FLYWHEEL_GRPC_MAX_MESSAGE_MB": "1"})
    up.start()
    yield up
    up.kill_all()


@pytest.fixture(scope="module")
def dataset(api: Clients) -> str:
    fields = [
        common_pb2.Field(name="id", type=common_pb2.FIELD_TYPE_INT),
        common_pb2.Field(name="x", type=common_pb2.FIELD_TYPE_FLOAT),
    ]
    api.ingestion.CreateDataset(
        I.CreateDatasetRequest(
            dataset=I.Dataset(
                name=DATASET,
                schema=common_pb2.Schema(fields=fields, key_field="id", train_fraction=0.5),
                micro_batch=I.MicroBatchPolicy(max_rows=1),
            )
        )
    )
    return DATASET


def _produce_large(stack: UpProcess, value: bytes) -> None:
    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, max_request_size=8 * 1024 * 1024)
        await producer.start()
        try:
            await producer.send_and_wait(Topics.INGEST_RECORDS, value, key=DATASET.encode())
        finally:
            await producer.stop()

    asyncio.run(send())


async def _dead_letter_rows(dsn: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch("SELECT * FROM ingestion.dead_letters WHERE topic = $1", Topics.INGEST_RECORDS)
    finally:
        await conn.close()


def _versions(api: Clients) -> int:
    answer = api.ingestion.ListDatasetVersions(I.ListDatasetVersionsRequest(dataset=DATASET))
    return len(answer.versions)


def test_a_record_the_dlq_refuses_lands_in_the_dead_letters_table(stack: UpProcess, api: Clients, dataset: str):
    pid = service_pid(stack, "ingestion")
    huge = b"{" + b" " * (1024 * 1024 + 100 * 1024) + b"not json"  # undecodable, and too large to forward
    _produce_large(stack, huge)

    rows = wait_until(lambda: asyncio.run(_dead_letter_rows(stack.dsn)), 60, "the record in ingestion.dead_letters")
    row = rows[0]
    assert bytes(row["payload"]) == huge, "the original bytes are kept"
    assert (row["origin"], row["consumer"], row["error_type"]) == (
        "consumer",
        "flywheel-ingestion-batch",
        "MalformedEvent",
    )
    assert bytes(row["key"]) == DATASET.encode()
    headers = dict(json.loads(row["headers"]))
    assert headers["error.type"] == "MalformedEvent" and headers["source.topic"] == Topics.INGEST_RECORDS
    assert not [r for r in dead_letters(stack, Topics.INGEST_RECORDS, DATASET.encode(), idle_s=0.5)]

    assert_same_process(stack, "ingestion", pid)
    before = _versions(api)
    _produce_large(stack, json.dumps({"id": 1, "x": 0.5}).encode())
    wait_until(lambda: _versions(api) > before, 30, "a version from the good record")
    assert len(asyncio.run(_dead_letter_rows(stack.dsn))) == 1, "the refused record is stored once"
    assert_same_process(stack, "ingestion", pid)
