"""Serving as a pool of worker processes on one port (FLYWHEEL_SERVING_WORKERS=2): both workers
answer on the port, a SIGKILLed worker is replaced while a client that retries as Flywheel's
channels do (gRPC retry policy on UNAVAILABLE) sees no failed call, a traffic change made
through one worker is applied by every worker, and ModelStatistics from either worker counts the
requests both answered."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import psutil
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2 as oip
from tritonclient.grpc import service_pb2_grpc as oip_grpc

from flywheel.grpc.channels import OWN_CONNECTION, tritonclient_args
from flywheel.v1 import serving_pb2, serving_pb2_grpc
from tests.polling import wait_until

from .clients import Clients
from .stack import UpProcess
from .test_durable_canary import MODEL, deployed_model, status_json

WORKERS = 2


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpProcess]:
    # Heartbeats (which carry each worker's statistics to the others) every second.
    env = {"FLYWHEEL_SERVING_WORKERS": str(WORKERS), "FLYWHEEL_SERVING_RECONCILE_S": "1"}
    up = UpProcess(tmp_path_factory.mktemp("workers") / "home", env=env)
    up.start()
    yield up
    up.kill_all()


@pytest.fixture(scope="module")
def models(api: Clients, stack: UpProcess) -> tuple[int, int, np.ndarray]:
    production, challenger, x = deployed_model(api)
    wait_until(lambda: every_worker_serves(stack, production), 90, f"every worker to serve v{production}")
    return production, challenger, x


def workers(stack: UpProcess) -> list[psutil.Process]:
    """The pool's worker processes: children of the serving process `flywheel up` supervises."""
    return psutil.Process(stack.replica_pid("serving")).children()


def answered_by(stack: UpProcess, connections: int = 24) -> set[str]:
    """Which worker answers GetDeployment, each call on a new connection (the kernel picks the worker
    per connection)."""
    seen = set()
    for _ in range(connections):
        with grpc.insecure_channel(stack.address("serving"), options=[OWN_CONNECTION]) as ch:
            dep = serving_pb2_grpc.ServingAdminStub(ch).GetDeployment(
                serving_pb2.GetDeploymentRequest(model_name=MODEL), metadata=stack.metadata, timeout=10
            )
            seen.add(dep.deployment.replica)
    return seen


def every_worker_serves(stack: UpProcess, version: int) -> bool:
    """Every live worker (by pid: not a dead one's last heartbeat) reports `version` in production."""
    views = status_json(stack).get("replicas", [])
    live = {p.pid for p in workers(stack)}
    return {int(v["pid"]) for v in views} == live and all(
        v["state"] == "REPLICA_STATE_IN_SYNC" and int(v.get("production_version", 0)) == version for v in views
    )


def retrying_client(stack: UpProcess) -> triton.InferenceServerClient:
    """tritonclient as `tritonclient_args` sets it up: ModelInfer retried on UNAVAILABLE, on a
    connection of its own."""
    return triton.InferenceServerClient(**tritonclient_args(stack.settings(), "serving"))


