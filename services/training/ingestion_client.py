"""What training asks of ingestion: datasets and their versions (as run inputs)."""

from __future__ import annotations

from flywheel import clients
from flywheel.config import Settings
from flywheel.v1 import common_pb2, ingestion_pb2
from services.training.queue import DataVersion


async def get_dataset(settings: Settings, name: str) -> ingestion_pb2.Dataset:
    return await clients.dataset(settings, name)


async def get_data_version(settings: Settings, name: str, version: int = 0) -> DataVersion:
    v = await clients.dataset_version(settings, common_pb2.DatasetRef(name=name, version=version))
    return DataVersion(
        name=v.ref.name,
        version=v.ref.version,
        content_hash=v.ref.content_hash,
        data_uri=v.data_uri,
        schema=v.schema,
        parents=[v.parent_version] if v.parent_version else [],
    )
