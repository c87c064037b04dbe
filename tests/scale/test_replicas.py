"""Two replicas of every service (`flywheel up --replicas 2`) against one PostgreSQL and one broker.

The closed loop runs while one replica of each service is SIGKILLed at the moment it matters most
(serving and monitoring while traffic flows, ingestion as its new data version is committed,
training while it trains the retraining run, the registry as the new version is registered). The
supervisor restarts each. Afterwards PostgreSQL shows no double work: one run per dataset version,
one model version per run, one promotion per better version, staging checks reported once, every
prediction row in at most one window and one alert per window; and every serving replica, asked
alone, answers with the production version.

Then clients keep working while replicas die: a loop of `flywheel models list` (the CLI balances
over the registry's replicas) and a tritonclient inference loop pointed at every serving replica
see no failed call while one registry and one serving replica are killed and come back.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import asyncpg
import numpy as np
import psutil
import pytest
import tritonclient.grpc as triton

from flywheel.config import SERVICES
from flywheel.v1 import common_pb2, ingestion_pb2, registry_pb2, training_pb2
from tests.e2e.clients import Clients
from tests.e2e.loop_helpers import concept_csv, production_version, send_traffic, shifted, spec, wait_served
from tests.e2e.stack import UpProcess
from tests.e2e.test_closed_loop import _alerts, _bootstrap, _policy, _windows
from tests.polling import wait_until

T = training_pb2
K = common_pb2
R = registry_pb2
REPLICAS = 2


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpProcess]:
    up = UpProcess(tmp_path_factory.mktemp("replicas") / "home", "--replicas", str(REPLICAS))
    up.start(timeout_s=300)  # ten service processes on a small machine
    yield up
    up.kill_all()


@pytest.fixture(scope="module")
def api(stack: UpProcess) -> Iterator[Clients]:
    clients = Clients(stack)
    yield clients
    clients.close()


@pytest.fixture(scope="module")
def infer(stack: UpProcess) -> Iterator[triton.InferenceServerClient]:
    """tritonclient on every serving replica at once (the balanced target `flywheel up` hands out)."""
    client = stack.triton()
    yield client
    client.close()


def test_up_runs_every_service_twice_each_on_its_own_port_and_log(stack: UpProcess) -> None:
    status = stack.cli("status")
    assert status.returncode == 0, status.stdout + status.stderr
    for name in SERVICES:
        for i, address in enumerate(stack.addresses(name)):
            label = name if i == 0 else f"{name}-{i}"
            assert label in status.stdout and address in status.stdout, (label, status.stdout)
            assert (stack.home / "log" / f"{label}.log").stat().st_size > 0, label
    pids = {stack.replica_pid(n, i) for n in SERVICES for i in range(REPLICAS)}
    assert len(pids) == len(SERVICES) * REPLICAS


# -- the closed loop with a replica of each service killed ----------------------------------------


@dataclass
class Kill:
    service: str
    replica: int
    pid: int
    at: float
    why: str


@dataclass
class Chaos:
    """SIGKILLs one replica of a service when a condition holds, from a background thread."""

    stack: UpProcess
    kills: list[Kill] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def kill(self, service: str, replica: int, why: str) -> None:
        pid = self.stack.kill_replica(service, replica)
        self.kills.append(Kill(service, replica, pid, time.monotonic(), why))

    def when(self, condition: Callable[[], int | None], service: str, why: str, timeout_s: float = 240) -> None:
        """Kill the replica `condition()` names (an index) as soon as it names one."""

        def watch() -> None:
            try:
                replica = wait_until(lambda: _some(condition()), timeout_s, f"the moment to kill {service}", 0.15)
                self.kill(service, replica - 1, why)
            except BaseException as exc:  # surfaced by join()
                self.errors.append(exc)

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        self._threads.append(thread)

    def join(self, timeout_s: float) -> None:
        for thread in self._threads:
            thread.join(timeout_s)
        assert not self.errors, self.errors


def _some(replica: int | None) -> int | None:
    """wait_until wants a truthy value: replica 0 is index + 1 while waiting."""
    return None if replica is None else replica + 1


def _query(stack: UpProcess, sql: str, *args: Any) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(stack.dsn)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


def _busiest(stack: UpProcess, service: str, sample_s: float = 0.4) -> int:
    """The replica whose processes (itself and its training workers) used the most CPU over
    `sample_s`: the one training the run, when it is training."""

    def cpu(pid: int) -> float:
        try:
            proc = psutil.Process(pid)
            procs = [proc, *proc.children(recursive=True)]
        except psutil.Error:
            return 0.0
        total = 0.0
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    pids = [stack.replica_pid(service, i) for i in range(REPLICAS)]
    before = [cpu(p) for p in pids]
    time.sleep(sample_s)
    used = [cpu(p) - b for p, b in zip(pids, before, strict=True)]
    return int(np.argmax(used))


@pytest.mark.timeout(900)
def test_closed_loop_with_a_replica_of_each_service_killed_does_no_double_work(
    stack: UpProcess, api: Clients, infer: triton.InferenceServerClient
) -> None:
    model, dataset, spec_name = "rep-model", "rep", "rep-lr"
    headers = stack.headers
    # Several trials, so that the run is still training when its replica is killed.
    spec_msg = spec(spec_name, dataset, model, on_data=False, margin=0.01, cooldown_s=600)
    for c in (0.01, 0.03, 0.1, 0.3, 3.0, 10.0, 30.0):
        spec_msg.search_space.params["C"].choices.values.add().number_value = c
    _bootstrap(api, infer, headers, dataset, model, spec_msg)
    _every_replica_serves(stack, model, 1)
    _policy(api, model, cooldown_s=600)
    send_traffic(infer, model, shifted(600, seed=2, shift=0.0), headers, prefix="ref")
    wait_until(lambda: len(_windows(api, model)) >= 2, 90, "two reference windows")
    assert _alerts(api, model) == []

    chaos = Chaos(stack)
    # Training: the replica training the drift run, while it trains (its lease lapses, the other
    # replica reclaims the run).
    chaos.when(
        lambda: _busiest(stack, "training") if _drift_run_status(stack, spec_name) == T.RUN_STATUS_RUNNING else None,
        "training",
        "while training the drift run",
    )
    # Registry: as the retrained version is registered (its staging report and promotion follow).
    chaos.when(lambda: 1 if _has_version(stack, model, 2) else None, "registry", "as version 2 was registered")

    new = concept_csv(4000, seed=3, start_id=100_000, shift=2.0, weights=(-1.0, 1.0, 1.0, 0.5))
    header = ingestion_pb2.IngestHeader(
        dataset=dataset, mode=K.WRITE_MODE_REPLACE, format=ingestion_pb2.DATA_FORMAT_CSV
    )
    requests = [ingestion_pb2.IngestDatasetRequest(header=header), ingestion_pb2.IngestDatasetRequest(chunk=new)]
    assert api.ingestion.IngestDataset(iter(requests)).version.ref.version == 2
    # Ingestion: its data.versioned may still be in the outbox; the other replica's relay sends it.
    chaos.kill("ingestion", 0, "as dataset version 2 was committed")

    # Serving and monitoring die while the shifted traffic flows through tritonclient (no call may
    # fail); more rows than one window needs, as the killed serving replica's unsent log is lost.
    def mid_traffic() -> None:
        chaos.kill("serving", 0, "mid-traffic")
        chaos.kill("monitoring", 1, "mid-traffic")

    timer = threading.Timer(1.0, mid_traffic)
    timer.start()
    send_traffic(infer, model, shifted(1200, seed=4, shift=2.0), headers, prefix="shift")
    timer.join()
    wait_until(lambda: _alerts(api, model, K.DRIFT_KIND_DATA_DRIFT), 120, "a data drift alert")

    wait_until(lambda: production_version(api, model) == 2, 360, "the retrained model in production")
    chaos.join(60)
    killed = {k.service: k for k in chaos.kills}
    assert set(killed) == set(SERVICES), chaos.kills
    for k in chaos.kills:
        stack.wait_replica_back(k.service, k.replica, k.pid, timeout_s=180)
        print(f"{k.service}-{k.replica} killed {k.why}; SERVING again")

    _every_replica_serves(stack, model, 2)

    _assert_no_double_work(stack, model, spec_name)


def _every_replica_serves(stack: UpProcess, model: str, version: int, timeout_s: float = 60) -> None:
    """Each serving replica, asked alone, answers with `version`. Replicas swap on their own (each
    reads model.promoted in a group of its own, and its periodic reconcile catches up on one it
    missed), so for a few seconds after a promotion one may answer with the previous version, or
    with none before the model's first."""
    for address in stack.addresses("serving"):
        alone = stack.triton(address=address)
        try:
            wait_served(alone, model, version, stack.headers, timeout_s=timeout_s)
        finally:
            alone.close()


