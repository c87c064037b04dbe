"""The deploy half of the loop with every service a real process and clients no one here wrote:
tritonclient for inference, the gRPC stubs for the registry. Registered -> staging checks ->
promotion by policy -> served; worse models stay out; manual approval (audited as the token's
holder, whatever the request says); rollback; swaps under load without a failed request; bad inputs
get their codes; a restarted server comes back as it was. Every call carries a token: tritonclient
the `authorization` header, the stubs the credentials `flywheel up` wrote."""

from __future__ import annotations

import hashlib
import io
import os
import queue
import signal
import threading
import time

import grpc
import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pytest
import tritonclient.grpc as triton
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression
from tritonclient.utils import InferenceServerException

from flywheel import evaluation
from flywheel.predictions import LoggedRow, logged_rows
from flywheel.stack.up import read_state
from flywheel.v1 import (
    auth_pb2,
    common_pb2,
    ingestion_pb2,
    registry_pb2,
    registry_pb2_grpc,
    serving_pb2,
)
from tests.polling import wait_until

from .clients import Clients, ingest_requests, make_csv, schema
from .stack import UpProcess

R = registry_pb2
FEATURES = ["f0", "f1", "f2", "f3"]
MODEL = "deploy-model"


@pytest.fixture(scope="module")
def data(api):
    api.ingestion.CreateDataset(
        ingestion_pb2.CreateDatasetRequest(dataset=ingestion_pb2.Dataset(name="deploy", schema=schema()))
    )
    version = api.ingestion.IngestDataset(ingest_requests("deploy", make_csv(20_000, seed=21))).version

    def split(which: int) -> tuple[np.ndarray, np.ndarray]:
        parts = api.ingestion.ReadDatasetVersion(
            ingestion_pb2.ReadDatasetVersionRequest(dataset="deploy", version=1, split=which)
        )
        table = pa.concat_tables(pa.ipc.open_stream(io.BytesIO(p.data)).read_all() for p in parts)
        x = np.column_stack([table[f].to_numpy() for f in FEATURES]).astype(np.float32)
        return x, table["label"].to_numpy()

    return version, split(common_pb2.SPLIT_TRAIN), split(common_pb2.SPLIT_TEST)


def _model(data, used: list[str], *, shuffle: bool = False) -> tuple[bytes, list[common_pb2.Metric]]:  # type: ignore[no-untyped-def]
    """A logistic regression that sees only `used` features (others zeroed): quality by design."""
    _, (x, y), (xt, yt) = data
    mask = np.array([f in used for f in FEATURES], dtype=np.float32)
    labels = np.random.default_rng(0).permutation(y) if shuffle else y
    clf = LogisticRegression().fit(x * mask, labels)
    onnx = to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    data_bytes = onnx.SerializeToString()
    session = ort.InferenceSession(data_bytes, providers=["CPUExecutionProvider"])
    label, proba = session.run(None, {session.get_inputs()[0].name: xt})
    ev = evaluation.classification_metrics(yt, label, proba, ["0", "1"])
    return data_bytes, list(ev.metrics)


def _register(api: Clients, data, onnx: bytes, metrics: list[common_pb2.Metric]) -> int:  # type: ignore[no-untyped-def]
    version = data[0]
    session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
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
        sha256=hashlib.sha256(onnx).hexdigest(),
    )
    resp = api.registry.RegisterModel(iter([R.RegisterModelRequest(header=header), R.RegisterModelRequest(chunk=onnx)]))
    return resp.version.ref.version


def _state(api: Clients, version: int) -> R.ModelVersion:
    return api.registry.GetModelVersion(R.GetModelVersionRequest(name=MODEL, version=version)).version


def _decided(api: Clients, version: int) -> R.ModelVersion:
    def done() -> R.ModelVersion | None:
        mv = _state(api, version)
        return mv if mv.promotion.state != R.PROMOTION_STATE_PENDING_CHECKS else None

    return wait_until(done, 90, f"a promotion decision for v{version}")


