"""ONNX packaging: skl2onnx export, the KServe v2 signature, and the ONNX Runtime parity check.

The exported graph has one FP32 input "input" [batch, n_features]. Classifiers output "label"
(INT64 [batch], the class index) and "probabilities" (FP32 [batch, k], class_labels order), with
no ZipMap so serving can hand tensors straight back; regressors output "variable" (FP32 [batch, 1]).
Parity runs on the CPU provider: it checks the conversion, not the accelerator.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.base import is_classifier
from sklearn.pipeline import Pipeline

from flywheel.v1 import common_pb2, training_pb2

INPUT_NAME = "input"
CLASSIFIER_OUTPUTS = ("label", "probabilities")
REGRESSOR_OUTPUTS = ("variable",)
# Pinned so a model exported today loads in any recent ONNX Runtime (serving may lag training).
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
DEFAULT_CLASSIFICATION_TOLERANCE = 1e-4
DEFAULT_REGRESSION_TOLERANCE = 1e-3
MIN_LABEL_AGREEMENT = 0.999

_DATATYPES: dict[int, str] = {  # onnx element type -> KServe v2 datatype
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.DOUBLE: "FP64",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.BFLOAT16: "BF16",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.INT16: "INT16",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.UINT16: "UINT16",
    onnx.TensorProto.UINT32: "UINT32",
    onnx.TensorProto.UINT64: "UINT64",
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.STRING: "BYTES",
}


GRAPH_NAME = "flywheel"


def export_onnx(pipeline: Pipeline, n_features: int) -> bytes:
    """Converts a fitted pipeline; raises ValueError when the graph's outputs are not the contract's."""
    final = pipeline.steps[-1][1]
    classifier = is_classifier(pipeline)
    options = {id(final): {"zipmap": False}} if classifier else None
    model = convert_sklearn(
        pipeline,
        initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
        options=options,
        target_opset=TARGET_OPSET,
        # skl2onnx names the graph with a random UUID by default; a fixed name makes the export
        # reproducible, so a seed gives the same artifact (the same sha256) on every backend and retry.
        name=GRAPH_NAME,
    )
    expected = CLASSIFIER_OUTPUTS if classifier else REGRESSOR_OUTPUTS
    names = tuple(o.name for o in model.graph.output)
    if names != expected:
        raise ValueError(f"ONNX outputs are {names}, expected {expected}")
    # skl2onnx lists the opset domains in set order, which varies with the process's hash seed: sorted,
    # the same model serialises to the same bytes in any process.
    opsets = sorted(model.opset_import, key=lambda o: o.domain)
    del model.opset_import[:]
    model.opset_import.extend(opsets)
    return model.SerializeToString()


def _tensor_spec(value: onnx.ValueInfoProto) -> common_pb2.TensorSpec:
    tensor = value.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
    datatype = _DATATYPES.get(tensor.elem_type, onnx.TensorProto.DataType.Name(tensor.elem_type))
    return common_pb2.TensorSpec(name=value.name, datatype=datatype, shape=dims)


def signature_from_onnx(
    onnx_bytes: bytes, feature_names: Sequence[str], class_labels: Sequence[str]
) -> common_pb2.ModelSignature:
    graph = onnx.load_from_string(onnx_bytes).graph
    # skl2onnx lists initializers only in graph.initializer; filter defensively anyway
    initializers = {i.name for i in graph.initializer}
    return common_pb2.ModelSignature(
        inputs=[_tensor_spec(v) for v in graph.input if v.name not in initializers],
        outputs=[_tensor_spec(v) for v in graph.output],
        feature_names=list(feature_names),
        class_labels=list(class_labels),
    )


def default_tolerance(task: common_pb2.Task.ValueType) -> float:
    if task == common_pb2.TASK_CLASSIFICATION:
        return DEFAULT_CLASSIFICATION_TOLERANCE
    return DEFAULT_REGRESSION_TOLERANCE


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Max |a - b|, where NaN on one side only counts as an infinite difference."""
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    diff[np.isnan(a) & np.isnan(b)] = 0.0
    diff[np.isnan(diff)] = np.inf
    return float(diff.max()) if diff.size else 0.0


