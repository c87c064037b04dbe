"""A forged internal event changes nothing: anyone who can write to the broker can publish a
`flywheel.model.promoted` naming a rejected version, and serving must keep answering with the
version the registry has in production (monitoring must keep that version's reference too).
The stack is real (`flywheel up`); the forger is a plain aiokafka producer."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import threading
import time

import asyncpg
import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pytest
import tritonclient.grpc as triton
from aiokafka import AIOKafkaProducer
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression

from flywheel import evaluation
from flywheel.bus.serde import CONTENT_PROTOBUF, event_type_name, new_meta
from flywheel.bus.topics import Topics
from flywheel.v1 import common_pb2, events_pb2, ingestion_pb2, registry_pb2, serving_pb2
from tests.polling import wait_until

from .clients import Clients, ingest_requests, make_csv, schema
from .stack import UpProcess

R = registry_pb2
MODEL = "forged-model"
DATASET = "forged"
FEATURES = ["f0", "f1", "f2", "f3"]
WATCH_AFTER_S = 5.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The module's stack, with serving's periodic reconcile pushed out of the test's reach: every
    swap seen here is serving's reaction to an event, and a wrong one would not be repaired."""
    up = UpProcess(tmp_path_factory.mktemp("forged_events") / "home", env={"FLYWHEEL_SERVING_RECONCILE_S": "3600"})
    up.start()
    yield up
    up.kill_all()


def _split(api: Clients, which: common_pb2.Split.ValueType) -> tuple[np.ndarray, np.ndarray]:
    parts = api.ingestion.ReadDatasetVersion(
        ingestion_pb2.ReadDatasetVersionRequest(dataset=DATASET, version=1, split=which)
    )
    table = pa.concat_tables(pa.ipc.open_stream(io.BytesIO(p.data)).read_all() for p in parts)
    return np.column_stack([table[f].to_numpy() for f in FEATURES]).astype(np.float32), table["label"].to_numpy()


def _register(api: Clients, dataset: common_pb2.DatasetRef, used: list[str], *, shuffle: bool = False) -> int:
    """A logistic regression that sees only the `used` features, registered as the next version;
    `shuffle` trains it on permuted labels. Quality by design: fewer features or shuffled labels are
    worse. Its metrics are measured on the test split, as staging will re-measure them."""
    (x, y), (xt, yt) = _split(api, common_pb2.SPLIT_TRAIN), _split(api, common_pb2.SPLIT_TEST)
    mask = np.array([f in used for f in FEATURES], dtype=np.float32)
    labels = np.random.default_rng(0).permutation(y) if shuffle else y
    clf = LogisticRegression().fit(x * mask, labels)
    onnx = to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    data = onnx.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    label, proba = session.run(None, {session.get_inputs()[0].name: xt * mask})
    metrics = evaluation.classification_metrics(yt, label, proba, ["0", "1"]).metrics
    header = R.RegisterModelHeader(
        model_name=MODEL,
        task=common_pb2.TASK_CLASSIFICATION,
        signature=common_pb2.ModelSignature(
            inputs=[common_pb2.TensorSpec(name=session.get_inputs()[0].name, datatype="FP32", shape=[-1, 4])],
            outputs=[
                common_pb2.TensorSpec(name="label", datatype="INT64", shape=[-1]),
                common_pb2.TensorSpec(name="probabilities", datatype="FP32", shape=[-1, 2]),
            ],
            feature_names=FEATURES,
            class_labels=["0", "1"],
        ),
        metrics=metrics,
        lineage=common_pb2.Lineage(dataset=dataset, run_id="forged-test"),
        format="onnx",
        sha256=hashlib.sha256(data).hexdigest(),
    )
    requests = iter([R.RegisterModelRequest(header=header), R.RegisterModelRequest(chunk=data)])
    return api.registry.RegisterModel(requests).version.ref.version


