"""What the fuzzed stack holds before the fuzz starts, so generated input can reach past lookups:
two datasets (one rejecting bad rows, one quarantining them; both take the model's feedback), a
model in production with monitoring's reference loaded and a small drift window (so windows close
during the fuzz), logged predictions with known request ids (so feedback joins), and the names of
all of it for the strategies to use."""

from __future__ import annotations

import asyncio
import hashlib
import io
from dataclasses import dataclass

import asyncpg
import grpc
import numpy as np
import onnxruntime as ort
import pyarrow as pa
import tritonclient.grpc as triton
from google.protobuf.duration_pb2 import Duration
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression

from flywheel import evaluation
from flywheel.v1 import auth_pb2, common_pb2, ingestion_pb2, monitoring_pb2, registry_pb2
from tests.e2e.clients import Clients, ingest_requests
from tests.e2e.stack import UpProcess
from tests.polling import wait_until

C = common_pb2
R = registry_pb2
STRICT = "fuzz_strict"  # rejects a batch with any invalid row
LOOSE = "fuzz_loose"  # quarantines invalid rows
MODEL = "fuzz-model"
FEATURES = ["f0", "f1", "f2", "f3"]
COLORS = ["red", "green", "blue"]
REQUEST_IDS = [f"req-{i}" for i in range(8)]


@dataclass(frozen=True)
class World:
    model: str
    model_version: int
    input_name: str
    datasets: tuple[str, ...]
    request_ids: tuple[str, ...]
    protected_tokens: frozenset[str]  # names and ids of tokens the fuzz must never revoke

    @property
    def names(self) -> list[str]:
        """Strings worth generating: everything the stack knows by name, and words its APIs take."""
        return [
            self.model,
            *self.datasets,
            *self.request_ids,
            *FEATURES,
            "color",
            "label",
            "id",
            *COLORS,
            "production",
            "staging",
            "candidate",
            "X",
            "label",
            "probabilities",
            "FP32",
            "FP64",
            "INT64",
            "INT32",
            "BOOL",
            "BYTES",
            "FP16",
            "accuracy",
            "f1",
            "rmse",
            "onnx",
            "viewer",
            "trainer",
            "producer",
            "predictor",
            "deployer",
            "fuzz-spec",
            "fuzz-token",
        ]

    @property
    def ints(self) -> list[int]:
        return [self.model_version, self.model_version + 1, 1, 2, 0, 100]


def _schema(*, strict: bool) -> C.Schema:
    fields = [
        C.Field(name="id", type=C.FIELD_TYPE_INT),
        *[C.Field(name=f, type=C.FIELD_TYPE_FLOAT, nullable=True, min=-1e6, max=1e6) for f in FEATURES],
        # The strict dataset has a closed categorical field (the case that once crash-looped ingestion).
        C.Field(name="color", type=C.FIELD_TYPE_CATEGORICAL, nullable=True, allowed_values=COLORS if strict else []),
        C.Field(name="flag", type=C.FIELD_TYPE_BOOL, nullable=True),
        C.Field(name="label", type=C.FIELD_TYPE_INT, min=0, max=1),
    ]
    return C.Schema(fields=fields, label_field="label", key_field="id", train_fraction=0.8)


def rows_csv(n: int, *, start_id: int = 0, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(FEATURES)))
    y = (x @ np.linspace(1.5, -1.0, len(FEATURES)) > 0).astype(int)
    out = io.StringIO()
    out.write(",".join(["id", *FEATURES, "color", "flag", "label"]) + "\n")
    for i in range(n):
        feats = ",".join(f"{v:.6f}" for v in x[i])
        out.write(f"{start_id + i},{feats},{COLORS[i % 3]},{'true' if i % 2 else 'false'},{y[i]}\n")
    return out.getvalue().encode()


def _create_datasets(api: Clients) -> common_pb2.DatasetRef:
    for name, policy in (
        (STRICT, ingestion_pb2.INVALID_ROW_POLICY_REJECT),
        (LOOSE, ingestion_pb2.INVALID_ROW_POLICY_QUARANTINE),
    ):
        api.ingestion.CreateDataset(
            ingestion_pb2.CreateDatasetRequest(
                dataset=ingestion_pb2.Dataset(
                    name=name,
                    schema=_schema(strict=name == STRICT),
                    invalid_row_policy=policy,
                    feedback_model=MODEL,
                    # Short batches: versions from the topic show up within a second.
                    micro_batch=ingestion_pb2.MicroBatchPolicy(max_rows=500, max_wait=Duration(nanos=500_000_000)),
                )
            )
        )
    ref = api.ingestion.IngestDataset(ingest_requests(STRICT, rows_csv(400, seed=1))).version.ref
    api.ingestion.IngestDataset(ingest_requests(LOOSE, rows_csv(50, seed=2)))
    return ref


def _split(api: Clients, split: common_pb2.Split.ValueType) -> tuple[np.ndarray, np.ndarray]:
    parts = api.ingestion.ReadDatasetVersion(
        ingestion_pb2.ReadDatasetVersionRequest(dataset=STRICT, version=1, split=split)
    )
    table = pa.concat_tables(pa.ipc.open_stream(io.BytesIO(p.data)).read_all() for p in parts)
    x = np.column_stack([table[f].to_numpy() for f in FEATURES]).astype(np.float32)
    return x, table["label"].to_numpy()