def onnx_outputs(onnx_bytes: bytes, X: np.ndarray) -> list[np.ndarray]:
    """Runs the model on the CPU provider: [label, probabilities] or [variable]."""
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return session.run(None, {INPUT_NAME: np.ascontiguousarray(X, dtype=np.float32)})


def parity_check(
    onnx_bytes: bytes, pipeline: Pipeline, X_test: np.ndarray, task: common_pb2.Task.ValueType, tolerance: float
) -> training_pb2.ParityCheck:
    """ONNX Runtime (CPU) vs the fitted pipeline on X_test. tolerance 0 = the task's default.

    Classification passes when max |proba diff| <= tolerance and labels agree on >= 99.9% of rows,
    where a row whose labels differ only because of a tie (the estimator's probability for ONNX's
    label within tolerance of its top one) counts as agreeing; `label_agreement` reports the raw
    fraction of identical labels.
    Regression passes when max |diff| <= tolerance * max(1, max |prediction|); the reported
    `tolerance` is that absolute bound, so `max_abs_diff <= tolerance` reads as the verdict.
    """
    tol = tolerance if tolerance != 0 else default_tolerance(task)
    X = np.ascontiguousarray(X_test, dtype=np.float32)
    check = training_pb2.ParityCheck(rows_checked=len(X), tolerance=tol)
    if len(X) == 0:
        check.reason = "no rows to check"
        return check
    outputs = onnx_outputs(onnx_bytes, X)
    if task == common_pb2.TASK_CLASSIFICATION:
        _classification_parity(check, outputs, pipeline, X)
    else:
        _regression_parity(check, outputs, pipeline, X)
    return check


def _classification_parity(
    check: training_pb2.ParityCheck, outputs: list[np.ndarray], pipeline: Pipeline, X: np.ndarray
) -> None:
    onnx_label, onnx_proba = np.asarray(outputs[0]).reshape(-1), np.asarray(outputs[1])
    sk_label, sk_proba = pipeline.predict(X), pipeline.predict_proba(X)
    same = onnx_label == sk_label
    check.label_agreement = float(np.mean(same))
    if onnx_proba.shape != sk_proba.shape:
        check.max_abs_diff = float("inf")
        check.reason = f"probabilities shape {onnx_proba.shape} != estimator's {sk_proba.shape}"
        return
    check.max_abs_diff = _max_abs_diff(onnx_proba, sk_proba)
    # a tie (e.g. 10 of 20 trees each way) may break the other way in float32: not a disagreement
    tied = _tied(onnx_label, sk_proba, check.tolerance)
    agreement = float(np.mean(same | tied))
    reasons = []
    if agreement < MIN_LABEL_AGREEMENT:
        reasons.append(f"label agreement {agreement:.6f} (ties excused) < {MIN_LABEL_AGREEMENT}")
    if not check.max_abs_diff <= check.tolerance:
        reasons.append(f"max |probability diff| {check.max_abs_diff:.3g} > tolerance {check.tolerance:.3g}")
    check.passed = not reasons
    check.reason = "; ".join(reasons)


def _tied(onnx_label: np.ndarray, sk_proba: np.ndarray, tolerance: float) -> np.ndarray:
    """Rows where the estimator rates ONNX's label within `tolerance` of its own top probability."""
    valid = (onnx_label >= 0) & (onnx_label < sk_proba.shape[1])
    picked = sk_proba[np.arange(len(sk_proba)), np.where(valid, onnx_label, 0)]
    return valid & (picked >= sk_proba.max(axis=1) - tolerance)


def _regression_parity(
    check: training_pb2.ParityCheck, outputs: list[np.ndarray], pipeline: Pipeline, X: np.ndarray
) -> None:
    onnx_pred = np.asarray(outputs[0]).reshape(-1)
    sk_pred = np.asarray(pipeline.predict(X)).reshape(-1)
    finite = np.abs(sk_pred[np.isfinite(sk_pred)])
    scale = max(1.0, float(finite.max())) if finite.size else 1.0
    check.tolerance = check.tolerance * scale
    check.max_abs_diff = _max_abs_diff(onnx_pred, sk_pred)
    check.passed = check.max_abs_diff <= check.tolerance
    if not check.passed:
        check.reason = (
            f"max |prediction diff| {check.max_abs_diff:.3g} > tolerance {check.tolerance:.3g} "
            f"(relative {check.tolerance / scale:.3g} x scale {scale:.3g})"
        )