def _decided(api: Clients, version: int) -> R.ModelVersion:
    def done() -> R.ModelVersion | None:
        mv = api.registry.GetModelVersion(R.GetModelVersionRequest(name=MODEL, version=version)).version
        return mv if mv.promotion.state != R.PROMOTION_STATE_PENDING_CHECKS else None

    return wait_until(done, 90, f"a promotion decision for v{version}")


def _forge_promoted(stack: UpProcess, version: int, previous: int) -> str:
    """Publishes a ModelPromoted for `version` straight onto the topic, as the registry would; returns its event id."""
    event = events_pb2.ModelPromoted(
        meta=new_meta("registry"),
        model=common_pb2.ModelRef(name=MODEL, version=version),
        previous_version=previous,
        alias="production",
        reason="forged",
        actor="mallory",
    )
    headers = [("content-type", CONTENT_PROTOBUF.encode()), ("event-type", event_type_name(event).encode())]

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(
                Topics.MODEL_PROMOTED, event.SerializeToString(), key=MODEL.encode(), headers=headers
            )
        finally:
            await producer.stop()

    asyncio.run(send())
    return event.meta.event_id


def _handled_by(stack: UpProcess, schema_name: str, event_id: str) -> bool:
    """Whether a consumer of `schema_name`'s service committed `event_id` (its inbox row commits
    with the handler's effects, so whatever the handler did is done)."""

    async def query() -> bool:
        conn = await asyncpg.connect(stack.dsn)
        try:
            found = await conn.fetchval(f"SELECT count(*) FROM {schema_name}.inbox WHERE event_id = $1", event_id)
        finally:
            await conn.close()
        return bool(found)

    return asyncio.run(query())


def _reference_version(stack: UpProcess) -> int | None:
    async def query() -> int | None:
        conn = await asyncpg.connect(stack.dsn)
        try:
            return await conn.fetchval("SELECT version FROM monitoring.model_refs WHERE model = $1", MODEL)
        finally:
            await conn.close()

    return asyncio.run(query())


def _log_lines(stack: UpProcess, service: str, event: str) -> list[dict]:
    path = stack.home / "log" / f"{service}.log"
    lines = []
    for raw in path.read_text(errors="replace").splitlines() if path.exists() else []:
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if line.get("event") == event:
            lines.append(line)
    return lines