def _register(api: Clients, dataset: common_pb2.DatasetRef) -> tuple[int, str]:
    (x, y), (xt, yt) = _split(api, C.SPLIT_TRAIN), _split(api, C.SPLIT_TEST)
    clf = LogisticRegression().fit(x, y)
    data = to_onnx(
        clf, x[:1], options={id(clf): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3}
    ).SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    label, proba = session.run(None, {input_name: xt})
    header = R.RegisterModelHeader(
        model_name=MODEL,
        task=C.TASK_CLASSIFICATION,
        signature=C.ModelSignature(
            inputs=[C.TensorSpec(name=input_name, datatype="FP32", shape=[-1, len(FEATURES)])],
            outputs=[
                C.TensorSpec(name="label", datatype="INT64", shape=[-1]),
                C.TensorSpec(name="probabilities", datatype="FP32", shape=[-1, 2]),
            ],
            feature_names=FEATURES,
            class_labels=["0", "1"],
        ),
        metrics=evaluation.classification_metrics(yt, label, proba, ["0", "1"]).metrics,
        lineage=C.Lineage(dataset=dataset, run_id="fuzz-setup"),
        format="onnx",
        sha256=hashlib.sha256(data).hexdigest(),
    )
    api.registry.SetPromotionPolicy(
        R.SetPromotionPolicyRequest(
            model_name=MODEL,
            policy=C.PromotionPolicy(
                metric="accuracy", direction=C.METRIC_DIRECTION_MAXIMIZE, approval=C.APPROVAL_MODE_AUTO
            ),
        )
    )
    requests = iter([R.RegisterModelRequest(header=header), R.RegisterModelRequest(chunk=data)])
    return api.registry.RegisterModel(requests).version.ref.version, input_name


def _promoted(api: Clients, version: int) -> bool:
    mv = api.registry.GetModelVersion(R.GetModelVersionRequest(name=MODEL, version=version)).version
    assert mv.promotion.state != R.PROMOTION_STATE_NOT_PROMOTED, f"setup model not promoted: {mv.promotion}"
    return mv.promotion.state == R.PROMOTION_STATE_PROMOTED


def _reference_loaded(stack: UpProcess, version: int) -> bool:
    async def query() -> bool:
        conn = await asyncpg.connect(stack.dsn)
        try:
            return await conn.fetchval("SELECT version FROM monitoring.model_refs WHERE model = $1", MODEL) == version
        finally:
            await conn.close()

    return asyncio.run(query())


def _predict(stack: UpProcess, input_name: str) -> bool:
    """Predictions with known request ids (logged, so generated feedback can join them)."""
    client = stack.triton()
    try:
        for i, request_id in enumerate(REQUEST_IDS):
            x = np.random.default_rng(i).normal(size=(3, len(FEATURES))).astype(np.float32)
            inp = triton.InferInput(input_name, list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            client.infer(MODEL, [inp], request_id=request_id, headers=stack.headers)
        return True
    except triton.InferenceServerException:
        return False  # serving has not swapped to the new version yet
    finally:
        client.close()


def build(stack: UpProcess, api: Clients) -> World:
    dataset = _create_datasets(api)
    version, input_name = _register(api, dataset)
    wait_until(lambda: _promoted(api, version), 120, f"{MODEL} v{version} to be promoted")
    wait_until(lambda: _reference_loaded(stack, version), 60, f"monitoring's reference for {MODEL} v{version}")
    api.monitoring.SetMonitoringPolicy(
        monitoring_pb2.SetMonitoringPolicyRequest(
            policy=monitoring_pb2.MonitoringPolicy(
                model_name=MODEL, enabled=True, window=monitoring_pb2.WindowPolicy(size_rows=20, min_rows=5)
            )
        )
    )
    wait_until(lambda: _predict(stack, input_name), 60, f"serving to answer for {MODEL}")
    tokens = api.tokens.ListTokens(auth_pb2.ListTokensRequest(include_revoked=False)).tokens
    protected = frozenset({t.name for t in tokens} | {t.token_id for t in tokens})
    return World(MODEL, version, input_name, (STRICT, LOOSE), tuple(REQUEST_IDS), protected)


def answers(stack: UpProcess, api: Clients) -> list[str]:
    """Good calls that must still work after the fuzz; the failures, as text."""
    failures = []
    checks = {
        "registry ListModels": lambda: api.registry.ListModels(R.ListModelsRequest()),
        "ingestion GetDataset": lambda: api.ingestion.GetDataset(ingestion_pb2.GetDatasetRequest(name=STRICT)),
        "monitoring GetMonitoringPolicy": lambda: api.monitoring.GetMonitoringPolicy(
            monitoring_pb2.GetMonitoringPolicyRequest(model_name=MODEL)
        ),
        "tokens WhoAmI": lambda: api.tokens.WhoAmI(auth_pb2.WhoAmIRequest()),
    }
    for what, call in checks.items():
        try:
            call()
        except grpc.RpcError as exc:
            failures.append(f"{what}: {exc.code().name} {exc.details()}")
    client = stack.triton()
    try:
        if not client.is_server_live(headers=stack.headers):
            failures.append("serving ServerLive: not live")
    except triton.InferenceServerException as exc:
        failures.append(f"serving ServerLive: {exc}")
    finally:
        client.close()
    return failures
