"""Content-addressed artifact store: objects are named by their sha256 and verified on read.

`ArtifactStore` is the interface; `LocalArtifactStore` keeps objects under a directory, fanned out
by hash prefix; `flywheel.s3_artifacts.S3ArtifactStore` keeps them in a bucket; `open_store`
picks one from FLYWHEEL_ARTIFACT_ROOT. Hashing and file
IO run in threads (both release the GIL), so a large upload or download never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from flywheel.config import Settings
from flywheel.errors import DataLoss, InvalidArgument, NotFound

if TYPE_CHECKING:
    from hashlib import _Hash

CHUNK = 1024 * 1024


class ChecksumMismatch(InvalidArgument):
    """Uploaded bytes do not hash to what the caller announced: the caller's error."""


class CorruptArtifact(DataLoss):
    """A stored object no longer hashes to its name: the store's fault, never the caller's."""


class ArtifactStore(Protocol):
    async def put(self, chunks: AsyncIterable[bytes], *, expected_sha256: str | None = None) -> tuple[str, int]:
        """Store a stream; returns (sha256, size). Storing the same bytes twice is a no-op."""
        ...

    def get(self, sha256: str) -> AsyncIterator[bytes]:
        """Stream an object back, verifying its hash as it goes."""
        ...

    async def exists(self, sha256: str) -> bool: ...

    def uri(self, sha256: str) -> str: ...

    async def put_bytes(self, data: bytes) -> tuple[str, int]: ...

    async def get_bytes(self, sha256: str) -> bytes: ...

    async def delete(self, sha256: str) -> None:
        """Remove an object (one nothing refers to, e.g. an upload that was refused); absent is fine."""
        ...

    async def close(self) -> None: ...


def check_sha256(sha256: str) -> None:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise InvalidArgument("not a sha256 hex digest", field="sha256")


def open_store(settings: Settings) -> ArtifactStore:
    """The store FLYWHEEL_ARTIFACT_ROOT names: s3://bucket/prefix, or a local directory."""
    if settings.artifacts_on_s3:
        from flywheel.s3_artifacts import S3ArtifactStore  # botocore is only imported where S3 is used

        return S3ArtifactStore(
            settings.artifact_location,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            path_style=settings.s3_path_style,
        )
    return LocalArtifactStore(settings.artifacts_dir)


class LocalArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, sha256: str) -> Path:
        check_sha256(sha256)
        return self.root / sha256[:2] / sha256

    async def delete(self, sha256: str) -> None:
        await asyncio.to_thread(self._path(sha256).unlink, missing_ok=True)

    async def close(self) -> None:
        return None

    def uri(self, sha256: str) -> str:
        return f"sha256:{sha256}"

    async def exists(self, sha256: str) -> bool:
        return await asyncio.to_thread(self._path(sha256).exists)

    async def put(self, chunks: AsyncIterable[bytes], *, expected_sha256: str | None = None) -> tuple[str, int]:
        digest = hashlib.sha256()
        size = 0
        fd, tmp = await asyncio.to_thread(tempfile.mkstemp, dir=self.root, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    await asyncio.to_thread(_hash_and_write, digest, out, chunk)
                await asyncio.to_thread(os.fsync, out.fileno())
            sha = digest.hexdigest()
            if expected_sha256 and expected_sha256 != sha:
                raise ChecksumMismatch(f"expected {expected_sha256}, got {sha}", field="sha256")
            await asyncio.to_thread(self._publish, Path(tmp), sha)
            return sha, size
        finally:
            # Still there only if the upload failed.
            await asyncio.to_thread(Path(tmp).unlink, missing_ok=True)

    def _publish(self, tmp: Path, sha256: str) -> None:
        dest = self._path(sha256)
        dest.parent.mkdir(exist_ok=True)
        os.replace(tmp, dest)  # atomic: readers never see a partial object

    async def put_bytes(self, data: bytes) -> tuple[str, int]:
        async def one() -> AsyncIterator[bytes]:
            yield data

        return await self.put(one())

    async def get(self, sha256: str) -> AsyncIterator[bytes]:
        path = self._path(sha256)
        try:
            f = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError:
            raise NotFound(f"artifact {sha256} not found", field="sha256") from None
        digest = hashlib.sha256()
        try:
            while chunk := await asyncio.to_thread(_read_and_hash, f, digest):
                yield chunk
        finally:
            await asyncio.to_thread(f.close)
        if digest.hexdigest() != sha256:
            raise CorruptArtifact(f"stored object {sha256} is corrupt (hash {digest.hexdigest()})")

    async def get_bytes(self, sha256: str) -> bytes:
        return b"".join([c async for c in self.get(sha256)])


def _hash_and_write(digest: _Hash, out: BinaryIO, chunk: bytes) -> None:
    digest.update(chunk)
    out.write(chunk)


def _read_and_hash(f: BinaryIO, digest: _Hash) -> bytes:
    chunk = f.read(CHUNK)
    digest.update(chunk)
    return chunk
