"""How one serving replica follows the stored traffic policy and tells the others what it applies.

Three paths lead here, all level-triggered on the stored row (an event is only a hint): the
DeploymentChanged event (this process's own consumer group, handlers.py), the periodic reconcile
(every serving_reconcile_s) and start-up, before the replica reports SERVING. Each pass also
writes this replica's heartbeat and views, which is what `deploy status` compares.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from datetime import UTC, datetime

from flywheel.logging import get_logger
from flywheel.v1 import serving_pb2
from services.serving import metrics
from services.serving.models import Deployment, ModelManager, Slot
from services.serving.traffic_rules import AppliedView, StoredPolicy, promoted_end
from services.serving.traffic_store import ReplicaRow, TrafficStore

log = get_logger(__name__)


class TrafficSync:
    def __init__(self, manager: ModelManager, store: TrafficStore) -> None:
        self.manager = manager
        self.store = store
        self.pid = os.getpid()
        self.started_at = datetime.now(UTC)
        # What ServingAdmin answers with, so that reading a deployment never waits on the database:
        # the stored policies and every replica's rows as last read (refresh_views, every second).
        self._stored: dict[str, StoredPolicy] = {}
        self._rows: dict[str, list[ReplicaRow]] = {}
        self._rows_at = time.monotonic()

    async def apply(self, stored: StoredPolicy, preloaded: Slot | None = None) -> bool:
        """Applies `stored` here; first ends it in the store when its challenger is production now
        (one replica wins that write; the others read what it wrote)."""
        dep = self.manager.deployments.get(stored.model)
        if dep is not None and dep.production is not None and promoted_end(stored, dep.production.version):
            ended = await self.store.end_promoted(stored, dep.production.version)
            if ended is not None:
                log.info("traffic split ended: its challenger was promoted", model=stored.model,
                         version=dep.production.version, generation=ended.generation)  # fmt: skip
            stored = ended or await self.store.get(stored.model)
        self._remember(stored)
        return await self.manager.apply_policy(stored, preloaded)

    def _remember(self, stored: StoredPolicy) -> None:
        known = self._stored.get(stored.model)
        if known is None or stored.generation >= known.generation:
            self._stored[stored.model] = stored

    async def sync_model(self, name: str) -> None:
        """One model, now (a DeploymentChanged event for it)."""
        if await self.apply(await self.store.get(name)):
            await self.heartbeat()  # report it at once, not at the next reconcile

    async def sync_all(self) -> None:
        """Every model this replica serves, then the heartbeat (start-up and every reconcile)."""
        stored = await self.store.get_many()
        for name in list(self.manager.deployments):
            try:
                await self.apply(stored.get(name, StoredPolicy(name)))
            except Exception as exc:  # one model's trouble must not hold back the others or the heartbeat
                metrics.background_failures.add(1, {"loop": "traffic"})
                log.warning("traffic policy: applying failed, will retry", model=name, error=repr(exc))
        await self.heartbeat()

    async def heartbeat(self) -> None:
        """Writes what this replica applies, then re-reads every replica's rows."""
        await self.store.heartbeat(self.pid, self.started_at, [self._view(d) for d in self.views()])
        await self.refresh_views()

    async def refresh_views(self) -> None:
        names = list(self.manager.deployments)
        stored = await self.store.get_many(names)
        rows = await self.store.replicas(names)
        for policy in stored.values():
            self._remember(policy)
        self._rows, self._rows_at = rows, time.monotonic()

    def stored(self, name: str) -> StoredPolicy | None:
        """The model's stored policy as last read (None: never set, or not read yet)."""
        return self._stored.get(name)

    def replica_rows(self, name: str) -> list[ReplicaRow]:
        """Every replica's row for the model as last read, heartbeat ages brought up to now."""
        since = time.monotonic() - self._rows_at
        return [replace(r, age_s=r.age_s + since) for r in self._rows.get(name, ())]

    def views(self) -> list[Deployment]:
        return list(self.manager.deployments.values())

    def _view(self, dep: Deployment) -> tuple[AppliedView, bytes]:
        slots = self.manager.to_proto(dep, 0.0, 0).slots
        return dep.view(), serving_pb2.ReplicaView(slots=slots).SerializeToString()
