"""One traffic policy for every serving replica (`flywheel up --replicas serving=2`): a canary set
through replica A is applied by replica B within 5 s (measured, on B alone); after both serving
replicas are SIGKILLed and restarted the canary still applies on both; `deploy status` shows both
replicas in sync with the stored policy, and `deploy history` has the change with its actor and
reason. A promotion of the challenger then ends the split in the store exactly once."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from flywheel.v1 import common_pb2, registry_pb2, serving_pb2, serving_pb2_grpc
from tests.e2e.clients import Clients
from tests.e2e.stack import UpProcess
from tests.e2e.test_durable_canary import MODEL, deployed_model, served_versions
from tests.polling import wait_until

S = serving_pb2
APPLIED_WITHIN_S = 5.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpProcess]:
    up = UpProcess(tmp_path_factory.mktemp("shared-canary") / "home", "--replicas", "serving=2")
    up.start(timeout_s=180)
    yield up
    up.kill_all()


@pytest.fixture(scope="module")
def api(stack: UpProcess) -> Iterator[Clients]:
    clients = Clients(stack)
    yield clients
    clients.close()


def admin(stack: UpProcess, replica: int) -> serving_pb2_grpc.ServingAdminStub:
    """ServingAdmin of one replica alone (never balanced to the other)."""
    return serving_pb2_grpc.ServingAdminStub(stack.channel("serving", serving_addr=stack.addresses("serving")[replica]))


def answers(stack: UpProcess, replica: int, x: np.ndarray, n: int) -> list[str]:
    client = stack.triton(address=stack.addresses("serving")[replica])
    try:
        return served_versions(client, x, stack.headers, n)
    finally:
        client.close()


def applies_canary(stub: serving_pb2_grpc.ServingAdminStub, version: int) -> bool:
    """What the replica itself applies: its own slots carry the challenger as a canary."""
    dep = stub.GetDeployment(S.GetDeploymentRequest(model_name=MODEL)).deployment
    return any(s.model.version == version and s.role == common_pb2.SERVING_ROLE_CANARY for s in dep.slots)


@pytest.fixture(scope="module")
def models(api: Clients, stack: UpProcess) -> tuple[int, int, np.ndarray]:
    production, challenger, x = deployed_model(api, dataset="shared")
    for replica in (0, 1):

        def serves(r: int = replica) -> bool:
            try:
                return answers(stack, r, x, 1) == [str(production)]
            except InferenceServerException:
                return False

        wait_until(serves, 60, f"serving replica {replica} to answer with v{production}")
    return production, challenger, x


def test_a_canary_set_through_one_replica_is_applied_by_every_replica_and_survives_their_restarts(
    stack: UpProcess, models: tuple[int, int, np.ndarray]
) -> None:
    production, challenger, x = models
    a, b = admin(stack, 0), admin(stack, 1)
    reason = "shared canary [issue 14]"
    changed = a.SetCanary(
        S.SetCanaryRequest(model_name=MODEL, challenger_version=challenger, percent=50, reason=reason)
    ).deployment
    set_at = time.monotonic()
    assert changed.replica and changed.traffic.mode == S.TRAFFIC_MODE_CANARY

    # Replica B took no call: it reads the stored policy (the event, or its reconcile) and applies it.
    while not applies_canary(b, challenger):
        assert time.monotonic() - set_at < APPLIED_WITHIN_S + 5, "replica B never applied the canary"
        time.sleep(0.05)
    applied_s = time.monotonic() - set_at
    print(f"canary set through replica A applied by replica B after {applied_s:.2f} s")
    assert applied_s < APPLIED_WITHIN_S
    seen = answers(stack, 1, x, 100)
    assert set(seen) == {str(production), str(challenger)} and 20 <= seen.count(str(challenger)) <= 80

    # Both serving replicas crash and are restarted by the supervisor: the canary is still in force on each.
    pids = [stack.kill_replica("serving", r) for r in (0, 1)]
    for r in (0, 1):
        took = stack.wait_replica_back("serving", r, pids[r])
        print(f"serving replica {r} back {took:.1f} s after SIGKILL")
    for r in (0, 1):
        seen = answers(stack, r, x, 100)
        assert set(seen) == {str(production), str(challenger)}, f"replica {r} lost the canary"

    # deploy status: both replicas, both in sync with the stored policy (each line names its replica).
    def both_in_sync() -> dict[str, Any] | None:
        out = stack.cli("deploy", "status", MODEL, "--json")
        assert out.returncode == 0, out.stderr
        dep = json.loads(out.stdout)["deployment"]
        live = [r for r in dep["replicas"] if r["state"] == "REPLICA_STATE_IN_SYNC" and int(r["pid"]) not in pids]
        return dep if len(live) == 2 else None

    dep = wait_until(both_in_sync, 20, "both serving replicas in sync in deploy status")
    assert dep["traffic"]["mode"] == "TRAFFIC_MODE_CANARY" and dep["traffic"]["reason"] == reason
    ports = {r["replica"].rsplit(":", 1)[1] for r in dep["replicas"]}
    assert ports == {a.rsplit(":", 1)[1] for a in stack.addresses("serving")}
    text = stack.cli("deploy", "status", MODEL)
    assert text.returncode == 0, text.stderr
    assert text.stdout.count("in sync") >= 2 and "DISAGREES" not in text.stdout, text.stdout

    history = stack.cli("deploy", "history", MODEL, "--json")
    assert history.returncode == 0, history.stderr
    (change,) = json.loads(history.stdout)["changes"]
    assert change["reason"] == reason and change["actor"] == dep["traffic"]["updated_by"] != ""
    assert change["replica"] == changed.replica, "the audit names the replica that took the call"


def test_promoting_the_challenger_ends_the_split_in_the_store_once(
    api: Clients, stack: UpProcess, models: tuple[int, int, np.ndarray]
) -> None:
    """Both replicas swap to the promoted challenger and both notice the stored split is over; the
    conditional update lets exactly one of them write it (one audit row by "serving")."""
    _, challenger, x = models
    a, b = admin(stack, 0), admin(stack, 1)
    stored = a.GetDeployment(S.GetDeploymentRequest(model_name=MODEL)).deployment.traffic
    assert stored.mode == S.TRAFFIC_MODE_CANARY and stored.challenger.version == challenger
    api.registry.SetAlias(
        registry_pb2.SetAliasRequest(name=MODEL, alias="production", version=challenger, actor="promoter")
    )

    def ended() -> bool:
        deps = [s.GetDeployment(S.GetDeploymentRequest(model_name=MODEL)).deployment for s in (a, b)]
        # In sync is about the traffic policy; each replica swaps on its own model.promoted, which
        # may come after the stored split ended, so the swap is waited for too.
        return all(
            d.traffic.mode == S.TRAFFIC_MODE_PRODUCTION_ONLY
            and d.traffic.generation == stored.generation + 1
            and [r.state for r in d.replicas] == [S.REPLICA_STATE_IN_SYNC] * 2
            and [r.production_version for r in d.replicas] == [challenger] * 2
            for d in deps
        )

    wait_until(ended, 30, "the split ended in the store and both replicas in sync on the new production")
    for r in (0, 1):
        assert set(answers(stack, r, x, 20)) == {str(challenger)}
    changes = a.ListTrafficChanges(S.ListTrafficChangesRequest(model_name=MODEL)).changes
    by_serving = [c for c in changes if c.actor == "serving"]
    assert len(by_serving) == 1 and len(changes) == 2, changes
    assert f"v{challenger} was promoted" in by_serving[0].reason
    time.sleep(6)  # a reconcile pass later on each replica: still exactly one
    assert len(a.ListTrafficChanges(S.ListTrafficChangesRequest(model_name=MODEL)).changes) == 2


def test_a_replica_that_stops_answering_is_flagged_stale(stack: UpProcess, models: tuple[int, int, np.ndarray]) -> None:
    """A frozen replica (SIGSTOP: no heartbeat, no crash for the supervisor to see) is shown STALE."""
    pid = stack.replica_pid("serving", 1)
    os.kill(pid, signal.SIGSTOP)
    try:

        def stale() -> str | None:
            out = stack.cli("deploy", "status", MODEL)  # balanced: replica 0 answers (1 is frozen)
            return out.stdout if out.returncode == 0 and "STALE" in out.stdout else None

        text = wait_until(stale, 40, "deploy status to flag the frozen replica", interval_s=2)
        port = stack.addresses("serving")[1].rsplit(":", 1)[1]
        assert any(port in line and "STALE" in line for line in text.splitlines()), text
        assert "1 of 2 replicas do not apply the stored policy" in text
    finally:
        os.kill(pid, signal.SIGCONT)
