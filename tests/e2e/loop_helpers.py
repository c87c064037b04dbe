"""Helpers for the closed-loop tests: specs, traffic through tritonclient, data generators."""

from __future__ import annotations

import io
import time

import grpc
import numpy as np
import tritonclient.grpc as triton
from google.protobuf.duration_pb2 import Duration

from flywheel.v1 import common_pb2, registry_pb2, training_pb2
from tests.polling import wait_until

from .clients import Clients

T = training_pb2


def concept_csv(rows: int, *, seed: int, start_id: int, shift: float = 0.0, weights=(1.5, 0.5, -0.5, -1.0)) -> bytes:  # type: ignore[no-untyped-def]
    """Features ~ N(shift on f0/f1, 1); label = noisy linear function with `weights` (the concept)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4))
    x[:, 0] += shift
    x[:, 1] *= 1 + shift
    logits = (x - [shift, 0, 0, 0]) @ np.array(weights) + rng.normal(scale=0.3, size=rows)
    y = (logits > 0).astype(int)
    out = io.StringIO()
    out.write("id,f0,f1,f2,f3,label\n")
    np.savetxt(out, np.column_stack([np.arange(start_id, start_id + rows), x, y]), delimiter=",",
               fmt=["%d", "%.6f", "%.6f", "%.6f", "%.6f", "%d"])  # fmt: skip
    return out.getvalue().encode()


def spec(name: str, dataset: str, model: str, *, on_data: bool, margin: float, cooldown_s: int = 0,
         wait_for_new_data: bool = False) -> T.TrainingSpec:  # fmt: skip
    space = T.SearchSpace(strategy=T.SEARCH_STRATEGY_GRID, seed=1)
    space.params["C"].choices.values.add().number_value = 1.0
    return T.TrainingSpec(
        name=name,
        dataset=dataset,
        model_name=model,
        task=common_pb2.TASK_CLASSIFICATION,
        estimator=T.ESTIMATOR_LOGISTIC_REGRESSION,
        search_space=space,
        metric="accuracy",
        direction=common_pb2.METRIC_DIRECTION_MAXIMIZE,
        triggers=T.Triggers(
            on_data_versioned=on_data, on_drift_detected=True, cooldown=Duration(seconds=cooldown_s),
            wait_for_new_data=wait_for_new_data,
        ),
        promotion_policy=common_pb2.PromotionPolicy(
            metric="accuracy", direction=common_pb2.METRIC_DIRECTION_MAXIMIZE, min_improvement=margin,
            approval=common_pb2.APPROVAL_MODE_AUTO,
        ),
    )  # fmt: skip


def production_version(api: Clients, model: str) -> int:
    try:
        mv = api.registry.GetModelVersion(registry_pb2.GetModelVersionRequest(name=model, alias="production"))
    except grpc.RpcError:
        return 0
    return mv.version.ref.version


def wait_served(client: triton.InferenceServerClient, model: str, version: int, headers: dict[str, str],
                timeout_s: float = 120) -> None:  # fmt: skip
    x = np.zeros((1, 4), np.float32)

    def served() -> bool:
        try:
            inp = triton.InferInput("input", [1, 4], "FP32")
            inp.set_data_from_numpy(x)
            return client.infer(model, [inp], headers=headers).get_response().model_version == str(version)
        except Exception:
            return False

    wait_until(served, timeout_s, f"{model} v{version} served")


def send_traffic(client: triton.InferenceServerClient, model: str, x: np.ndarray, headers: dict[str, str], *,
                 batch: int = 20, prefix: str = "r") -> list[str]:  # fmt: skip
    """Rows through tritonclient in requests of `batch` rows, with `headers` (the bearer token);
    returns the request ids."""
    ids = []
    for i in range(0, len(x), batch):
        chunk = x[i : i + batch].astype(np.float32)
        inp = triton.InferInput("input", list(chunk.shape), "FP32")
        inp.set_data_from_numpy(chunk)
        request_id = f"{prefix}-{i // batch}"
        client.infer(model, [inp], request_id=request_id, headers=headers)
        ids.append(request_id)
        time.sleep(0.005)
    return ids


def shifted(rows: int, seed: int, shift: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4))
    x[:, 0] += shift
    x[:, 1] *= 1 + shift
    return x


def faulty_classifier(x: np.ndarray, y: np.ndarray, column: int, above: float) -> bytes:
    """A logistic regression in ONNX (input "input", outputs "label" and "probabilities", as training
    exports) that answers every row like the plain model, except that a request with a value above
    `above` in `column` fails in ONNX Runtime (a Gather out of bounds): it passes every offline check
    on data without such values, and fails on live traffic that has them."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression().fit(x, y)
    model = to_onnx(clf, initial_types=[("input", FloatTensorType([None, x.shape[1]]))],
                    options={id(clf): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})  # fmt: skip
    g = model.graph
    for node in g.node:  # the real probabilities become an intermediate; the output adds the fault's zero
        node.output[:] = ["proba_ok" if o == "probabilities" else o for o in node.output]
    g.initializer.extend([
        numpy_helper.from_array(np.array([column], np.int64), "fault_from"),
        numpy_helper.from_array(np.array([column + 1], np.int64), "fault_to"),
        numpy_helper.from_array(np.array([1], np.int64), "fault_axis"),
        numpy_helper.from_array(np.array([above], np.float32), "fault_above"),
        numpy_helper.from_array(np.array([1000], np.int64), "fault_far"),
        numpy_helper.from_array(np.array([0.0], np.float32), "fault_table"),
    ])  # fmt: skip
    g.node.extend([
        helper.make_node("Slice", ["input", "fault_from", "fault_to", "fault_axis"], ["fault_x"]),
        helper.make_node("Greater", ["fault_x", "fault_above"], ["fault_hit"]),
        helper.make_node("Cast", ["fault_hit"], ["fault_hit_i"], to=TensorProto.INT64),
        helper.make_node("Mul", ["fault_hit_i", "fault_far"], ["fault_index"]),  # 0, or 1000 out of [0, 0]
        helper.make_node("Gather", ["fault_table", "fault_index"], ["fault_zero"], axis=0),
        helper.make_node("Add", ["proba_ok", "fault_zero"], ["probabilities"]),
    ])  # fmt: skip
    onnx.checker.check_model(model)
    return model.SerializeToString()