def _served_version(client: triton.InferenceServerClient, x: np.ndarray, headers: dict[str, str]) -> str:
    inp = triton.InferInput("X", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(MODEL, [inp], headers=headers).get_response().model_version


def _serves(client: triton.InferenceServerClient, x: np.ndarray, version: int, headers: dict[str, str]) -> None:
    def ok() -> bool:
        try:
            return _served_version(client, x, headers) == str(version)
        except InferenceServerException:
            return False

    wait_until(ok, 60, f"serving to answer with v{version}")


@pytest.fixture(scope="module")
def triton_client(stack):
    client = stack.triton()
    yield client
    client.close()


def _token(api: Clients, name: str, role: str) -> str:
    """A token made through the token API with the admin's credentials, as `flywheel tokens create`."""
    return api.tokens.CreateToken(auth_pb2.CreateTokenRequest(name=name, role=role)).secret


def _registry_as(stack: UpProcess, token: str) -> registry_pb2_grpc.RegistryServiceStub:
    return registry_pb2_grpc.RegistryServiceStub(stack.channel("registry", auth_token=token))


def test_policy_chain_promotes_better_keeps_worse_waits_for_approval_and_rolls_back(api, data, triton_client, stack):
    headers = stack.headers
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
    x = data[2][0][:3]
    v1 = _register(api, data, *_model(data, ["f0"]))
    assert _decided(api, v1).promotion.state == R.PROMOTION_STATE_PROMOTED
    _serves(triton_client, x, v1, headers)

    worse = _register(api, data, *_model(data, FEATURES, shuffle=True))
    mv = _decided(api, worse)
    assert mv.promotion.state == R.PROMOTION_STATE_NOT_PROMOTED and mv.staging.passed, mv.promotion.reason
    assert "not better" in mv.promotion.reason and mv.staging.champion_version == v1
    assert {c.name for c in mv.staging.checks} == {"loads", "signature", "sample_metrics", "latency"}
    audit = api.registry.ListAuditEvents(R.ListAuditEventsRequest(name=MODEL, version=worse)).events
    assert any(e.action == R.AUDIT_ACTION_NOT_PROMOTED and "accuracy" in e.reason for e in audit)

    better = _register(api, data, *_model(data, ["f0", "f1"]))
    assert _decided(api, better).promotion.state == R.PROMOTION_STATE_PROMOTED
    _serves(triton_client, x, better, headers)  # no call from the test since registration

    policy = api.registry.GetPromotionPolicy(R.GetPromotionPolicyRequest(model_name=MODEL)).policy
    policy.approval = common_pb2.APPROVAL_MODE_MANUAL
    api.registry.SetPromotionPolicy(R.SetPromotionPolicyRequest(model_name=MODEL, policy=policy))
    best = _register(api, data, *_model(data, FEATURES))
    assert _decided(api, best).promotion.state == R.PROMOTION_STATE_PENDING_APPROVAL
    assert _served_version(triton_client, x, headers) == str(better), "waits for approval"
    # Alice approves with her own deployer token; the request claims to be mallory. The audit log
    # records who the credentials prove, and keeps the request's reason.
    alice = _registry_as(stack, _token(api, "alice", "deployer"))
    alice.ApproveVersion(R.ApproveVersionRequest(name=MODEL, version=best, actor="mallory", reason="looks good"))
    _serves(triton_client, x, best, headers)
    approvals = api.registry.ListAuditEvents(R.ListAuditEventsRequest(name=MODEL, action=R.AUDIT_ACTION_APPROVED))
    assert [(e.version, e.actor) for e in approvals.events] == [(best, "alice")]
    assert "looks good" in approvals.events[0].reason

    rolled = api.registry.Rollback(R.RollbackRequest(name=MODEL, actor="bob", reason="bad canary"))
    assert (rolled.production.version, rolled.previous_version) == (better, best)
    _serves(triton_client, x, better, headers)
    rollbacks = api.registry.ListAuditEvents(R.ListAuditEventsRequest(name=MODEL, action=R.AUDIT_ACTION_ROLLED_BACK))
    assert [e.actor for e in rollbacks.events] == ["admin"], "the admin token's holder, not the request's bob"


def test_tritonclient_speaks_to_serving(api, data, triton_client, stack):
    headers = stack.headers
    assert triton_client.is_server_live(headers=headers) and triton_client.is_server_ready(headers=headers)
    assert triton_client.is_model_ready(MODEL, headers=headers)
    meta = triton_client.get_model_metadata(MODEL, headers=headers, as_json=True)
    assert meta["platform"] == "onnxruntime_onnx" and meta["inputs"][0]["datatype"] == "FP32"
    config = triton_client.get_model_config(MODEL, headers=headers, as_json=True)["config"]
    assert config["name"] == MODEL and config["input"][0]["dims"] == ["4"]

    production = api.registry.GetModelVersion(R.GetModelVersionRequest(name=MODEL, alias="production")).version
    onnx = b"".join(
        c.chunk for c in api.registry.DownloadArtifact(R.DownloadArtifactRequest(name=MODEL, alias="production"))
    )
    session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
    x = data[2][0][:64]
    want_label, want_proba = session.run(None, {"X": x})

    inp = triton.InferInput("X", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = triton_client.infer(
        MODEL,
        [inp],
        outputs=[triton.InferRequestedOutput("probabilities"), triton.InferRequestedOutput("label")],
        headers=headers,
    )
    np.testing.assert_array_equal(result.as_numpy("label"), want_label)
    np.testing.assert_allclose(result.as_numpy("probabilities"), want_proba, rtol=1e-6)
    assert result.get_response().model_version == str(production.ref.version)

    done: queue.Queue = queue.Queue()
    triton_client.async_infer(MODEL, [inp], callback=lambda result, error: done.put((result, error)), headers=headers)
    r, e = done.get(timeout=30)
    assert e is None and np.array_equal(r.as_numpy("label"), want_label)

    streamed: queue.Queue = queue.Queue()
    triton_client.start_stream(callback=lambda result, error: streamed.put((result, error)), headers=headers)
    try:
        for i in range(3):
            triton_client.async_stream_infer(MODEL, [inp], request_id=str(i))
        got = [streamed.get(timeout=30) for _ in range(3)]
    finally:
        triton_client.stop_stream()
    assert all(e is None for _, e in got)
    assert sorted(r.get_response().id for r, _ in got) == ["0", "1", "2"]
    assert all(np.array_equal(r.as_numpy("label"), want_label) for r, _ in got)

    stats = triton_client.get_inference_statistics(MODEL, headers=headers, as_json=True)
    assert int(stats["model_stats"][0]["inference_stats"]["success"]["count"]) > 0


def test_a_predictor_token_infers_through_tritonclient_and_does_nothing_else(api, data, stack, triton_client):
    predictor = {"authorization": f"Bearer {_token(api, 'checkout-app', 'predictor')}"}
    production = api.registry.GetModelVersion(R.GetModelVersionRequest(name=MODEL, alias="production")).version
    x = data[2][0][:2]
    assert _served_version(triton_client, x, predictor) == str(production.ref.version)
    assert triton_client.is_model_ready(MODEL, headers=predictor)

    refused = {
        "no header": {},
        "garbage": {"authorization": "Bearer fwk_0123456789abcdef_" + "x" * 43},
        "not bearer": {"authorization": "Basic YWRtaW46YWRtaW4="},
    }
    for case, headers in refused.items():
        with pytest.raises(InferenceServerException) as err:
            _served_version(triton_client, x, headers)
        assert err.value.status() == "StatusCode.UNAUTHENTICATED", (case, err.value)

    # The same token may not move an alias, unload a model or read the registry.
    with pytest.raises(grpc.RpcError) as denied:
        _registry_as(stack, predictor["authorization"].split()[1]).SetAlias(
            R.SetAliasRequest(name=MODEL, alias="champion", version=production.ref.version)
        )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "needs the role admin" in denied.value.details() and "checkout-app has predictor" in denied.value.details()
    with pytest.raises(InferenceServerException) as unload:
        triton_client.unload_model(MODEL, headers=predictor)
    assert unload.value.status() == "StatusCode.PERMISSION_DENIED", unload.value
    assert _served_version(triton_client, x, predictor) == str(production.ref.version), "still loaded"


def test_bad_inputs_get_their_codes_and_the_server_keeps_answering(data, stack):
    from tritonclient.grpc import service_pb2 as oip
    from tritonclient.grpc import service_pb2_grpc as oip_grpc

    x = data[2][0][:2]
    stub = oip_grpc.GRPCInferenceServiceStub(stack.channel("serving"))

    def request(name="X", datatype="FP32", shape=(2, 4), raw=None, model=MODEL, version=""):  # type: ignore[no-untyped-def]
        req = oip.ModelInferRequest(model_name=model, model_version=version)
        req.inputs.add(name=name, datatype=datatype, shape=list(shape))
        req.raw_input_contents.append(x.tobytes() if raw is None else raw)
        return req

    cases = [
        (request(name="nope"), grpc.StatusCode.INVALID_ARGUMENT, "nope"),
        (request(datatype="FP64", raw=x.astype(np.float64).tobytes()), grpc.StatusCode.INVALID_ARGUMENT, "FP64"),
        (request(shape=(2, 3), raw=x[:, :3].tobytes()), grpc.StatusCode.INVALID_ARGUMENT, "shape"),
        (request(raw=x.tobytes()[:-4]), grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents"),
        (request(model="no-such-model"), grpc.StatusCode.NOT_FOUND, "no-such-model"),
        (request(version="999"), grpc.StatusCode.NOT_FOUND, "999"),
        (request(version="latest"), grpc.StatusCode.INVALID_ARGUMENT, "model_version"),
    ]
    for req, code, needle in cases:
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(req, timeout=10)
        assert err.value.code() == code, (needle, err.value.details())
        assert needle in err.value.details(), err.value.details()

    huge = np.zeros((2_200_000, 4), np.float32)  # twice this is 70 MB, over the 64 MB message limit
    big = stack.channel("serving", grpc_max_message_mb=256)  # the client would send it; the server refuses
    with pytest.raises(grpc.RpcError) as err:
        oip_grpc.GRPCInferenceServiceStub(big).ModelInfer(
            request(shape=huge.shape, raw=np.concatenate([huge, huge]).tobytes()), timeout=30
        )
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stub.ModelInfer(request(), timeout=10).model_version  # still answering


def test_swaps_under_load_fail_no_request(api, stack, data):
    """200 requests/s from 8 clients across three production swaps: zero failures, and every
    response came from a version serving held as production at some moment during the request."""
    production = api.registry.GetModelVersion(R.GetModelVersionRequest(name=MODEL, alias="production")).version
    other = production.ref.version + 1 if production.ref.version < 4 else production.ref.version - 1
    x = data[2][0][:1]
    admin = api.serving
    headers = stack.headers
    # (lo, hi, version): serving swapped to `version` at some instant between lo and hi.
    timeline: list[tuple[float, float, int]] = []
    stop = threading.Event()

    def watch() -> None:  # serving's own view of production, sampled every 2 ms
        # The swap happened after the previous sample started (it still saw the old version) and
        # before this one returned, however long one GetDeployment takes on a loaded machine.
        previous = float("-inf")
        while not stop.is_set():
            started = time.monotonic()
            dep = admin.GetDeployment(serving_pb2.GetDeploymentRequest(model_name=MODEL)).deployment
            returned = time.monotonic()
            prod = [s.model.version for s in dep.slots if s.role == common_pb2.SERVING_ROLE_PRODUCTION]
            if prod and (not timeline or timeline[-1][2] != prod[0]):
                timeline.append((previous, returned, prod[0]))
            previous = started
            time.sleep(0.002)

    results: list[tuple[float, float, str]] = []
    failures: list[str] = []

    def client() -> None:
        c = stack.triton()
        inp = triton.InferInput("X", [1, 4], "FP32")
        inp.set_data_from_numpy(x)
        next_at = time.monotonic()
        while not stop.is_set():
            start = time.monotonic()
            try:
                version = c.infer(MODEL, [inp], headers=headers).get_response().model_version
                results.append((start, time.monotonic(), version))
            except Exception as exc:
                failures.append(repr(exc))
            next_at += 8 / 200  # 8 clients x 25 requests/s
            time.sleep(max(0.0, next_at - time.monotonic()))
        c.close()

    watcher = threading.Thread(target=watch)
    watcher.start()
    time.sleep(0.2)
    clients = [threading.Thread(target=client) for _ in range(8)]
    for t in clients:
        t.start()
    versions = [other, production.ref.version, other]
    for v in versions:
        time.sleep(1.5)
        api.registry.SetAlias(R.SetAliasRequest(name=MODEL, alias="production", version=v, actor="swap-test"))
        wait_until(lambda v=v: timeline and timeline[-1][2] == v, 30, f"serving to swap to v{v}", 0.01)
    time.sleep(1.5)
    stop.set()
    for t in [*clients, watcher]:
        t.join()

    assert failures == []
    assert len(results) > 200 * 5 * 0.5, len(results)
    assert [v for _, _, v in timeline][-3:] == versions
    slack = 0.001  # clock reads

    def production_during(start: float, end: float) -> set[int]:
        """Every version that may have been production at some instant of [start, end]: one held
        from the earliest its swap could have happened to the latest the next swap could have."""
        held = set()
        for i, (lo, _, v) in enumerate(timeline):
            until = timeline[i + 1][1] if i + 1 < len(timeline) else float("inf")
            if lo - slack <= end and start <= until + slack:
                held.add(v)
        return held

    wrong = [(s, e, v) for s, e, v in results if int(v) not in production_during(s, e)]
    assert wrong == [], timeline


def test_restarted_serving_comes_back_with_the_same_production(api, stack, data, triton_client):
    production = api.registry.GetModelVersion(R.GetModelVersionRequest(name=MODEL, alias="production")).version
    os.kill(read_state(stack.home)["services"]["serving"]["pid"], signal.SIGKILL)
    x = data[2][0][:2]
    headers = stack.headers

    def back() -> bool:
        try:
            return triton_client.is_server_ready(headers=headers) and _served_version(triton_client, x, headers) == str(
                production.ref.version
            )
        except InferenceServerException:
            return False

    wait_until(back, 90, "serving to come back with the production version")


def test_canary_shadow_prediction_log_and_cli(api, stack, data):
    from flywheel.bus.topics import Topics
    from flywheel.v1 import events_pb2

    from .clients import read_topic

    admin = api.serving
    production = api.registry.GetModelVersion(R.GetModelVersionRequest(name=MODEL, alias="production")).version
    prod_v = production.ref.version
    challenger = 4 if prod_v != 4 else 3
    client = stack.triton()
    headers = stack.headers
    x = data[2][0][:2]

    dep = admin.SetCanary(
        serving_pb2.SetCanaryRequest(model_name=MODEL, challenger_version=challenger, percent=50, actor="carol")
    ).deployment
    assert dep.traffic.mode == serving_pb2.TRAFFIC_MODE_CANARY and dep.traffic.challenger.version == challenger
    seen = [_served_version(client, x, headers) for _ in range(100)]
    assert set(seen) == {str(prod_v), str(challenger)}, "both versions answer under a 50% canary"
    assert 20 <= seen.count(str(challenger)) <= 80

    admin.SetShadow(serving_pb2.SetShadowRequest(model_name=MODEL, challenger_version=challenger, actor="carol"))
    inp = triton.InferInput("X", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    answered = {
        client.infer(MODEL, [inp], request_id=f"shadow-{i}", headers=headers).get_response().model_version
        for i in range(5)
    }
    assert answered == {str(prod_v)}, "shadow answers from production only"
    admin.ClearTraffic(serving_pb2.ClearTrafficRequest(model_name=MODEL))
    assert {_served_version(client, x, headers) for _ in range(20)} == {str(prod_v)}

    def logged() -> list[tuple[int, LoggedRow]] | None:
        records = [
            (e.model.version, r)
            for rec in read_topic(stack.bootstrap, Topics.PREDICTIONS_LOGGED, idle_s=1.0)
            for e in [events_pb2.PredictionsLogged.FromString(rec.value)]
            for r in logged_rows(e)
            if r.request_id == "shadow-0"
        ]
        return records if len(records) >= 4 else None  # 2 rows x (production + shadow)

    records = wait_until(logged, 30, "the shadow request in flywheel.predictions.logged")
    by_role = {(v, r.role) for v, r in records}
    assert by_role == {(prod_v, common_pb2.SERVING_ROLE_PRODUCTION), (challenger, common_pb2.SERVING_ROLE_SHADOW)}
    row = next(r for v, r in records if r.row_index == 0 and v == prod_v)
    assert set(row.inputs.keys()) == set(FEATURES) and row.inputs["f0"] == pytest.approx(float(x[0, 0]), rel=1e-6)
    assert {"label", "probabilities", "class"} <= set(row.outputs.keys()) and row.latency_ms > 0

    status = stack.cli("deploy", "status", MODEL, "--json")
    assert status.returncode == 0, status.stderr
    predicted = stack.cli(
        "predict", MODEL, "--json", '[{"f0": 1.0, "f1": -2.0, "f2": 0.5, "f3": 0.0}]', "--json-output"
    )
    assert predicted.returncode == 0, predicted.stderr
    assert "label" in predicted.stdout
    client.close()
