"""The registry's catalog: registering immutable model versions and reading them back, with their
artifacts, tags, archive state, promotion policies, lineage and the audit log.

Transport-free: plain values and protobuf messages in and out, domain errors (flywheel.errors) for
what was wrong. SQL lives in store.py; how aliases and production move lives in promoter.py.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg

from flywheel import clients
from flywheel.artifacts import ArtifactStore, check_sha256
from flywheel.bus import Topics, enqueue
from flywheel.bus.serde import new_meta
from flywheel.config import Settings
from flywheel.errors import FlywheelError, InvalidArgument, NotFound, ResourceExhausted
from flywheel.logging import get_logger
from flywheel.v1 import common_pb2, events_pb2, registry_pb2
from services.registry import rules, store
from services.registry.model_check import check_declared, validate_onnx, validate_onnx_file

log = get_logger(__name__)
R = registry_pb2


@dataclass(frozen=True)
class ArtifactPiece:
    """One slice of a version's artifact as DownloadArtifact streams it."""

    version: registry_pb2.ModelVersion
    data: bytes
    offset: int
    first: bool


class Catalog:
    def __init__(self, pool: asyncpg.Pool, artifacts: ArtifactStore, settings: Settings) -> None:
        self._pool = pool
        self._artifacts = artifacts
        self._settings = settings
        self._max_artifact_bytes = settings.registry_max_artifact_mb * 1024 * 1024

    # -- registration ---------------------------------------------------------------------

    async def register(
        self, header: registry_pb2.RegisterModelHeader, chunks: AsyncIterator[bytes], who: str
    ) -> tuple[registry_pb2.ModelVersion, bool]:
        """Registers version n+1 of the model from the header and the artifact's bytes (or the
        artifact already stored at header.artifact_uri). Returns the version and whether it is new:
        a retry with the same idempotency key gets the first registration's version back."""
        name = rules.check_name(header.model_name, "header.model_name")
        fmt = rules.check_format(header.format)
        rules.check_signature(header.signature)
        rules.check_tags(header.tags, "header.tags")
        rules.check_text(header.description, "header.description")
        rules.check_metrics(header.metrics, "header.metrics")
        await self._check_calibration(header)
        if header.HasField("promotion_policy"):
            rules.check_policy(header.promotion_policy, "header.promotion_policy")
        check_declared(header)

        if header.idempotency_key:
            async with self._pool.acquire() as conn:
                existing = await store.registered_with_key(conn, name, header.idempotency_key)
            if existing is not None:  # a retried registration: same answer, nothing new
                return existing, False

        # Model files come from outside: only a self-contained ONNX model gets a version (and is stored).
        sha, size = await self._store_artifact(header, _capped(chunks, self._max_artifact_bytes))
        async with self._pool.acquire() as conn, conn.transaction():
            await store.add_model(conn, name)
            model = await store.ensure_model(conn, name, lock=True)
            if header.idempotency_key:  # re-check under the model lock: a concurrent retry may have won
                existing = await store.registered_with_key(conn, name, header.idempotency_key)
                if existing is not None:
                    return existing, False
            version = await store.next_version(conn, name)
            if header.HasField("promotion_policy") and model["policy"] is None:
                await store.save_policy(conn, name, header.promotion_policy)
            pending = registry_pb2.PromotionDecision(
                state=R.PROMOTION_STATE_PENDING_CHECKS, reason="waiting for serving's staging checks", actor="registry"
            )
            pending.time.GetCurrentTime()
            await store.insert_version(
                conn,
                header,
                name=name,
                version=version,
                checksum=sha,
                size_bytes=size,
                fmt=fmt,
                metric_values=rules.metric_values(header.metrics),
                created_by=who,
                promotion=pending,
            )
            await store.audit(
                conn,
                actor=who,
                action=R.AUDIT_ACTION_REGISTERED,
                name=name,
                version=version,
                details={"checksum": sha, "run_id": header.lineage.run_id},
            )
            event = events_pb2.ModelRegistered(
                meta=new_meta("registry", causation_id=header.lineage.run_id),
                model=common_pb2.ModelRef(name=name, version=version),
                checksum=sha,
                artifact_uri=f"sha256:{sha}",
                signature=header.signature,
                metrics=header.metrics,
                lineage=header.lineage,
                tags=dict(header.tags),
                task=header.task,
                size_bytes=size,
            )
            await enqueue(conn, Topics.MODEL_REGISTERED, name, event)
            mv = await store.get_version(conn, name, version)
        log.info("model registered", model=name, version=version, checksum=sha)
        return mv, True

    async def _check_calibration(self, header: registry_pb2.RegisterModelHeader) -> None:
        """A calibration sample is named by a stored artifact's URI (monitoring checks its content)."""
        uri = header.calibration_uri
        if not uri:
            return
        sha = uri.removeprefix("sha256:")
        try:
            if sha == uri:
                raise InvalidArgument("no sha256: prefix")
            check_sha256(sha)
        except InvalidArgument as exc:
            raise InvalidArgument('must be "sha256:" and 64 hex digits', field="header.calibration_uri") from exc
        if header.task == common_pb2.TASK_REGRESSION:
            raise InvalidArgument("a regression model has no calibration sample", field="header.calibration_uri")
        if not await self._artifacts.exists(sha):
            raise NotFound("no artifact at that URI", field="header.calibration_uri")

    async def _store_artifact(
        self, header: registry_pb2.RegisterModelHeader, chunks: AsyncIterator[bytes]
    ) -> tuple[str, int]:
        """The validated artifact's (sha256, size): one already stored (artifact_uri), or the upload,
        stored only once it has passed validation."""
        if header.artifact_uri:
            sha = header.artifact_uri.removeprefix("sha256:")
            if not await self._artifacts.exists(sha):
                raise NotFound(f"no artifact at {header.artifact_uri}", field="header.artifact_uri")
            if header.sha256 and header.sha256 != sha:
                raise InvalidArgument("does not match artifact_uri", field="header.sha256")
            size = sum([len(c) async for c in self._artifacts.get(sha)])  # verifies the stored bytes too
            if size > self._max_artifact_bytes:
                raise ResourceExhausted(f"artifact is {size} bytes; the limit is {self._max_artifact_bytes}")
            await asyncio.to_thread(validate_onnx, await self._artifacts.get_bytes(sha))
            return sha, size
        # Spooled to a private file and validated there before it enters the store: a refused upload
        # leaves nothing behind, and an artifact the store already holds (content-addressed, maybe
        # another version's or a dataset's) is never touched. The upload is never held in memory
        # whole but while it is parsed.
        spool = Path(await asyncio.to_thread(_spool_file, self._settings.home / "tmp"))
        try:
            size = await _spool(chunks, spool)
            if size == 0:
                raise InvalidArgument("no artifact bytes and no artifact_uri", field="chunk")
            await asyncio.to_thread(validate_onnx_file, spool)
            return await self._artifacts.put(_read_chunks(spool), expected_sha256=header.sha256 or None)
        finally:
            await asyncio.to_thread(spool.unlink, True)

    # -- reads ----------------------------------------------------------------------------

    async def version(self, name: str, version: int = 0, alias: str = "") -> registry_pb2.ModelVersion:
        """A version by number, by alias, or (neither) the latest."""
        async with self._pool.acquire() as conn:
            await store.ensure_model(conn, name)
            v = await store.resolve(conn, name, version, alias)
            return await store.get_version(conn, name, v)

    async def models(self, alias: str, limit: int, offset: int) -> list[registry_pb2.Model]:
        async with self._pool.acquire() as conn:
            return await store.list_models(conn, alias, limit, offset)

    async def versions(
        self, name: str, include_archived: bool, limit: int, offset: int
    ) -> list[registry_pb2.ModelVersion]:
        """The model's versions, newest first."""
        async with self._pool.acquire() as conn:
            await store.ensure_model(conn, name)
            return await store.list_versions(conn, name, include_archived, limit, offset)

    async def search(
        self, request: registry_pb2.SearchModelVersionsRequest, limit: int, offset: int
    ) -> list[registry_pb2.ModelVersion]:
        sql, args = store.search_query(request, limit, offset)  # rejects a malformed filter before any I/O
        async with self._pool.acquire() as conn:
            return await store.search_versions(conn, sql, args)

    async def download(self, name: str, version: int, alias: str, chunk_size: int) -> AsyncIterator[ArtifactPiece]:
        """The version's artifact in pieces of `chunk_size` bytes (the last may be shorter; an empty
        artifact is one empty piece), so each fits one message."""
        async with self._pool.acquire() as conn:
            await store.ensure_model(conn, name)
            v = await store.resolve(conn, name, version, alias)
            mv = await store.get_version(conn, name, v)
        offset = 0
        buffer = b""
        first = True
        async for piece in self._artifacts.get(mv.checksum):
            buffer += piece
            while len(buffer) >= chunk_size:
                out, buffer = buffer[:chunk_size], buffer[chunk_size:]
                yield ArtifactPiece(mv, out, offset, first)
                offset += len(out)
                first = False
        if buffer or first:
            yield ArtifactPiece(mv, buffer, offset, first)

    # -- tags, archive --------------------------------------------------------------------

    async def set_tags(
        self, name: str, version: int, tags: Mapping[str, str], remove_keys: list[str], who: str
    ) -> registry_pb2.ModelVersion:
        rules.check_tags(tags)
        async with self._pool.acquire() as conn, conn.transaction():
            await store.get_version(conn, name, version)
            await store.update_tags(conn, name, version, tags, remove_keys)
            await store.audit(
                conn,
                actor=who,
                action=R.AUDIT_ACTION_TAGS_SET,
                name=name,
                version=version,
                details={"set": dict(tags), "removed": remove_keys},
            )
            return await store.get_version(conn, name, version)

    async def archive(self, name: str, version: int, reason: str, who: str) -> registry_pb2.ModelVersion:
        if not reason:
            raise InvalidArgument("archiving needs a reason", field="reason")
        async with self._pool.acquire() as conn, conn.transaction():
            mv = await store.get_version(conn, name, version)
            rules.check_archivable(list(mv.aliases))
            await store.archive_version(conn, name, version, reason)
            await store.audit(
                conn, actor=who, action=R.AUDIT_ACTION_ARCHIVED, name=name, version=version, reason=reason
            )
            return await store.get_version(conn, name, version)

    # -- lineage, audit, policies -----------------------------------------------------------

    async def lineage(self, name: str, version: int) -> tuple[registry_pb2.ModelVersion, list[common_pb2.DatasetRef]]:
        """The version (0: the latest) and the ancestry of the dataset version it was trained on."""
        async with self._pool.acquire() as conn:
            await store.ensure_model(conn, name)
            v = await store.resolve(conn, name, version)
            mv = await store.get_version(conn, name, v)
        return mv, await self._dataset_ancestry(mv.lineage)

    async def _dataset_ancestry(self, lineage: common_pb2.Lineage) -> list[common_pb2.DatasetRef]:
        """The training dataset version and its parents, nearest first, asked of ingestion.

        Ingestion unreachable or failing: what training recorded at registration. A version ingestion
        does not know ends the walk with the versions it did confirm.
        """
        if not lineage.dataset.name:
            return []
        refs: list[common_pb2.DatasetRef] = []
        version = lineage.dataset.version
        while version:
            ref = common_pb2.DatasetRef(name=lineage.dataset.name, version=version)
            try:
                found = await clients.dataset_version(self._settings, ref)
            except NotFound:
                log.warning("lineage: ingestion has no such dataset version", dataset=ref.name, version=version)
                return refs
            except FlywheelError as exc:  # Unavailable, or any answer but the version
                log.warning("lineage: ingestion unavailable", error=str(exc))
                return [lineage.dataset] + [
                    common_pb2.DatasetRef(name=lineage.dataset.name, version=p) for p in lineage.parent_dataset_versions
                ]
            refs.append(found.ref)
            version = found.parent_version
        return refs

    async def audit_events(
        self,
        *,
        name: str,
        version: int,
        action: registry_pb2.AuditAction.ValueType,
        since: datetime | None,
        limit: int,
        offset: int,
    ) -> list[registry_pb2.AuditEvent]:
        async with self._pool.acquire() as conn:
            return await store.list_audit_events(
                conn, name=name, version=version, action=action, since=since, limit=limit, offset=offset
            )

    async def set_policy(
        self, model_name: str, policy: common_pb2.PromotionPolicy, who: str
    ) -> common_pb2.PromotionPolicy:
        name = rules.check_name(model_name, "model_name")
        rules.check_policy(policy)
        async with self._pool.acquire() as conn, conn.transaction():
            await store.save_policy(conn, name, policy)
            await store.audit(
                conn,
                actor=who,
                action=R.AUDIT_ACTION_POLICY_SET,
                name=name,
                details={"metric": policy.metric, "min_improvement": policy.min_improvement},
            )
        return policy

    async def policy(self, model_name: str) -> common_pb2.PromotionPolicy:
        async with self._pool.acquire() as conn:
            row = await store.ensure_model(conn, model_name)
        if row["policy"] is None:
            raise NotFound(f"model {model_name!r} has no promotion policy", field="model_name")
        return common_pb2.PromotionPolicy.FromString(row["policy"])


def _spool_file(directory: Path) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    fd, path = tempfile.mkstemp(dir=directory, prefix="register-", suffix=".onnx")
    os.close(fd)
    return path


async def _spool(chunks: AsyncIterator[bytes], path: Path) -> int:
    """Writes the chunks to `path`; their total size."""
    size = 0
    with path.open("wb") as out:
        async for chunk in chunks:
            size += len(chunk)
            await asyncio.to_thread(out.write, chunk)
    return size


async def _read_chunks(path: Path, chunk_size: int = 1024 * 1024) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while chunk := await asyncio.to_thread(f.read, chunk_size):
            yield chunk


async def _capped(chunks: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """The upload's chunks, refused as soon as they add up to more than `limit` bytes."""
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise ResourceExhausted(
                f"artifact exceeds {limit} bytes (FLYWHEEL_REGISTRY_MAX_ARTIFACT_MB)", field="chunk"
            )
        yield chunk
