from __future__ import annotations

import hashlib

import pytest

from flywheel.artifacts import ChecksumMismatch, CorruptArtifact, LocalArtifactStore
from flywheel.errors import InvalidArgument, NotFound


async def _chunks(*parts: bytes):
    for p in parts:
        yield p


async def test_put_get_round_trip_is_content_addressed(tmp_path):
    store = LocalArtifactStore(tmp_path)
    data = [b"a" * 1000, b"b" * 3000]
    sha, size = await store.put(_chunks(*data))
    assert sha == hashlib.sha256(b"".join(data)).hexdigest() and size == 4000
    assert await store.get_bytes(sha) == b"".join(data)
    assert store.uri(sha) == f"sha256:{sha}"
    again, _ = await store.put(_chunks(b"".join(data)))  # same bytes, same object
    assert again == sha
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [sha]


async def test_expected_checksum_is_enforced(tmp_path):
    store = LocalArtifactStore(tmp_path)
    with pytest.raises(ChecksumMismatch):
        await store.put(_chunks(b"payload"), expected_sha256="0" * 64)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [], "a rejected upload leaves nothing"


async def test_corruption_is_detected_on_read(tmp_path):
    store = LocalArtifactStore(tmp_path)
    sha, _ = await store.put_bytes(b"model bytes")
    (tmp_path / sha[:2] / sha).write_bytes(b"tampered!!!")
    with pytest.raises(CorruptArtifact):
        await store.get_bytes(sha)


async def test_missing_and_invalid_names(tmp_path):
    store = LocalArtifactStore(tmp_path)
    with pytest.raises(NotFound):
        await store.get_bytes("a" * 64)
    with pytest.raises(InvalidArgument):
        await store.get_bytes("../../etc/passwd")