def _drift_run_status(stack: UpProcess, spec_name: str) -> int | None:
    rows = _query(
        stack, "SELECT status FROM training.runs WHERE spec_name = $1 AND trigger = $2", spec_name,
        T.RUN_TRIGGER_DRIFT_DETECTED,
    )  # fmt: skip
    return rows[0]["status"] if rows else None


def _has_version(stack: UpProcess, model: str, version: int) -> bool:
    rows = _query(stack, "SELECT 1 FROM registry.model_versions WHERE name = $1 AND version = $2", model, version)
    return bool(rows)


def _assert_no_double_work(stack: UpProcess, model: str, spec_name: str) -> None:
    runs = _query(
        stack, "SELECT dataset_version, status, registered_version, attempt FROM training.runs"
        " WHERE spec_name = $1 ORDER BY dataset_version", spec_name,
    )  # fmt: skip
    assert [r["dataset_version"] for r in runs] == [1, 2], "one run per dataset version"
    assert all(r["status"] == T.RUN_STATUS_SUCCEEDED for r in runs), runs
    assert [r["registered_version"] for r in runs] == [1, 2]
    print("run attempts:", [r["attempt"] for r in runs])

    versions = _query(stack, "SELECT version, run_id FROM registry.model_versions WHERE name = $1", model)
    assert sorted(v["version"] for v in versions) == [1, 2], "one model version per run"
    assert len({v["run_id"] for v in versions}) == 2

    def audited(action: int) -> list[int]:
        rows = _query(
            stack, "SELECT version FROM registry.audit_events WHERE name = $1 AND action = $2 ORDER BY version",
            model, action,
        )  # fmt: skip
        return [r["version"] for r in rows]

    assert audited(R.AUDIT_ACTION_PROMOTED) == [1, 2], "one promotion per better version"
    assert audited(R.AUDIT_ACTION_CHECKS_REPORTED) == [1, 2], "staging checks reported once per version"

    # Monitoring: every logged row closed into at most one window, each window judged once.
    windows = _query(
        stack, "SELECT window_id, version, rows FROM monitoring.windows WHERE model = $1 AND kind = 'drift'", model
    )
    in_windows = _query(
        stack, "SELECT window_id, count(*) AS n FROM monitoring.predictions WHERE model = $1 AND window_id LIKE 'w-%'"
        " GROUP BY window_id", model,
    )  # fmt: skip
    assert {w["window_id"]: w["rows"] for w in windows} == {r["window_id"]: r["n"] for r in in_windows}
    assert len(windows) >= 3, "reference windows and at least one shifted one"
    twice = _query(
        stack, "SELECT request_id, row_index FROM monitoring.predictions WHERE model = $1"
        " GROUP BY request_id, row_index, version HAVING count(*) > 1", model,
    )  # fmt: skip
    assert twice == [], "a logged prediction recorded twice"
    alerts = _query(
        stack, "SELECT window_id, kind, count(*) AS n FROM monitoring.alerts WHERE model = $1"
        " GROUP BY window_id, kind HAVING count(*) > 1", model,
    )  # fmt: skip
    assert alerts == [], "a window alerted twice"
    decisions = _query(
        stack, "SELECT decision FROM training.trigger_decisions WHERE spec_name = $1 AND trigger = $2",
        spec_name, T.RUN_TRIGGER_DRIFT_DETECTED,
    )  # fmt: skip
    assert [d["decision"] for d in decisions].count("queued") == 1, decisions


