"""The S3 artifact store against a real S3-compatible server (moto in server mode): content-addressed,
streamed up in parts and down in ranges, verified on read, nothing left behind by a failed upload."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from collections.abc import AsyncIterator

import pytest
from aiobotocore.session import get_session

from flywheel.artifacts import ChecksumMismatch, CorruptArtifact, open_store
from flywheel.config import Settings
from flywheel.errors import NotFound
from flywheel.s3_artifacts import PART_SIZE, S3ArtifactStore


async def _chunks(data: bytes, size: int = 1024 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def _keys(endpoint: str, bucket: str) -> list[str]:
    async with get_session().create_client("s3", endpoint_url=endpoint) as s3:
        answer = await s3.list_objects_v2(Bucket=bucket)
        uploads = await s3.list_multipart_uploads(Bucket=bucket)
        assert not uploads.get("Uploads"), "no unfinished multipart upload is left behind"
        return sorted(o["Key"] for o in answer.get("Contents", []))


@pytest.fixture
async def store(s3, unique):
    bucket = f"fw-{unique}"
    s3.create_bucket(bucket)
    settings = Settings(artifact_root=f"s3://{bucket}/team/artifacts", s3_endpoint_url=s3.endpoint)
    opened = open_store(settings)
    assert isinstance(opened, S3ArtifactStore)
    yield opened
    await opened.close()


async def test_round_trip_is_content_addressed_and_multipart(store, s3):
    data = os.urandom(2 * PART_SIZE + 12345)  # three parts up, three ranges down
    sha, size = await store.put(_chunks(data))
    assert (sha, size) == (hashlib.sha256(data).hexdigest(), len(data))
    assert await store.exists(sha)
    assert store.uri(sha) == f"sha256:{sha}"

    pieces = [p async for p in store.get(sha)]
    assert b"".join(pieces) == data
    assert max(len(p) for p in pieces) <= PART_SIZE
    assert await store.get_range(sha, PART_SIZE - 3, 10) == data[PART_SIZE - 3 : PART_SIZE + 7]

    again, _ = await store.put(_chunks(data))  # the same bytes twice: one object
    assert again == sha
    assert await _keys(s3.endpoint, store.bucket) == [f"team/artifacts/{sha[:2]}/{sha}"]


async def test_empty_and_small_objects(store):
    for data in (b"", b"x"):
        sha, size = await store.put_bytes(data)
        assert size == len(data)
        assert await store.get_bytes(sha) == data


async def test_upload_memory_stays_near_one_part(store):
    chunk = os.urandom(1024 * 1024)

    async def forty_mib() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield chunk

    tracemalloc.start()
    try:
        _, size = await store.put(forty_mib())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size == 40 * 1024 * 1024
    assert peak < 5 * PART_SIZE, f"peak {peak / 2**20:.0f} MiB while uploading 40 MiB"


async def test_wrong_announced_checksum_stores_nothing(store, s3):
    with pytest.raises(ChecksumMismatch):
        await store.put(_chunks(b"some model bytes"), expected_sha256="0" * 64)
    assert await _keys(s3.endpoint, store.bucket) == []


async def test_a_corrupted_object_is_refused_on_read(store, s3):
    sha, _ = await store.put_bytes(b"the original bytes")
    async with get_session().create_client("s3", endpoint_url=s3.endpoint) as client:
        await client.put_object(Bucket=store.bucket, Key=store._key(sha), Body=b"tampered bytes!!!!")
    with pytest.raises(CorruptArtifact):
        await store.get_bytes(sha)


async def test_missing_and_deleted_objects(store):
    with pytest.raises(NotFound):
        await store.get_bytes("a" * 64)
    assert not await store.exists("a" * 64)
    sha, _ = await store.put_bytes(b"short-lived")
    await store.delete(sha)
    assert not await store.exists(sha)
