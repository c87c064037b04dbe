"""Loaded models and the traffic between them.

A `Deployment` holds a model's production slot, an optional challenger (canary or shadow) and
staging slots for candidates under check. Swapping production is one reference assignment:
requests already running keep the slot they resolved and finish on it; the old slot is released
only after its in-flight count drops to zero.

Every load goes through the load guard (a trial load in a memory-capped child process that also
reads the graph) first, so a hostile model file fails its load instead of taking serving down. At
inference every session allocates from one arena capped at `serving_infer_memory_mb`
(runtime.InferenceMemory), every run is stopped past `serving_infer_timeout_s` (deadlines.py), and
only graphs whose cost is fixed by the request's shape may run on the event loop. A production
version that fails
is recorded on its deployment (shown as a FAILED slot) and the model's other slots, and every other
model, carry on. Versions pinned by `model_version` live in a bounded LRU (services/serving/pins.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeAlias

import numpy as np

from flywheel import clients
from flywheel.config import Settings
from flywheel.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from flywheel.logging import get_logger
from flywheel.tasks import TaskSet
from flywheel.v1 import common_pb2, registry_pb2, serving_pb2
from services.serving import load_failures, metrics
from services.serving.batching import DynamicBatcher, QueueFull, Timing
from services.serving.batching_policy import BatchingPolicy, policy_for
from services.serving.deadlines import RunDeadlines, RunTimedOut
from services.serving.load_failures import LoadFailure
from services.serving.load_guard import LoadGuard, TrialResult
from services.serving.pins import PinnedLru, pin_refusal
from services.serving.runtime import InferenceMemory, ModelLoadError, OnnxModel, execution_providers
from services.serving.stats import ModelStats, slot_counters
from services.serving.traffic_rules import (
    PRODUCTION_ONLY,
    SPLIT_MODES,
    AppliedView,
    StoredPolicy,
    TrafficPolicy,
    effective,
    requested,
)

log = get_logger(__name__)
S = serving_pb2
Role: TypeAlias = common_pb2.ServingRole.ValueType
Mode: TypeAlias = serving_pb2.TrafficMode.ValueType
MAX_VERSION = 2**31 - 1  # the registry numbers versions in a PostgreSQL integer
# A challenger that fails to load is tried again after 5 s, then 10, 20 ... at most every 5 minutes
# (a new policy generation is tried at once): a version that can never load must not cost a trial
# load on every reconcile pass forever.
TRAFFIC_RETRY_FIRST_S = 5.0
TRAFFIC_RETRY_MAX_S = 300.0
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
    _counts: metrics.RequestCounts = field(init=False, repr=False)  # the exported request counts

    def __post_init__(self) -> None:
        self.feature_names = tuple(self.signature.feature_names)
        self.class_labels = tuple(self.signature.class_labels)
        self._counts = metrics.request_counts(self.name, self.version)

    def record_success(self, total_ns: int, timing: Timing, rows: int) -> None:
        """One call answered (on the event loop): the protocol's statistics and the exported metrics."""
        self.stats.record_success(total_ns, timing.queue_ns, timing.compute_ns, rows=rows, batch_rows=timing.batch_rows)
        self._counts.ok += 1
        metrics.request_duration.record(total_ns / 1e9, self._counts.ok_attrs)

    def record_failure(self, total_ns: int) -> None:
        self.stats.record_failure(total_ns)
        self._counts.error += 1
        metrics.request_duration.record(total_ns / 1e9, self._counts.error_attrs)

    async def infer(self, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], Timing]:
        self.inflight += 1
        self._idle.clear()
        try:
            return await self.batcher.infer(feeds)
        except QueueFull:
            self.errors += 1
            metrics.queue_rejected.add(1, {"model": self.name})
            raise
        except ResourceExhausted:
            self.errors += 1
            metrics.infer_exhausted.add(1, {"model": self.name})
            raise
        except RunTimedOut:
            self.errors += 1
            metrics.infer_timeouts.add(1, {"model": self.name})
            raise
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
        slot_counters(self.stats, slot.stats)
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
    reason: str = ""
    # The stored policy's generation this replica applies (traffic_rules), and why the stored one
    # could not be applied when it could not (its challenger failed to load): retried on the
    # reconciles after a backoff that doubles per failure of that generation (each try is a trial load).
    generation: int = 0
    traffic_error: str = ""
    traffic_failed_generation: int = 0
    traffic_failures: int = 0
    traffic_retry_at: float = 0.0  # time.monotonic() before which the failed generation is not tried again
    staging: dict[int, Slot] = field(default_factory=dict)
    failure: LoadFailure | None = None  # the production version that last failed to load, until one loads

    def slots(self) -> Iterator[Slot]:
        for slot in (self.production, self.challenger, *self.staging.values()):
            if slot is not None:
                yield slot

    @property
    def policy(self) -> TrafficPolicy:
        """The traffic this replica applies now."""
        if self.challenger is None or self.mode not in SPLIT_MODES:
            return PRODUCTION_ONLY
        return TrafficPolicy(self.mode, self.challenger.version, self.percent)

    def view(self) -> AppliedView:
        """What this replica reports applying (its heartbeat's view of the model)."""
        production = self.production.version if self.production is not None else 0
        return AppliedView(self.name, self.generation, self.policy, production, self.traffic_error)


