"""The artifact store on S3 (or any S3-compatible store): `FLYWHEEL_ARTIFACT_ROOT=s3://bucket/prefix`.

Same contract as the local store: objects are named by their sha256 and verified on read. The name
is only known once the last byte went up, so an upload streams to a temporary key as a multipart
upload (parts of `PART_SIZE`, hashing as it goes), then is copied server-side to its content key
and the temporary one removed; storing the same bytes twice leaves one object. Reads are ranged
GETs of `PART_SIZE`, so no whole artifact is ever held in memory and a dropped connection costs
one range. Credentials come from the standard AWS chain (environment, shared config and
credentials files, web identity, container and instance metadata); `FLYWHEEL_S3_ENDPOINT_URL`
points at an S3-compatible store (path-style addressing then).
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from typing import TYPE_CHECKING

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from flywheel.artifacts import CHUNK, ChecksumMismatch, CorruptArtifact, check_sha256
from flywheel.errors import InvalidArgument, NotFound, Unavailable

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

PART_SIZE = 8 * 1024 * 1024  # S3 wants >= 5 MiB per part but the last
_COPY_LIMIT = 5 * 1024**3  # CopyObject's limit; larger objects are copied part by part
_MISSING = ("404", "NoSuchKey", "NotFound")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix") (prefix without slashes at its ends)."""
    rest = uri.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise InvalidArgument("an s3:// artifact root needs a bucket: s3://bucket/prefix", field="artifact_root")
    return bucket, prefix.strip("/")


