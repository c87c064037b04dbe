"""Thin helpers for e2e tests: gRPC stubs for a running stack (with its admin credentials), CSV
generation, Kafka reads."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer

from flywheel.v1 import (
    auth_pb2_grpc,
    common_pb2,
    ingestion_pb2,
    ingestion_pb2_grpc,
    monitoring_pb2_grpc,
    registry_pb2_grpc,
    serving_pb2_grpc,
    training_pb2_grpc,
)

from .stack import UpProcess


class Clients:
    def __init__(self, stack: UpProcess) -> None:
        self._channels = {n: stack.channel(n) for n in stack.ports}
        self.ingestion = ingestion_pb2_grpc.IngestionServiceStub(self._channels["ingestion"])
        self.training = training_pb2_grpc.TrainingServiceStub(self._channels["training"])
        self.registry = registry_pb2_grpc.RegistryServiceStub(self._channels["registry"])
        self.monitoring = monitoring_pb2_grpc.MonitoringServiceStub(self._channels["monitoring"])
        self.serving = serving_pb2_grpc.ServingAdminStub(self._channels["serving"])
        self.tokens = auth_pb2_grpc.TokenServiceStub(self._channels["registry"])

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()


def schema(n_features: int = 4, *, label: str = "label") -> common_pb2.Schema:
    fields = [common_pb2.Field(name="id", type=common_pb2.FIELD_TYPE_INT)]
    fields += [
        common_pb2.Field(name=f"f{i}", type=common_pb2.FIELD_TYPE_FLOAT, nullable=True) for i in range(n_features)
    ]
    fields.append(common_pb2.Field(name=label, type=common_pb2.FIELD_TYPE_INT, min=0, max=1))
    return common_pb2.Schema(fields=fields, label_field=label, key_field="id", train_fraction=0.8)


def create_dataset(api: Clients, name: str, **fields: Any) -> None:
    """A dataset with `schema()` and any other Dataset fields given."""
    api.ingestion.CreateDataset(
        ingestion_pb2.CreateDatasetRequest(dataset=ingestion_pb2.Dataset(name=name, schema=schema(), **fields))
    )


def read_split(api: Clients, dataset: str, version: int, split: int) -> Any:
    """One split of a dataset version as a pyarrow Table."""
    import pyarrow as pa  # the e2e helpers that need no table do not pay for the import

    parts = api.ingestion.ReadDatasetVersion(
        ingestion_pb2.ReadDatasetVersionRequest(dataset=dataset, version=version, split=split)
    )
    return pa.concat_tables(pa.ipc.open_stream(io.BytesIO(p.data)).read_all() for p in parts)


def make_csv(rows: int, n_features: int = 4, *, seed: int = 0, start_id: int = 0) -> bytes:
    """A learnable binary problem: the label is a noisy linear function of the features."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, n_features))
    logits = x @ np.linspace(1.5, -1.0, n_features) + rng.normal(scale=0.5, size=rows)
    y = (logits > 0).astype(int)
    out = io.StringIO()
    out.write(",".join(["id", *[f"f{i}" for i in range(n_features)], "label"]) + "\n")
    ids = np.arange(start_id, start_id + rows)
    body = np.column_stack([ids, x, y])
    fmt = ["%d"] + ["%.6f"] * n_features + ["%d"]
    np.savetxt(out, body, delimiter=",", fmt=fmt)
    return out.getvalue().encode()


def ingest_requests(dataset: str, data: bytes, chunk: int = 1 << 20) -> Iterator[ingestion_pb2.IngestDatasetRequest]:
    yield ingestion_pb2.IngestDatasetRequest(
        header=ingestion_pb2.IngestHeader(dataset=dataset, format=ingestion_pb2.DATA_FORMAT_CSV)
    )
    for i in range(0, len(data), chunk):
        yield ingestion_pb2.IngestDatasetRequest(chunk=data[i : i + chunk])


def read_topic(bootstrap: str, topic: str, idle_s: float = 2.0, max_s: float = 30.0) -> list[Any]:
    async def read() -> list[Any]:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
        await consumer.start()
        records: list[Any] = []
        try:
            deadline = time.monotonic() + max_s
            last = time.monotonic()
            while time.monotonic() < deadline and time.monotonic() - last < idle_s:
                for recs in (await consumer.getmany(timeout_ms=300)).values():
                    records.extend(recs)
                    last = time.monotonic()
        finally:
            await consumer.stop()
        return records

    return asyncio.run(read())