class ModelManager:
    def __init__(self, settings: Settings, tasks: TaskSet | None = None) -> None:
        self._settings = settings
        self.providers = execution_providers(settings.serving_provider)
        self.batching = BatchingPolicy.from_settings(settings)  # the server's; a version's tags may override it
        self.deployments: dict[str, Deployment] = {}
        self.guard = LoadGuard.from_settings(settings)
        self.memory = InferenceMemory(settings.serving_infer_memory_mb)  # every session's inference arena
        self.deadlines = RunDeadlines(settings.serving_infer_timeout_s)  # every session's runs
        self._pinned: PinnedLru[Slot] = PinnedLru(settings.serving_pinned_max)  # versions asked for explicitly
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
        data, path = await self._artifact(name, version, mv.checksum)
        batch_rows = max(1, policy.max_batch_size)
        s = self._settings
        try:
            # The file is untrusted: it must load, and run a full batch, in a capped child process first.
            trial = await self.guard.check(path, batch_rows, model=name, version=version)
            model = await asyncio.to_thread(
                OnnxModel,
                data,
                providers=self.providers,
                intra_op_threads=s.serving_intra_op_threads,
                inter_op_threads=s.serving_inter_op_threads,
                spinning=s.serving_ort_spinning,
                memory=self.memory,
                max_output_bytes=s.grpc_max_message_mb << 20,
                deadlines=self.deadlines,
            )
            try:
                await asyncio.to_thread(model.warm_up)  # the first real request should not pay for initialisation
            except RunTimedOut as exc:  # every request would: the file's own fault, like a failed trial load
                raise ModelLoadError(
                    f"a run on one row of zeros took longer than {exc.timeout_s:g} s (serving_infer_timeout_s)"
                ) from None
        except ModelLoadError:
            metrics.load_failures.add(1, {"model": name})
            raise
        inline, cost_us, off_loop = False, None, off_loop_reason(trial, model)
        if policy.inline_max_us > 0 and not off_loop:  # timed only when it decides something
            limit = policy.inline_max_us
            try:
                cost_us = await asyncio.to_thread(model.batch_cost_us, batch_rows, enough_us=10 * limit)
            except RunTimedOut:  # a full batch of zeros past the time limit: nothing for the event loop
                cost_us = float("inf")
            inline = cost_us <= limit
        batcher = DynamicBatcher(
            model.run,
            max_batch_size=policy.max_batch_size,
            max_queue_delay_us=policy.max_queue_delay_us,
            executor=self._executor,
            max_queue_size=max(1, s.serving_queue_max),
            inline_max_rows=batch_rows if inline else 0,
            run_many=model.run_many,
        )
        log.info("model loaded", model=name, version=version, role=role, provider=model.provider,
                 batch_rows=batch_rows, max_queue_delay_us=policy.max_queue_delay_us,
                 batch_cost_us=cost_us and round(cost_us, 1), on_event_loop=inline,
                 off_loop_reason=off_loop or None)  # fmt: skip
        return Slot(name, version, role, mv.checksum, model, batcher, mv.signature, datetime.now(UTC), policy)

    def _policy(self, name: str, version: int, tags: Mapping[str, str]) -> BatchingPolicy:
        """The version's batching: its valid tags over the server's settings; a bad tag is logged and skipped."""
        policy, rejected = policy_for(tags, self.batching)
        for bad in rejected:
            log.warning("batching tag ignored, using the server's value", model=name, version=version,
                        tag=bad.tag, value=bad.value, reason=bad.reason)  # fmt: skip
        return policy

    async def _artifact(self, name: str, version: int, checksum: str) -> tuple[bytes, Path]:
        """The artifact's bytes and its cached file (which the trial load reads)."""
        path = self._cache / f"{checksum}.onnx"
        data = await asyncio.to_thread(_cached, path, checksum)
        if data is not None:
            return data, path
        data, _ = await clients.download(self._settings, name, version)
        await asyncio.to_thread(_write_atomic, path, data)
        return data, path

    # -- production and traffic -------------------------------------------------------------------

    async def promote(self, name: str, version: int, mv: registry_pb2.ModelVersion | None = None) -> Slot:
        """Makes `version` production. A load that fails is recorded on the deployment (and raised):
        the model's current production, if any, keeps answering."""
        async with self._lock(name):
            slot, old, swapped = await self._swap_in(name, version, mv)
        if swapped:
            self._swapped(slot, old)
        return slot

    async def promote_when_due(self, name: str, version: int) -> bool:
        """The reconciler's promote: False, loading nothing, while `version` waits out the backoff of
        its last failed load (checked under the model's lock, so a swap failing meanwhile counts)."""
        async with self._lock(name):
            failure = self.failure(name)
            if failure is not None and not failure.due(version):
                return False
            slot, old, swapped = await self._swap_in(name, version, None)
        if swapped:
            self._swapped(slot, old)
        return True

    async def _swap_in(
        self, name: str, version: int, mv: registry_pb2.ModelVersion | None
    ) -> tuple[Slot, Slot | None, bool]:
        """Under the model's lock: the production slot, the one it replaced, and whether it swapped
        (not when `version` already was production)."""
        dep = self.deployments.setdefault(name, Deployment(name))
        if dep.production is not None and dep.production.version == version:
            dep.failure = None
            return dep.production, None, False
        # The challenger being promoted is loaded and warm already: it becomes production as it is.
        promoted = dep.challenger if dep.challenger is not None and dep.challenger.version == version else None
        try:
            slot = promoted or dep.staging.pop(version, None) or await self.load(name, version, PRODUCTION, mv)
        except Exception as exc:
            dep.failure = load_failures.record(
                dep.failure, version, PRODUCTION, _describe(exc), permanent=isinstance(exc, ModelLoadError)
            )
            raise
        dep.failure = None
        slot.role = PRODUCTION
        old, dep.production = dep.production, slot  # the swap: new requests resolve to `slot`
        if dep.challenger is not None and dep.challenger.version == version:
            dep.challenger, dep.mode, dep.percent = None, S.TRAFFIC_MODE_PRODUCTION_ONLY, 0.0
        return slot, old, True

    def _swapped(self, slot: Slot, old: Slot | None) -> None:
        if old is not None:
            # Retires in the background: the swap must not wait for the old version's last calls.
            self._retire_later(old)
        log.info("production swapped", model=slot.name, version=slot.version, previous=old.version if old else 0)

    def failure(self, name: str) -> LoadFailure | None:
        dep = self.deployments.get(name)
        return dep.failure if dep else None

    def _retire_later(self, slot: Slot) -> None:
        self._retiring[id(slot)] = slot
        self._tasks.spawn(self._retire(slot), name=f"retire {slot.name} v{slot.version}")

    async def _retire(self, slot: Slot) -> None:
        try:
            await slot.retire()
        except Exception as exc:  # one slot that fails to close must not stop the next retirement
            metrics.background_failures.add(1, {"loop": "retire"})
            log.error("retiring a model version failed", model=slot.name, version=slot.version, error=repr(exc))
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

    async def load_challenger(self, name: str, version: int, mode: Mode, percent: float) -> Slot:
        """Checks a SetCanary/SetShadow and loads its challenger, before anything is stored: a version
        that does not exist or does not load fails the call and changes nothing."""
        policy = requested(mode, version, percent)
        dep = self.deployment(name)
        if dep.production is None:
            raise NotFound(f"model {name!r} has nothing in production", field="model_name")
        if dep.production.version == version:
            raise FailedPrecondition(f"version {version} of {name!r} is production already", field="challenger_version")
        if dep.challenger is not None and dep.challenger.version == version:
            return dep.challenger
        return await self.load(name, version, policy.role)

    async def apply_policy(self, stored: StoredPolicy, preloaded: Slot | None = None) -> bool:
        """Applies the stored policy of a model this replica serves, unless it applies that generation
        (or a later one) already. True when it changed what the replica does. A challenger that fails to
        load is recorded on the deployment (the replica then disagrees) and tried again next time."""
        name = stored.model
        dep = self.deployments.get(name)
        if dep is None or dep.production is None:  # production first; the next reconcile applies it
            await self._discard(preloaded, dep)
            return False
        if stored.generation < dep.generation or (stored.generation == dep.generation and not dep.traffic_error):
            await self._discard(preloaded, dep)
            return False
        if (
            dep.traffic_error
            and stored.generation == dep.traffic_failed_generation
            and preloaded is None
            and time.monotonic() < dep.traffic_retry_at
        ):
            return False  # its challenger failed to load moments ago: not another trial load yet
        want = effective(stored.policy, dep.production.version)
        slot: Slot | None = None
        if want.split:
            if dep.challenger is not None and dep.challenger.version == want.challenger_version:
                slot = dep.challenger
            elif preloaded is not None and preloaded.version == want.challenger_version:
                slot = preloaded
            else:
                try:
                    slot = await self.load(name, want.challenger_version, want.role)
                except Exception as exc:
                    dep.traffic_error = f"challenger v{want.challenger_version}: {_describe(exc)}"[:1000]
                    same = dep.traffic_failed_generation == stored.generation
                    dep.traffic_failures = dep.traffic_failures + 1 if same else 1
                    dep.traffic_failed_generation = stored.generation
                    wait_s = min(TRAFFIC_RETRY_MAX_S, TRAFFIC_RETRY_FIRST_S * 2 ** (dep.traffic_failures - 1))
                    dep.traffic_retry_at = time.monotonic() + wait_s
                    log.error("traffic policy not applied: the challenger failed to load", model=name,
                              generation=stored.generation, error=dep.traffic_error, retry_in_s=wait_s)  # fmt: skip
                    await self._discard(preloaded, dep)
                    return False
        async with self._lock(name):
            if stored.generation < dep.generation:  # a newer one was applied while this one loaded
                await self._discard(slot, dep)
                return False
            old, dep.challenger = dep.challenger, slot
            if slot is not None:
                slot.role = want.role
            dep.mode, dep.percent = want.mode, want.percent
            dep.generation, dep.traffic_error = stored.generation, ""
            dep.updated_by, dep.updated_at, dep.reason = stored.updated_by, stored.updated_at, stored.reason
        if preloaded is not None and preloaded is not slot:
            await self._discard(preloaded, dep)
        if old is not None and old is not slot:
            self._retire_later(old)  # after the calls it is still answering
        log.info("traffic policy applied", model=name, generation=stored.generation, traffic=want.describe())
        return True

    async def _discard(self, slot: Slot | None, dep: Deployment | None) -> None:
        """Retires a loaded slot that did not become the challenger (unless it is the one serving)."""
        if slot is not None and (dep is None or slot is not dep.challenger):
            await slot.retire()

    async def unload(self, name: str) -> None:
        dep = self.deployments.pop(name, None)
        for slot in dep.slots() if dep else ():
            await slot.retire()
        for slot in self._pinned.pop_model(name):
            await slot.retire()

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
            v = parse_version(version)
            if dep is not None:
                for slot in dep.slots():
                    if slot.version == v and slot.role != STAGING:
                        return slot, None
            return await self._pinned_slot(name, v), None
        if dep is not None and dep.production is None and dep.failure is not None:
            raise FailedPrecondition(
                f"model {name!r} is unavailable: its production version {dep.failure.version} failed to load "
                "(see its deployment)",
                field="model_name",
            )
        if dep is None or dep.production is None:
            raise NotFound(f"model {name!r} has no production version loaded", field="model_name")
        if dep.challenger is not None and dep.percent and random.random() * 100 < dep.percent:
            if dep.mode == S.TRAFFIC_MODE_CANARY:
                return dep.challenger, None
            return dep.production, dep.challenger
        return dep.production, None

    async def _pinned_slot(self, name: str, version: int) -> Slot:
        """A version pinned by `model_version`: from the LRU, or loaded into it when the registry says
        it may be served (the least recently used pin is retired, after its calls, to make room)."""
        key = (name, version)
        slot = self._pinned.get(key)
        if slot is not None:
            return slot
        if self._pinned.capacity == 0:
            raise FailedPrecondition("pinning a version is turned off on this server", field="model_version")
        async with self._lock(name):
            slot = self._pinned.get(key)
            if slot is not None:
                return slot
            try:
                mv = await clients.model_version(self._settings, name, version)
            except NotFound:
                raise NotFound(f"model {name!r} has no version {version}", field="model_version") from None
            why = pin_refusal(mv)
            if why:
                raise FailedPrecondition(
                    f"model {name!r} version {version} cannot be pinned: it {why}; only versions that passed "
                    "staging checks, or serve as production, canary or shadow, can be",
                    field="model_version",
                )
            slot = await self.load(name, version, common_pb2.SERVING_ROLE_UNSPECIFIED, mv)
            evicted = self._pinned.put(key, slot)
        for old in evicted:
            metrics.pin_evictions.add(1, {"model": old.name})
            log.info("pinned version unloaded to make room", model=old.name, version=old.version,
                     pinned_max=self._pinned.capacity)  # fmt: skip
            self._retire_later(old)  # after the calls it is still answering
        return slot

    def pinned(self) -> list[Slot]:
        """Pinned slots, least recently used first."""
        return self._pinned.values()

    def production(self, name: str) -> Slot | None:
        dep = self.deployments.get(name)
        return dep.production if dep else None

    def to_proto(self, dep: Deployment, log_sample_rate: float, log_dropped: int) -> serving_pb2.Deployment:
        batching = dep.production.batching if dep.production is not None else self.batching
        slots = [slot.to_proto() for slot in dep.slots()]
        if dep.failure is not None:
            failed = S.ModelSlot(
                role=dep.failure.role,
                model=common_pb2.ModelRef(name=dep.name, version=dep.failure.version),
                state=S.SLOT_STATE_FAILED,
                error=dep.failure.error,
            )
            slots.append(failed)
        out = S.Deployment(
            model_name=dep.name,
            slots=slots,
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
        out.traffic.reason = dep.reason
        out.traffic.generation = dep.generation
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
        for slot in self._pinned.pop_all():
            await slot.retire()
        retiring, self._retiring = list(self._retiring.values()), {}
        for slot in retiring:  # their retirement was cancelled at stop, or is still waiting
            await slot.batcher.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.deadlines.close()


def parse_version(text: str) -> int:
    """A request's `model_version`: decimal digits naming a version the registry can hold (1 to
    MAX_VERSION). Anything else is InvalidArgument, without the text (it can be any length)."""
    if not (0 < len(text) <= 10 and text.isascii() and text.isdigit()):  # int() also takes "+5", " 5", "5_0"
        raise InvalidArgument(f"must be a version number: decimal digits, 1 to {MAX_VERSION}", field="model_version")
    version = int(text)
    if not 1 <= version <= MAX_VERSION:
        raise InvalidArgument(f"must be a version number: decimal digits, 1 to {MAX_VERSION}", field="model_version")
    return version


def off_loop_reason(trial: TrialResult, model: OnnxModel) -> str:
    """Why the model's batches must never run on the event loop, whatever its timing on zeros says
    (empty: nothing against it). Timing at load sees zeros and the dynamic dimensions at 1; only a
    graph whose cost the request's shape fixes, with every dimension but the batch fixed, is timed
    for what a request may cost."""
    if trial.dynamic_ops:
        shown = ", ".join(trial.dynamic_ops[:8]) + (", ..." if len(trial.dynamic_ops) > 8 else "")
        return f"its cost follows the request's values ({shown})"
    for spec in model.inputs:
        if spec.datatype == "BYTES":
            return f"input {spec.name[:64]!r} is strings (their length is the request's)"
        if not spec.shape or any(d < 0 for d in spec.shape[1:]):
            return f"input {spec.name[:64]!r} has a dynamic dimension besides the batch"
    return ""


def _describe(exc: Exception) -> str:
    """What a failed load shows in the deployment: our own message (they never quote the file)."""
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {text}"


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
