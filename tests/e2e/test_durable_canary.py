"""The traffic policy outlives the serving process: an operator sets a canary with the CLI, serving is
SIGKILLed and restarted by the supervisor, and it comes back with the canary in force (both versions
answer), `deploy status` says so (the replica in sync with the stored policy) and `deploy history`
has the change, its actor and reason. One serving replica; tests/scale/test_shared_canary.py has two."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from typing import Any

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pytest
import tritonclient.grpc as triton
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression
from tritonclient.utils import InferenceServerException

from flywheel import db, evaluation
from flywheel.bus import Topics
from flywheel.v1 import common_pb2, ingestion_pb2, registry_pb2, serving_pb2
from services.serving import traffic_rules as rules
from services.serving.traffic_rules import TrafficPolicy
from services.serving.traffic_store import TrafficStore
from tests.polling import wait_until

from .clients import Clients, ingest_requests, make_csv, schema
from .stack import UpProcess

R = registry_pb2
FEATURES = ["f0", "f1", "f2", "f3"]
MODEL = "canary-model"


def deployed_model(api: Clients, dataset: str = "canary") -> tuple[int, int, np.ndarray]:
    """Two versions of MODEL on a small dataset: the first promoted (production), the second a
    challenger (registered, whatever its promotion decision). Returns both and rows to infer on."""
    api.ingestion.CreateDataset(
        ingestion_pb2.CreateDatasetRequest(dataset=ingestion_pb2.Dataset(name=dataset, schema=schema()))
    )
    version = api.ingestion.IngestDataset(ingest_requests(dataset, make_csv(4_000, seed=5))).version

    def split(which: common_pb2.Split.ValueType) -> tuple[np.ndarray, np.ndarray]:
        parts = api.ingestion.ReadDatasetVersion(
            ingestion_pb2.ReadDatasetVersionRequest(dataset=dataset, version=version.ref.version, split=which)
        )
        table = pa.concat_tables(pa.ipc.open_stream(io.BytesIO(p.data)).read_all() for p in parts)
        x = np.column_stack([table[f].to_numpy() for f in FEATURES]).astype(np.float32)
        return x, table["label"].to_numpy()

    (x, y), (xt, yt) = split(common_pb2.SPLIT_TRAIN), split(common_pb2.SPLIT_TEST)

    def register(used: list[str]) -> int:
        mask = np.array([f in used for f in FEATURES], dtype=np.float32)
        clf = LogisticRegression().fit(x * mask, y)
        onnx = to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
        data = onnx.SerializeToString()
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        label, proba = session.run(None, {session.get_inputs()[0].name: xt})
        metrics = evaluation.classification_metrics(yt, label, proba, ["0", "1"]).metrics
        signature = common_pb2.ModelSignature(
            inputs=[common_pb2.TensorSpec(name=session.get_inputs()[0].name, datatype="FP32", shape=[-1, 4])],
            outputs=[
                common_pb2.TensorSpec(name="label", datatype="INT64", shape=[-1]),
                common_pb2.TensorSpec(name="probabilities", datatype="FP32", shape=[-1, 2]),
            ],
            feature_names=FEATURES,
            class_labels=["0", "1"],
        )
        header = R.RegisterModelHeader(
            model_name=MODEL,
            task=common_pb2.TASK_CLASSIFICATION,
            signature=signature,
            metrics=metrics,
            lineage=common_pb2.Lineage(dataset=version.ref, run_id="test"),
            format="onnx",
            sha256=hashlib.sha256(data).hexdigest(),
        )
        requests = iter([R.RegisterModelRequest(header=header), R.RegisterModelRequest(chunk=data)])
        return int(api.registry.RegisterModel(requests).version.ref.version)

    def decided(v: int) -> R.ModelVersion | None:
        mv = api.registry.GetModelVersion(R.GetModelVersionRequest(name=MODEL, version=v)).version
        return mv if mv.promotion.state != R.PROMOTION_STATE_PENDING_CHECKS else None

    production = register(FEATURES)
    first = wait_until(lambda: decided(production), 90, f"a promotion decision for v{production}")
    assert first.promotion.state == R.PROMOTION_STATE_PROMOTED, first.promotion
    challenger = register(FEATURES[:2])  # worse: stays a challenger
    wait_until(lambda: decided(challenger), 90, f"a promotion decision for v{challenger}")
    return production, challenger, xt[:2]


def served_versions(client: triton.InferenceServerClient, x: np.ndarray, headers: dict[str, str], n: int) -> list[str]:
    inp = triton.InferInput("X", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return [client.infer(MODEL, [inp], headers=headers).get_response().model_version for _ in range(n)]


def status_json(stack: UpProcess) -> dict[str, Any]:
    out = stack.cli("deploy", "status", MODEL, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["deployment"]


@pytest.fixture(scope="module")
def models(api: Clients, stack: UpProcess) -> tuple[int, int, np.ndarray]:
    production, challenger, x = deployed_model(api)
    client = stack.triton()

    def serves() -> bool:
        try:
            return served_versions(client, x, stack.headers, 1) == [str(production)]
        except InferenceServerException:
            return False

    wait_until(serves, 60, f"serving to answer with v{production}")
    client.close()
    return production, challenger, x


def test_a_canary_survives_a_killed_serving_and_is_audited(
    api: Clients, stack: UpProcess, models: tuple[int, int, np.ndarray]
) -> None:
    production, challenger, x = models
    reason = "try v2 on half the traffic [ticket 14]"
    out = stack.cli("deploy", "canary", MODEL, "--version", str(challenger), "--percent", "50", "--reason", reason)
    assert out.returncode == 0, out.stderr
    assert f"canary v{challenger} 50%" in out.stdout

    before = api.serving.GetDeployment(serving_pb2.GetDeploymentRequest(model_name=MODEL)).deployment
    assert before.traffic.mode == serving_pb2.TRAFFIC_MODE_CANARY and before.traffic.reason == reason
    assert before.traffic.generation >= 1 and before.traffic.updated_by

    # A crash, not a clean stop: the supervisor restarts serving; nothing tells it about the canary
    # except the stored policy.
    old_pid = stack.kill_replica("serving", 0)
    took = stack.wait_replica_back("serving", 0, old_pid)
    print(f"serving back (SERVING) {took:.1f} s after SIGKILL")

    client = stack.triton()
    try:
        # SERVING is reported only after the stored policy is applied: the first answers split already.
        seen = served_versions(client, x, stack.headers, 100)
    finally:
        client.close()
    assert set(seen) == {str(production), str(challenger)}, "both versions answer under the restored canary"
    assert 20 <= seen.count(str(challenger)) <= 80

    after = status_json(stack)
    assert after["traffic"]["mode"] == "TRAFFIC_MODE_CANARY"
    assert int(after["traffic"]["challenger"]["version"]) == challenger and after["traffic"]["percent"] == 50
    assert int(after["traffic"]["generation"]) == before.traffic.generation, "the restart changed nothing stored"
    ours = [r for r in after["replicas"] if r["replica"] == after["replica"]]
    assert len(ours) == 1 and ours[0]["state"] == "REPLICA_STATE_IN_SYNC", after["replicas"]
    assert int(ours[0]["pid"]) != old_pid, "the view is the restarted process's"
    assert ours[0]["traffic"]["mode"] == "TRAFFIC_MODE_CANARY"

    text = stack.cli("deploy", "status", MODEL)
    assert text.returncode == 0, text.stderr
    assert f"canary v{challenger} 50%" in text.stdout and "in sync" in text.stdout and "DISAGREES" not in text.stdout
    history = stack.cli("deploy", "history", MODEL)
    assert history.returncode == 0, history.stderr
    assert "[ticket 14]" in history.stdout and before.traffic.updated_by in history.stdout

    (change,) = api.serving.ListTrafficChanges(serving_pb2.ListTrafficChangesRequest(model_name=MODEL)).changes
    assert change.reason == reason and change.actor == before.traffic.updated_by and change.replica
    assert change.before.mode == serving_pb2.TRAFFIC_MODE_PRODUCTION_ONLY
    assert change.after.mode == serving_pb2.TRAFFIC_MODE_CANARY and change.after.challenger.version == challenger
    assert change.after.generation == before.traffic.generation


def test_clearing_is_stored_audited_and_ends_the_split(
    api: Clients, stack: UpProcess, models: tuple[int, int, np.ndarray]
) -> None:
    production, _, x = models
    api.serving.ClearTraffic(serving_pb2.ClearTrafficRequest(model_name=MODEL, reason="enough data"))
    client = stack.triton()
    try:
        assert set(served_versions(client, x, stack.headers, 30)) == {str(production)}
    finally:
        client.close()
    changes = api.serving.ListTrafficChanges(serving_pb2.ListTrafficChangesRequest(model_name=MODEL)).changes
    assert [c.reason for c in changes] == ["enough data", "try v2 on half the traffic [ticket 14]"]
    assert changes[0].after.mode == serving_pb2.TRAFFIC_MODE_PRODUCTION_ONLY
    dep = api.serving.GetDeployment(serving_pb2.GetDeploymentRequest(model_name=MODEL)).deployment
    assert dep.traffic.mode == serving_pb2.TRAFFIC_MODE_PRODUCTION_ONLY and dep.traffic.reason == "enough data"
    assert [r.state for r in dep.replicas] == [serving_pb2.REPLICA_STATE_IN_SYNC]


async def test_a_promotion_ends_the_split_in_the_store_exactly_once(stack: UpProcess) -> None:
    """N replicas notice the challenger's promotion at once; the conditional UPDATE lets one of them
    end the split: one audit row by "serving", one DeploymentChanged in the outbox. Run against the
    stack's own PostgreSQL and serving schema, on a model no replica serves (nothing applies it)."""
    pool = await db.connect(stack.dsn, "serving", min_size=1, max_size=10)
    try:
        store = TrafficStore(pool, "test:0")
        name = "race-model"
        seen = await store.change(name, TrafficPolicy(serving_pb2.TRAFFIC_MODE_CANARY, 5, 20.0), "ana", "try v5")
        replicas = [TrafficStore(pool, f"replica-{i}:0") for i in range(8)]
        results = await asyncio.gather(*(r.end_promoted(seen, 5) for r in replicas))
        won = [r for r in results if r is not None]
        assert len(won) == 1 and won[0].policy == rules.PRODUCTION_ONLY and won[0].generation == seen.generation + 1
        assert (await store.get(name)).updated_by == rules.PROMOTION_ACTOR
        assert await store.end_promoted(seen, 5) is None  # late: the stored generation moved on
        changes = await store.history(name, 10, 0)
        assert [(c.actor, c.after.generation) for c in changes] == [("serving", 2), ("ana", 1)]
        assert changes[0].reason == rules.promotion_reason(5)
        events = await pool.fetchval(
            "SELECT count(*) FROM outbox WHERE topic = $1 AND key = $2", Topics.DEPLOYMENT_CHANGED, name.encode()
        )
        assert events == 2
    finally:
        await pool.close()
