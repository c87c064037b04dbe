"""Loaded models and the traffic between them.

A `Deployment` holds a model's production slot, an optional challenger (canary or shadow) and
staging slots for candidates under check. Swapping production is one reference assignment:
requests already running keep the slot they resolved and finish on it; the old slot is released
only after its in-flight count drops to zero.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeAlias

import numpy as np

from flywheel import clients
from flywheel.config import Settings
from flywheel.errors import InvalidArgument, NotFound
from flywheel.logging import get_logger
from flywheel.tasks import TaskSet
from flywheel.v1 import common_pb2, registry_pb2, serving_pb2
from services.serving.batching import DynamicBatcher, Timing
from services.serving.batching_policy import BatchingPolicy, policy_for
from services.serving.runtime import OnnxModel, execution_providers
from services.serving.stats import ModelStats

log = get_logger(__name__)
S = serving_pb2
Role: TypeAlias = common_pb2.ServingRole.ValueType
PRODUCTION, CANARY, SHADOW, STAGING = (
    common_pb2.SERVING_ROLE_PRODUCTION,
    common_pb2.SERVING_ROLE_CANARY,
    common_pb2.SERVING_ROLE_SHADOW,
    common_pb2.SERVING_ROLE_STAGING,
)


@dataclass
class Slot:
    name: str
    version: int
    role: Role
    checksum: str
    model: OnnxModel
    batcher: DynamicBatcher
    signature: common_pb2.ModelSignature
    loaded_at: datetime
    batching: BatchingPolicy
    stats: ModelStats = field(default_factory=ModelStats)
    state: serving_pb2.SlotState.ValueType = S.SLOT_STATE_READY
    inflight: int = 0
    errors: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event)
    # Read on every logged request: plain tuples, not protobuf repeated fields.
    feature_names: tuple[str, ...] = field(init=False)
    class_labels: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.feature_names = tuple(self.signature.feature_names)
        self.class_labels = tuple(self.signature.class_labels)

    async def infer(self, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], Timing]:
        self.inflight += 1
        self._idle.clear()
        try:
            return await self.batcher.infer(feeds)
        except Exception:
            self.errors += 1
            raise
        finally:
            self.inflight -= 1
            if self.inflight == 0:
                self._idle.set()

    async def retire(self) -> None:
        """Wait for the calls in flight, then free the session."""
        self.state = S.SLOT_STATE_DRAINING
        if self.inflight:
            await self._idle.wait()
        await self.batcher.close()

    def to_proto(self) -> serving_pb2.ModelSlot:
        p50, p99 = self.stats.latency_percentiles()
        slot = S.ModelSlot(
            role=self.role,
            model=common_pb2.ModelRef(name=self.name, version=self.version),
            state=self.state,
            execution_provider=self.model.provider,
            checksum=self.checksum,
            inflight_requests=self.inflight,
            stats=S.SlotStats(
                request_count=self.stats.success_count + self.errors,
                error_count=self.errors,
                latency_p50_ms=p50,
                latency_p99_ms=p99,
            ),
        )
        slot.loaded_at.FromDatetime(self.loaded_at)
        return slot


@dataclass
class Deployment:
    name: str
    production: Slot | None = None
    challenger: Slot | None = None
    mode: serving_pb2.TrafficMode.ValueType = S.TRAFFIC_MODE_PRODUCTION_ONLY
    percent: float = 0.0
    updated_by: str = ""
    updated_at: datetime | None = None
    staging: dict[int, Slot] = field(default_factory=dict)

    def slots(self) -> Iterator[Slot]:
        for slot in (self.production, self.challenger, *self.staging.values()):
            if slot is not None:
                yield slot


class ModelManager:
    def __init__(self, settings: Settings, tasks: TaskSet | None = None) -> None:
        self._settings = settings
        self.providers = execution_providers(settings.serving_provider)
        self.batching = BatchingPolicy.from_settings(settings)  # the server's; a version's tags may override it
        self.deployments: dict[str, Deployment] = {}
        self._pinned: dict[tuple[str, int], Slot] = {}  # versions asked for explicitly
        self._locks: dict[str, asyncio.Lock] = {}
        # Retirements run as owned tasks (the service's set, awaited at stop); without one, our own.
        self._tasks = tasks if tasks is not None else TaskSet()
        self._own_tasks = tasks is None
        # Swapped out and waiting for their last calls, by id (slots are unhashable dataclasses).
        self._retiring: dict[int, Slot] = {}
        # ORT releases the GIL while it computes; a few threads let batches of different models overlap.
        self._executor = ThreadPoolExecutor(max_workers=settings.serving_executor_threads, thread_name_prefix="ort")
        self._cache = settings.home / "serving-cache"

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    # -- loading --------------------------------------------------------------------------------

    async def load(self, name: str, version: int, role: Role, mv: registry_pb2.ModelVersion | None = None) -> Slot:
        """Loads and warms a version; `mv` is the registry's record of it when the caller already has it."""
        if mv is None or mv.ref.name != name or mv.ref.version != version:
            mv = await clients.model_version(self._settings, name, version)
        policy = self._policy(name, version, mv.tags)
        data = await self._artifact(name, version, mv.checksum)
        s = self._settings
        model = await asyncio.to_thread(
            OnnxModel,
            data,
            providers=self.providers,
            intra_op_threads=s.serving_intra_op_threads,
            inter_op_threads=s.serving_inter_op_threads,
        )
        await asyncio.to_thread(model.warm_up)  # the first real request should not pay for initialisation
        batch_rows = max(1, policy.max_batch_size)
        inline, cost_us = False, None
        if policy.inline_max_us > 0:  # timed only when it decides something
            limit = policy.inline_max_us
            cost_us = await asyncio.to_thread(model.batch_cost_us, batch_rows, enough_us=10 * limit)
            inline = cost_us <= limit
        batcher = DynamicBatcher(
            model.run,
            max_batch_size=policy.max_batch_size,
            max_queue_delay_us=policy.max_queue_delay_us,
            executor=self._executor,
            inline_max_rows=batch_rows if inline else 0,
        )
        log.info("model loaded", model=name, version=version, role=role, provider=model.provider,
                 batch_rows=batch_rows, max_queue_delay_us=policy.max_queue_delay_us,
                 batch_cost_us=cost_us and round(cost_us, 1), on_event_loop=inline)  # fmt: skip
        return Slot(name, version, role, mv.checksum, model, batcher, mv.signature, datetime.now(UTC), policy)

    def _policy(self, name: str, version: int, tags: Mapping[str, str]) -> BatchingPolicy:
        """The version's batching: its valid tags over the server's settings; a bad tag is logged and skipped."""
        policy, rejected = policy_for(tags, self.batching)
        for bad in rejected:
            log.warning("batching tag ignored, using the server's value", model=name, version=version,
                        tag=bad.tag, value=bad.value, reason=bad.reason)  # fmt: skip
        return policy

    async def _artifact(self, name: str, version: int, checksum: str) -> bytes:
        path = self._cache / f"{checksum}.onnx"
        data = await asyncio.to_thread(_cached, path, checksum)
        if data is not None:
            return data
        data, _ = await clients.download(self._settings, name, version)
        await asyncio.to_thread(_write_atomic, path, data)
        return data

    # -- production and traffic -------------------------------------------------------------------

    async def promote(self, name: str, version: int, mv: registry_pb2.ModelVersion | None = None) -> Slot:
        async with self._lock(name):
            dep = self.deployments.setdefault(name, Deployment(name))
            if dep.production is not None and dep.production.version == version:
                return dep.production
            slot = dep.staging.pop(version, None) or await self.load(name, version, PRODUCTION, mv)
            slot.role = PRODUCTION
            old, dep.production = dep.production, slot  # the swap: new requests resolve to `slot`
            if dep.challenger is not None and dep.challenger.version == version:
                dep.challenger, dep.mode, dep.percent = None, S.TRAFFIC_MODE_PRODUCTION_ONLY, 0.0
        if old is not None:
            # Retires in the background: the swap must not wait for the old version's last calls.
            self._retiring[id(old)] = old
            self._tasks.spawn(self._retire(old), name=f"retire {name} v{old.version}")
        log.info("production swapped", model=name, version=version, previous=old.version if old else 0)
        return slot

    async def _retire(self, slot: Slot) -> None:
        await slot.retire()
        self._retiring.pop(id(slot), None)  # not on cancellation: close() then closes what is left

    async def stage(self, name: str, version: int, mv: registry_pb2.ModelVersion | None = None) -> Slot:
        slot = await self.load(name, version, STAGING, mv)
        slot.state = S.SLOT_STATE_READY
        async with self._lock(name):
            dep = self.deployments.setdefault(name, Deployment(name))
            previous = dep.staging.pop(version, None)
            dep.staging[version] = slot
        if previous is not None:
            await previous.retire()
        return slot

    async def drop_staging(self, name: str, version: int) -> None:
        dep = self.deployments.get(name)
        slot = dep.staging.pop(version, None) if dep else None
        if slot is not None:
            await slot.retire()

    async def set_challenger(
        self, name: str, version: int, mode: serving_pb2.TrafficMode.ValueType, percent: float, actor: str
    ) -> Deployment:
        if not 0 < percent <= 100:
            raise InvalidArgument("must be in (0, 100]", field="percent")
        dep = self.deployment(name)
        if dep.production is None:
            raise NotFound(f"model {name!r} has nothing in production", field="model_name")
        role = CANARY if mode == S.TRAFFIC_MODE_CANARY else SHADOW
        slot = await self.load(name, version, role)
        async with self._lock(name):
            old, dep.challenger = dep.challenger, slot
            dep.mode, dep.percent, dep.updated_by, dep.updated_at = mode, percent, actor, datetime.now(UTC)
        if old is not None:
            await old.retire()
        return dep

    async def clear_traffic(self, name: str, actor: str) -> Deployment:
        dep = self.deployment(name)
        async with self._lock(name):
            old, dep.challenger = dep.challenger, None
            dep.mode, dep.percent, dep.updated_by, dep.updated_at = (
                S.TRAFFIC_MODE_PRODUCTION_ONLY, 0.0, actor, datetime.now(UTC),
            )  # fmt: skip
        if old is not None:
            await old.retire()
        return dep

    async def unload(self, name: str) -> None:
        dep = self.deployments.pop(name, None)
        for slot in dep.slots() if dep else ():
            await slot.retire()
        for key in [k for k in self._pinned if k[0] == name]:
            await self._pinned.pop(key).retire()

    # -- request routing ----------------------------------------------------------------------------

    def deployment(self, name: str) -> Deployment:
        dep = self.deployments.get(name)
        if dep is None:
            raise NotFound(f"model {name!r} is not deployed", field="model_name")
        return dep

    async def resolve(self, name: str, version: str) -> tuple[Slot, Slot | None]:
        """The slot that answers, and a shadow slot that should see the same request (or None)."""
        dep = self.deployments.get(name)
        if version:
            try:
                v = int(version)
            except ValueError:
                raise InvalidArgument(f"{version!r} is not a version number", field="model_version") from None
            if dep is not None:
                for slot in dep.slots():
                    if slot.version == v and slot.role != STAGING:
                        return slot, None
            return await self._pinned_slot(name, v), None
        if dep is None or dep.production is None:
            raise NotFound(f"model {name!r} has no production version loaded", field="model_name")
        if dep.challenger is not None and dep.percent and random.random() * 100 < dep.percent:
            if dep.mode == S.TRAFFIC_MODE_CANARY:
                return dep.challenger, None
            return dep.production, dep.challenger
        return dep.production, None

    async def _pinned_slot(self, name: str, version: int) -> Slot:
        key = (name, version)
        if key not in self._pinned:
            async with self._lock(name):
                if key not in self._pinned:
                    try:
                        self._pinned[key] = await self.load(name, version, common_pb2.SERVING_ROLE_UNSPECIFIED)
                    except NotFound:
                        raise NotFound(f"model {name!r} has no version {version}", field="model_version") from None
        return self._pinned[key]

    def production(self, name: str) -> Slot | None:
        dep = self.deployments.get(name)
        return dep.production if dep else None

    def to_proto(self, dep: Deployment, log_sample_rate: float, log_dropped: int) -> serving_pb2.Deployment:
        batching = dep.production.batching if dep.production is not None else self.batching
        out = S.Deployment(
            model_name=dep.name,
            slots=[slot.to_proto() for slot in dep.slots()],
            batching=S.BatchingConfig(
                enabled=batching.coalescing,
                max_batch_size=batching.max_batch_size,
                max_queue_delay_us=batching.max_queue_delay_us,
            ),
            log_sample_rate=log_sample_rate,
            log_dropped=log_dropped,
        )
        out.traffic.mode = dep.mode
        out.traffic.percent = dep.percent
        out.traffic.updated_by = dep.updated_by
        if dep.challenger is not None:
            out.traffic.challenger.CopyFrom(common_pb2.ModelRef(name=dep.name, version=dep.challenger.version))
        if dep.updated_at is not None:
            out.traffic.update_time.FromDatetime(dep.updated_at)
        return out

    async def close(self) -> None:
        """Unloads every model, including versions still retiring, then stops the ORT threads."""
        if self._own_tasks:
            await self._tasks.close()
        for name in list(self.deployments):
            await self.unload(name)
        retiring, self._retiring = list(self._retiring.values()), {}
        for slot in retiring:  # their retirement was cancelled at stop, or is still waiting
            await slot.batcher.close()
        self._executor.shutdown(wait=False, cancel_futures=True)


def _cached(path: Path, checksum: str) -> bytes | None:
    """The cached artifact if it is there and intact (read and hashed on a worker thread)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return data if hashlib.sha256(data).hexdigest() == checksum else None


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def feature_rows(feeds: Mapping[str, np.ndarray]) -> np.ndarray:
    """The request's rows as features (the first 2-D input), for prediction logging."""
    first = next(iter(feeds.values()))
    return first if first.ndim == 2 else first.reshape(len(first), -1)