class S3ArtifactStore:
    def __init__(
        self, uri: str, *, endpoint_url: str | None = None, region: str | None = None, path_style: bool | None = None
    ) -> None:
        self.bucket, self.prefix = parse_s3_uri(uri)
        self._endpoint_url = endpoint_url or None
        self._region = region or None
        style = "path" if (path_style if path_style is not None else bool(endpoint_url)) else "auto"
        self._config = AioConfig(
            s3={"addressing_style": style},
            retries={"max_attempts": 5, "mode": "standard"},
            connect_timeout=10,
            read_timeout=60,
        )
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: S3Client | None = None

    def _key(self, sha256: str) -> str:
        check_sha256(sha256)
        name = f"{sha256[:2]}/{sha256}"
        return f"{self.prefix}/{name}" if self.prefix else name

    def uri(self, sha256: str) -> str:
        return f"sha256:{sha256}"

    async def _s3(self) -> S3Client:
        if self._client is None:
            stack = contextlib.AsyncExitStack()
            session = get_session()
            self._client = await stack.enter_async_context(
                session.create_client(
                    "s3", endpoint_url=self._endpoint_url, region_name=self._region, config=self._config
                )
            )
            self._stack = stack
        return self._client

    async def close(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
        self._stack, self._client = None, None

    async def exists(self, sha256: str) -> bool:
        s3 = await self._s3()
        try:
            await s3.head_object(Bucket=self.bucket, Key=self._key(sha256))
            return True
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return False
            raise _unavailable("HEAD", exc) from exc
        except BotoCoreError as exc:
            raise _unavailable("HEAD", exc) from exc

    async def put(self, chunks: AsyncIterable[bytes], *, expected_sha256: str | None = None) -> tuple[str, int]:
        s3 = await self._s3()
        staging = f"{self.prefix}/.uploads/{uuid.uuid4().hex}" if self.prefix else f".uploads/{uuid.uuid4().hex}"
        digest = hashlib.sha256()
        size = 0
        try:
            upload = await s3.create_multipart_upload(Bucket=self.bucket, Key=staging)
        except (ClientError, BotoCoreError) as exc:
            raise _unavailable("upload", exc) from exc
        upload_id = upload["UploadId"]
        parts: list[CompletedPartTypeDef] = []
        buffer = bytearray()
        completed = False
        try:
            async for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                buffer += chunk
                while len(buffer) >= PART_SIZE:
                    await self._upload_part(s3, staging, upload_id, parts, bytes(buffer[:PART_SIZE]))
                    del buffer[:PART_SIZE]
            if buffer or not parts:
                await self._upload_part(s3, staging, upload_id, parts, bytes(buffer))
            sha = digest.hexdigest()
            if expected_sha256 and expected_sha256 != sha:
                raise ChecksumMismatch(f"expected {expected_sha256}, got {sha}", field="sha256")
            await s3.complete_multipart_upload(
                Bucket=self.bucket, Key=staging, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
            completed = True
            if not await self.exists(sha):
                await self._copy(s3, staging, self._key(sha), size)
            return sha, size
        except (ClientError, BotoCoreError) as exc:
            raise _unavailable("upload", exc) from exc
        finally:
            # Whatever happened, no temporary object or unfinished upload is left to be billed.
            with contextlib.suppress(ClientError, BotoCoreError):
                if completed:
                    await s3.delete_object(Bucket=self.bucket, Key=staging)
                else:
                    await s3.abort_multipart_upload(Bucket=self.bucket, Key=staging, UploadId=upload_id)

    async def _upload_part(
        self, s3: S3Client, key: str, upload_id: str, parts: list[CompletedPartTypeDef], body: bytes
    ) -> None:
        number = len(parts) + 1
        answer = await s3.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body)
        parts.append({"ETag": answer["ETag"], "PartNumber": number})

    async def _copy(self, s3: S3Client, source: str, dest: str, size: int) -> None:
        if size <= _COPY_LIMIT:
            await s3.copy_object(Bucket=self.bucket, Key=dest, CopySource={"Bucket": self.bucket, "Key": source})
            return
        upload_id = (await s3.create_multipart_upload(Bucket=self.bucket, Key=dest))["UploadId"]
        parts: list[CompletedPartTypeDef] = []
        step = 512 * 1024 * 1024
        try:
            for number, start in enumerate(range(0, size, step), start=1):
                answer = await s3.upload_part_copy(
                    Bucket=self.bucket,
                    Key=dest,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource={"Bucket": self.bucket, "Key": source},
                    CopySourceRange=f"bytes={start}-{min(start + step, size) - 1}",
                )
                parts.append({"ETag": answer["CopyPartResult"]["ETag"], "PartNumber": number})
            await s3.complete_multipart_upload(
                Bucket=self.bucket, Key=dest, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            with contextlib.suppress(ClientError, BotoCoreError):
                await s3.abort_multipart_upload(Bucket=self.bucket, Key=dest, UploadId=upload_id)
            raise

    async def put_bytes(self, data: bytes) -> tuple[str, int]:
        async def one() -> AsyncIterator[bytes]:
            yield data

        return await self.put(one())

    async def get(self, sha256: str) -> AsyncIterator[bytes]:
        """The object in ranged GETs of PART_SIZE, verified against its name once the last byte is read."""
        s3 = await self._s3()
        key = self._key(sha256)
        digest = hashlib.sha256()
        start = 0
        total: int | None = None
        while total is None or start < total:
            try:
                answer = await s3.get_object(
                    Bucket=self.bucket, Key=key, Range=f"bytes={start}-{start + PART_SIZE - 1}"
                )
            except ClientError as exc:
                if _code(exc) in _MISSING:
                    raise NotFound(f"artifact {sha256} not found", field="sha256") from None
                if _code(exc) == "InvalidRange" and start == 0:
                    total = 0  # an empty object has no byte 0
                    break
                raise _unavailable("download", exc) from exc
            except BotoCoreError as exc:
                raise _unavailable("download", exc) from exc
            total = _total_size(answer.get("ContentRange"), answer["ContentLength"], start)
            async with answer["Body"] as body:
                while piece := await body.read(CHUNK):
                    digest.update(piece)
                    start += len(piece)
                    yield piece
            if answer["ContentLength"] == 0:
                break
        if digest.hexdigest() != sha256:
            raise CorruptArtifact(f"stored object {sha256} is corrupt (hash {digest.hexdigest()})")

    async def get_range(self, sha256: str, start: int, length: int) -> bytes:
        """Bytes [start, start + length) of an object, unverified (a whole-object read verifies)."""
        if start < 0 or length <= 0:
            raise InvalidArgument("need start >= 0 and length > 0", field="range")
        s3 = await self._s3()
        try:
            answer = await s3.get_object(
                Bucket=self.bucket, Key=self._key(sha256), Range=f"bytes={start}-{start + length - 1}"
            )
        except ClientError as exc:
            if _code(exc) in _MISSING:
                raise NotFound(f"artifact {sha256} not found", field="sha256") from None
            raise _unavailable("download", exc) from exc
        async with answer["Body"] as body:
            return bytes(await body.read())

    async def get_bytes(self, sha256: str) -> bytes:
        return b"".join([c async for c in self.get(sha256)])

    async def delete(self, sha256: str) -> None:
        s3 = await self._s3()
        try:
            await s3.delete_object(Bucket=self.bucket, Key=self._key(sha256))
        except (ClientError, BotoCoreError) as exc:
            raise _unavailable("delete", exc) from exc


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _total_size(content_range: str | None, length: int, start: int) -> int:
    # "bytes 0-8388607/123456789": the part after the slash is the object's size.
    if content_range and "/" in content_range:
        tail = content_range.rsplit("/", 1)[1]
        if tail.isdigit():
            return int(tail)
    return start + length


def _unavailable(what: str, exc: BaseException) -> Unavailable:
    return Unavailable(f"artifact store (S3) {what} failed: {type(exc).__name__}: {str(exc)[:300]}")