# -- clients while replicas die ------------------------------------------------------------------


@dataclass
class Loop:
    """Calls `call` back to back from a thread until stopped; keeps when each call ran and failures."""

    call: Callable[[], str | None]  # None: fine; else what went wrong
    spans: list[tuple[float, float]] = field(default_factory=list)  # (start, end), time.monotonic()
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                problem = self.call()
            except Exception as exc:
                problem = f"{type(exc).__name__}: {exc}"
            self.spans.append((start, time.monotonic()))
            if problem:
                self.failures.append(problem)

    def during(self, start: float, end: float) -> int:
        """How many calls were in flight at some point between `start` and `end`."""
        return sum(1 for s, e in self.spans if s < end and e > start)

    def started_after(self, at: float) -> int:
        return sum(1 for s, _ in self.spans if s > at)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(120)


@pytest.mark.timeout(600)
def test_cli_and_inference_keep_working_while_a_replica_of_each_is_killed(
    stack: UpProcess, api: Clients, infer: triton.InferenceServerClient
) -> None:
    model = "rep-model"
    version = production_version(api, model)
    if version == 0:
        pytest.skip("needs the model the closed-loop test left in production")
    _every_replica_serves(stack, model, version)
    headers = stack.headers
    x = np.zeros((1, 4), np.float32)

    def cli() -> str | None:
        listed = stack.cli("models", "list")
        return None if listed.returncode == 0 and model in listed.stdout else listed.stdout + listed.stderr

    def inference() -> str | None:
        inp = triton.InferInput("input", [1, 4], "FP32")
        inp.set_data_from_numpy(x)
        infer.infer(model, [inp], headers=headers)
        return None

    cli_loop, infer_loop = Loop(cli), Loop(inference)
    outages: list[tuple[str, float, float]] = []  # (replica, killed at, SERVING again at)
    try:
        # One replica of each, then (once it is back) the other.
        for replicas in ((("registry", 0), ("serving", 1)), (("registry", 1), ("serving", 0))):
            at = time.monotonic()
            killed = [(s, i, stack.kill_replica(s, i)) for s, i in replicas]
            for service, replica, pid in killed:
                stack.wait_replica_back(service, replica, pid, timeout_s=120)
                outages.append((f"{service}-{replica}", at, time.monotonic()))
            # Calls spread over the restarted replica again before the next kill (a CLI command is
            # a fresh process: seconds on a busy machine).
            wait_until(partial(cli_loop.started_after, time.monotonic()), 120, "a CLI command after the restart")
    finally:
        cli_loop.stop()
        infer_loop.stop()
    print(f"{len(cli_loop.spans)} CLI commands, {len(infer_loop.spans)} inference calls")
    for name, start, end in outages:
        print(f"{name} down {end - start:.1f}s: {cli_loop.during(start, end)} CLI commands and "
              f"{infer_loop.during(start, end)} inference calls in flight meanwhile")  # fmt: skip
        if name.startswith("registry"):
            assert cli_loop.during(start, end) >= 1, f"no CLI command while {name} was down"
        else:
            assert infer_loop.during(start, end) >= 10, f"few inference calls while {name} was down"
    assert cli_loop.failures == [], cli_loop.failures[:3]
    assert infer_loop.failures == [], infer_loop.failures[:3]