class Watcher:
    """Samples what serving answers with (tritonclient, as a predictor would) and what it holds as
    production (ServingAdmin.GetDeployment), every few milliseconds, until stopped."""

    def __init__(self, stack: UpProcess, api: Clients, x: np.ndarray) -> None:
        self.answered: list[str] = []
        self.held: list[int] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._infer, args=(stack, x)),
            threading.Thread(target=self._deployment, args=(api,)),
        ]

    def __enter__(self) -> Watcher:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def _infer(self, stack: UpProcess, x: np.ndarray) -> None:
        client = stack.triton()
        headers = stack.headers
        inp = triton.InferInput("X", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        try:
            while not self._stop.is_set():
                try:
                    self.answered.append(client.infer(MODEL, [inp], headers=headers).get_response().model_version)
                except Exception as exc:
                    self.failures.append(repr(exc))
                time.sleep(0.005)
        finally:
            client.close()

    def _deployment(self, api: Clients) -> None:
        while not self._stop.is_set():
            dep = api.serving.GetDeployment(serving_pb2.GetDeploymentRequest(model_name=MODEL)).deployment
            self.held += [s.model.version for s in dep.slots if s.role == common_pb2.SERVING_ROLE_PRODUCTION]
            time.sleep(0.005)


@pytest.fixture(scope="module")
def deployed(api: Clients, stack: UpProcess) -> tuple[int, int]:
    """(production version, rejected version) of MODEL."""
    api.ingestion.CreateDataset(
        ingestion_pb2.CreateDatasetRequest(dataset=ingestion_pb2.Dataset(name=DATASET, schema=schema()))
    )
    dataset = api.ingestion.IngestDataset(ingest_requests(DATASET, make_csv(5_000, seed=31))).version.ref
    api.registry.SetPromotionPolicy(
        R.SetPromotionPolicyRequest(
            model_name=MODEL,
            policy=common_pb2.PromotionPolicy(
                metric="accuracy",
                direction=common_pb2.METRIC_DIRECTION_MAXIMIZE,
                approval=common_pb2.APPROVAL_MODE_AUTO,
            ),
        )
    )
    good = _register(api, dataset, ["f0"])
    assert _decided(api, good).promotion.state == R.PROMOTION_STATE_PROMOTED
    worse = _register(api, dataset, FEATURES, shuffle=True)
    assert _decided(api, worse).promotion.state == R.PROMOTION_STATE_NOT_PROMOTED
    api.registry.RejectVersion(R.RejectVersionRequest(name=MODEL, version=worse, reason="worse than production"))
    mv = api.registry.GetModelVersion(R.GetModelVersionRequest(name=MODEL, version=worse)).version
    assert mv.promotion.state == R.PROMOTION_STATE_REJECTED
    _wait_serving(stack, np.zeros((1, 4), np.float32), good)
    wait_until(lambda: _reference_version(stack) == good, 60, f"monitoring's reference to be v{good}")
    return good, worse


def test_a_forged_promotion_of_a_rejected_version_changes_nothing(stack, api, deployed):
    production, rejected = deployed
    x = np.random.default_rng(1).normal(size=(2, 4)).astype(np.float32)
    with Watcher(stack, api, x) as watcher:
        time.sleep(0.5)
        event_id = _forge_promoted(stack, rejected, production)
        # Serving's swap consumer and monitoring both took the event (their inbox rows commit with
        # whatever their handlers did) ...
        wait_until(lambda: _handled_by(stack, "serving", event_id), 60, "serving to consume the forged event")
        wait_until(lambda: _handled_by(stack, "monitoring", event_id), 60, "monitoring to consume the forged event")
        time.sleep(WATCH_AFTER_S)  # ... and serving keeps answering with production long after

    assert watcher.failures == []
    assert len(watcher.answered) > 100 and len(watcher.held) > 100
    assert set(watcher.answered) == {str(production)}, "a forged model.promoted changed what serving answers with"
    assert set(watcher.held) == {production}, "a forged model.promoted changed serving's production slot"
    assert _reference_version(stack) == production, "a forged model.promoted moved monitoring's reference"

    # Operators can see that the hint was refused, and why.
    for service in ("serving", "monitoring"):
        ignored = [e for e in _log_lines(stack, service, "model.promoted ignored") if e.get("event_id") == event_id]
        assert ignored and f"v{production} in production" in ignored[0]["reason"], service
    # The registry, which decides, still says what it said.
    prod = api.registry.GetModelVersion(R.GetModelVersionRequest(name=MODEL, alias="production")).version
    assert prod.ref.version == production


def test_a_genuine_promotion_still_swaps(stack, api, deployed):
    """The registry's own model.promoted still moves serving and monitoring (nothing else would:
    the periodic reconcile is out of reach in this module)."""
    production, _ = deployed
    dataset = api.registry.GetModelVersion(R.GetModelVersionRequest(name=MODEL, version=production)).version
    better = _register(api, dataset.lineage.dataset, FEATURES)
    assert _decided(api, better).promotion.state == R.PROMOTION_STATE_PROMOTED
    _wait_serving(stack, np.zeros((1, 4), np.float32), better)
    wait_until(lambda: _reference_version(stack) == better, 60, f"monitoring's reference to be v{better}")
    assert not [e for e in _log_lines(stack, "serving", "model.promoted ignored") if e.get("version") == better]


def _wait_serving(stack: UpProcess, x: np.ndarray, version: int) -> None:
    client = stack.triton()
    inp = triton.InferInput("X", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)

    def served() -> bool:
        try:
            return client.infer(MODEL, [inp], headers=stack.headers).get_response().model_version == str(version)
        except Exception:
            return False

    try:
        wait_until(served, 30, f"serving to answer with v{version}", 0.05)
    finally:
        client.close()