def test_the_workers_share_one_port(stack: UpProcess, models: tuple[int, int, np.ndarray]) -> None:
    procs = workers(stack)
    assert len(procs) == WORKERS
    port = int(stack.address("serving").rsplit(":", 1)[1])
    for p in procs:
        listening = [c for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
        assert [c.laddr.port for c in listening if c.laddr.port == port] == [port], (p.pid, listening)
    names = answered_by(stack)
    assert len(names) == WORKERS, names
    assert {n.rsplit("/", 1)[1] for n in names} == {f"w{i}" for i in range(WORKERS)}


def test_staging_checks_run_once_per_version(stack: UpProcess, models: tuple[int, int, np.ndarray]) -> None:
    """Both workers share serving's consumer group for model.registered: one of them checks each
    version, once (the workers log to serving's one log, each line naming its worker)."""
    production, challenger, _ = models
    lines = [json.loads(line) for line in (stack.home / "log" / "serving.log").read_text().splitlines()
             if "staging checks reported" in line]  # fmt: skip
    checked = sorted(r["version"] for r in lines if r.get("event") == "staging checks reported" and r["model"] == MODEL)
    assert checked == sorted([production, challenger])
    assert all("worker" in r for r in lines), "the line says which worker checked"


def test_a_killed_worker_is_replaced_and_no_call_fails(stack: UpProcess, models: tuple[int, int, np.ndarray]) -> None:
    production, _, x = models
    parent = stack.replica_pid("serving")
    before = {p.pid for p in workers(stack)}
    stop = threading.Event()
    answers: list[str] = []
    failures: list[str] = []

    def client() -> None:
        c = retrying_client(stack)
        inp = triton.InferInput("X", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        try:
            while not stop.is_set():
                try:
                    answers.append(c.infer(MODEL, [inp], headers=stack.headers).get_response().model_version)
                except Exception as exc:
                    failures.append(repr(exc))
        finally:
            c.close()

    threads = [threading.Thread(target=client) for _ in range(8)]  # 8 connections: both workers have some
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        victim = sorted(before)[1]
        port = int(stack.address("serving").rsplit(":", 1)[1])
        held = [c for c in psutil.Process(victim).net_connections("tcp") if c.status == psutil.CONN_ESTABLISHED]
        assert [c for c in held if c.laddr.port == port], "the victim holds some of the clients' connections"
        psutil.Process(victim).kill()
        killed_at, count_at_kill = time.monotonic(), len(answers)
        replaced = wait_until(
            lambda: (now := {p.pid for p in workers(stack)}) and len(now) == WORKERS and victim not in now and now,
            60,
            "the pool to replace the killed worker",
        )
        took = time.monotonic() - killed_at
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    print(f"worker replaced in {took:.1f} s; {len(answers)} answers, {len(answers) - count_at_kill} after the kill")
    assert failures == []
    assert set(answers) == {str(production)}
    assert len(answers) - count_at_kill > 100, "calls went on after the kill"
    assert stack.replica_pid("serving") == parent, "the pool lived on: the supervisor restarted nothing"
    assert len(replaced - before) == 1
    wait_until(lambda: every_worker_serves(stack, production), 60, "the new worker to report in sync")
    assert len(answered_by(stack)) == WORKERS, "the new worker answers on the port"


def test_a_traffic_change_reaches_every_worker(stack: UpProcess, models: tuple[int, int, np.ndarray]) -> None:
    _, challenger, _ = models
    out = stack.cli("deploy", "canary", MODEL, "--version", str(challenger), "--percent", "30", "--reason", "w")
    assert out.returncode == 0, out.stderr

    def applied_everywhere() -> bool:
        dep = status_json(stack)
        return len(dep["replicas"]) == WORKERS and all(
            r["state"] == "REPLICA_STATE_IN_SYNC"
            and r["traffic"]["mode"] == "TRAFFIC_MODE_CANARY"
            and int(r["traffic"]["challenger"]["version"]) == challenger
            for r in dep["replicas"]
        )

    started = time.monotonic()
    wait_until(applied_everywhere, 15, "every worker to apply the canary")
    print(f"canary applied by both workers within {time.monotonic() - started:.1f} s")
    assert stack.cli("deploy", "clear", MODEL, "--reason", "done").returncode == 0


def statistics_by_worker(stack: UpProcess, version: int) -> dict[str, int]:
    """Successful requests for `version` as ModelStatistics reports them, per answering worker (each
    asked on a new connection, with GetDeployment on the same one to learn which worker it is)."""
    seen: dict[str, int] = {}
    for _ in range(40):
        with grpc.insecure_channel(stack.address("serving"), options=[OWN_CONNECTION]) as ch:
            worker = (
                serving_pb2_grpc.ServingAdminStub(ch)
                .GetDeployment(serving_pb2.GetDeploymentRequest(model_name=MODEL), metadata=stack.metadata, timeout=10)
                .deployment.replica
            )
            stats = oip_grpc.GRPCInferenceServiceStub(ch).ModelStatistics(
                oip.ModelStatisticsRequest(name=MODEL, version=str(version)), metadata=stack.metadata, timeout=10
            )
            seen[worker] = sum(s.inference_stats.success.count for s in stats.model_stats)
        if len(seen) == WORKERS:
            break
    return seen


def own_requests(stack: UpProcess, version: int) -> dict[str, int]:
    """Each worker's own request count for `version`, from its heartbeat in deploy status."""
    return {
        r["replica"]: sum(int(s["stats"].get("request_count", 0)) for s in r.get("slots", [])
                          if int(s["model"]["version"]) == version)
        for r in status_json(stack)["replicas"]
    }  # fmt: skip


def test_model_statistics_count_every_workers_requests(stack: UpProcess, models: tuple[int, int, np.ndarray]) -> None:
    production, _, x = models
    n_clients, calls = 20, 10

    def settled() -> int | None:
        counts = set(statistics_by_worker(stack, production).values())
        return counts.pop() if len(counts) == 1 else None

    time.sleep(2.5)  # the last test's traffic reaches every heartbeat
    before = wait_until(lambda: (v := settled()) is not None and (v,), 15, "both workers to agree")[0]
    own_before = own_requests(stack, production)
    inp = triton.InferInput("X", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    for _ in range(n_clients):  # a new connection each: the kernel spreads them over the workers
        c = triton.InferenceServerClient(stack.address("serving"), channel_args=[OWN_CONNECTION])
        try:
            for _ in range(calls):
                c.infer(MODEL, [inp], headers=stack.headers)
        finally:
            c.close()
    want = before + n_clients * calls
    wait_until(lambda: set(statistics_by_worker(stack, production).values()) == {want}, 15,
               f"both workers to report {want} requests")  # fmt: skip

    def heartbeats_have_them() -> dict[str, int] | None:
        now = own_requests(stack, production)
        return now if sum(now.values()) - sum(own_before.values()) >= n_clients * calls else None

    own_after = wait_until(heartbeats_have_them, 15, "heartbeats with the new requests")
    grew = [w for w in own_after if own_after[w] > own_before.get(w, 0)]
    assert len(grew) == WORKERS, (own_before, own_after)  # each answered some: neither alone holds the total
