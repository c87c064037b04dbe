"""A database blip under a running run: every PostgreSQL connection of the training workers is
killed, the lease heartbeat's in the middle of a renewal, while the run trains. The heartbeat
retries and keeps the lease, so the run still ends as one attempt that registered one model.

Real processes on the session's PostgreSQL (a database of the test's own) and broker: ingestion
(the data), registry (the model) and two training workers, the second ready to reclaim the run
the moment its lease lapses. Each service calls the others with its own service identity, minted
in that database, and the test with an admin token.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import pytest

from flywheel.config import Settings
from flywheel.db import ensure_database
from flywheel.grpc import sync_channel
from flywheel.stack.procs import free_port
from flywheel.v1 import (
    common_pb2,
    ingestion_pb2,
    ingestion_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)
from tests.e2e.clients import ingest_requests, make_csv, schema
from tests.integration.harness import await_for, serving_sync
from tests.integration.identities import mint_many
from tests.polling import wait_until

T = training_pb2
HEARTBEAT_S = 0.2
# Short, so that a heartbeat that stopped would let the second worker reclaim the run mid-training.
LEASE_S = 4.0
BLIPS = 2
TRAINING_STAGES = (
    T.RUN_STAGE_LOADING_DATA,
    T.RUN_STAGE_SEARCHING,
    T.RUN_STAGE_EVALUATING,
    T.RUN_STAGE_EXPORTING,
    T.RUN_STAGE_PARITY_CHECK,
)


@dataclass
class Service:
    name: str
    port: int
    log_file: Path
    proc: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_records(self) -> list[dict[str, object]]:
        records = []
        for line in self.log_file.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                records.append(json.loads(line))
        return records


@dataclass
class Stack:
    dsn: str
    services: dict[str, Service]
    admin_token: str

    def address(self, name: str) -> str:
        return self.services[name].address

    def channel(self, name: str) -> grpc.Channel:
        """A channel to `name` carrying the admin token, made the way the CLI makes its channels."""
        settings = Settings(auth_token=self.admin_token, **{f"{name}_addr": self.address(name)})
        return sync_channel(settings, name)


@pytest.fixture
def stack(infra, tmp_path, unique) -> Iterator[Stack]:
    database = f"lease_{unique}"
    dsn = infra.postgres.dsn(database)
    asyncio.run(ensure_database(dsn))
    ports = {"ingestion": free_port(), "registry": free_port(), "training": free_port(), "training-2": free_port()}
    identities = {name: (f"service-{name.split('-')[0]}", f"service:{name.split('-')[0]}") for name in ports}
    tokens = asyncio.run(mint_many(dsn, {**identities, "admin": ("lease-admin", "admin")}))
    env = {
        **os.environ,
        "FLYWHEEL_HOME": str(tmp_path / "home"),
        "FLYWHEEL_DATABASE_URL": dsn,
        "FLYWHEEL_KAFKA_BOOTSTRAP": infra.broker.bootstrap,
        "FLYWHEEL_INGESTION_PORT": str(ports["ingestion"]),
        "FLYWHEEL_REGISTRY_PORT": str(ports["registry"]),
        "FLYWHEEL_TRAINING_PORT": str(ports["training"]),
        "FLYWHEEL_TRAINING_HEARTBEAT_S": str(HEARTBEAT_S),
        "FLYWHEEL_TRAINING_LEASE_S": str(LEASE_S),
        "FLYWHEEL_OUTBOX_POLL_S": "0.2",
    }
    started: dict[str, Service] = {}
    try:
        for name, port in ports.items():
            log_file = tmp_path / f"{name}.log"
            with log_file.open("wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", f"services.{name.split('-')[0]}"],
                    env={**env, "FLYWHEEL_GRPC_PORT": str(port), "FLYWHEEL_AUTH_TOKEN": tokens[name]},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            started[name] = Service(name, port, log_file, proc)
        for service in started.values():
            wait_until(lambda s=service: serving_sync(s.address), 60, f"{service.name} SERVING")
        yield Stack(dsn, started, tokens["admin"])
    finally:
        for service in started.values():
            service.proc.terminate()
        for service in started.values():
            try:
                service.proc.wait(20)
            except subprocess.TimeoutExpired:
                service.proc.kill()


def _start_run(stack: Stack) -> str:
    with (
        stack.channel("ingestion") as ingestion_ch,
        stack.channel("training") as training_ch,
    ):
        ingestion = ingestion_pb2_grpc.IngestionServiceStub(ingestion_ch)
        ingestion.CreateDataset(
            ingestion_pb2.CreateDatasetRequest(dataset=ingestion_pb2.Dataset(name="blips", schema=schema()))
        )
        ingestion.IngestDataset(ingest_requests("blips", make_csv(3000, seed=5)))
        # Boosted trees: a search of some seconds on small data, so the blips land mid-training.
        space = T.SearchSpace(strategy=T.SEARCH_STRATEGY_GRID, seed=3)
        space.fixed_params.update({"n_estimators": 250})
        space.params["max_depth"].choices.extend([2, 3, 4])
        space.params["learning_rate"].choices.extend([0.05, 0.1])
        spec = T.TrainingSpec(
            name="blips-gb",
            dataset="blips",
            model_name="blips-model",
            task=common_pb2.TASK_CLASSIFICATION,
            estimator=T.ESTIMATOR_GRADIENT_BOOSTING_CLASSIFIER,
            search_space=space,
            metric="accuracy",
        )
        training = training_pb2_grpc.TrainingServiceStub(training_ch)
        training.CreateSpec(T.CreateSpecRequest(spec=spec))
        return str(training.StartRun(T.StartRunRequest(spec_name="blips-gb")).run.run_id)


async def _kill_connections_under_the_heartbeat(dsn: str, run_id: str) -> list[int]:
    """Holds the run's row lock so the next renewal waits on it, then kills every backend of the
    training workers (that renewal's, the job listener's, the pool's idle ones), BLIPS times.
    Returns the run's stage at each kill."""
    locker = await asyncpg.connect(dsn)
    # A second connection watches: inside the locker's transaction pg_stat_activity is a snapshot.
    watcher = await asyncpg.connect(dsn)
    database = dsn.rsplit("/", 1)[1]
    stages: list[int] = []
    killed_renewals: list[int] = []

    async def renewal_waiting() -> int | None:
        rows = await watcher.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = 'flywheel-training'"
            " AND wait_event_type = 'Lock' AND query LIKE 'UPDATE runs SET lease_until%'",
            database,
        )
        fresh = [r["pid"] for r in rows if r["pid"] not in killed_renewals]  # not one already dying
        return fresh[0] if fresh else None

    try:
        async with locker.transaction():
            stage = await locker.fetchval("SELECT stage FROM training.runs WHERE run_id = $1 FOR UPDATE", run_id)
            for blip in range(1, BLIPS + 1):
                what = f"renewal {blip} of the lease waiting on the run's row (a heartbeat that died never sends it)"
                pid = await await_for(renewal_waiting, 10, what, interval_s=0.02)
                killed = await watcher.fetchval(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = $1 AND application_name = 'flywheel-training'",
                    database,
                )
                assert killed >= 2, "the renewal's connection and the job listener's at least"
                killed_renewals.append(pid)
                stages.append(stage)
    finally:
        await locker.close()
        await watcher.close()
    return stages


def _get_run(stack: Stack, run_id: str) -> training_pb2.Run:
    with stack.channel("training") as ch:
        return training_pb2_grpc.TrainingServiceStub(ch).GetRun(T.GetRunRequest(run_id=run_id)).run


def test_killed_database_connections_do_not_lose_the_lease(stack):
    run_id = _start_run(stack)

    def training_started() -> bool:
        run = _get_run(stack, run_id)
        return run.status == T.RUN_STATUS_RUNNING and run.stage == T.RUN_STAGE_SEARCHING

    wait_until(training_started, 30, "the run's search to start", interval_s=0.1)
    stages = asyncio.run(_kill_connections_under_the_heartbeat(stack.dsn, run_id))
    assert all(stage in TRAINING_STAGES for stage in stages), f"the kills came after training: {stages}"

    def finished() -> training_pb2.Run | None:
        try:
            run = _get_run(stack, run_id)
        except grpc.RpcError:  # a call that met a connection killed a moment ago; ask again
            return None
        return run if run.status in (T.RUN_STATUS_SUCCEEDED, T.RUN_STATUS_FAILED) else None

    run = wait_until(finished, 45, "the run to finish")
    assert run.status == T.RUN_STATUS_SUCCEEDED, run.error
    assert run.attempt == 1, "the lease held: no worker reclaimed the run"
    assert run.registered_model.name == "blips-model" and run.registered_model.version == 1

    with stack.channel("registry") as ch:
        versions = (
            registry_pb2_grpc.RegistryServiceStub(ch)
            .ListModelVersions(registry_pb2.ListModelVersionsRequest(name="blips-model", include_archived=True))
            .versions
        )
    assert [(v.ref.version, v.lineage.run_id) for v in versions] == [(1, run_id)]

    records = [r for name in ("training", "training-2") for r in stack.services[name].log_records()]
    retried = [
        r for r in records if r.get("event") == "retrying" and r.get("what") == f"lease heartbeat of run {run_id}"
    ]
    assert len(retried) >= BLIPS, "each killed renewal was logged and retried"
    assert not [r for r in records if str(r.get("event", "")).startswith("lease lost")]
    assert len([r for r in records if r.get("event") == "run succeeded"]) == 1
