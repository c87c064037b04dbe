"""Generated requests for every gRPC method: any message of the method's request type (protos.py),
and for the methods whose interesting code sits behind a well-formed envelope, "almost valid"
requests too (an upload with a right header and hostile content, an inference call for the
production model with wrong shapes, a training spec with giant hyperparameters).

Safety: the fuzz runs as the admin, so it could revoke the admin's own token or the services'
identities and lock the stack (and itself) out; `guard` rewrites any such RevokeToken. Work the
fuzz may start is bounded by the services' own limits (and the fuzz stack's run timeout)."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.struct_pb2 import ListValue
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as oip

from flywheel.v1 import auth_pb2, common_pb2, ingestion_pb2, registry_pb2, training_pb2
from tests.unit.proto_methods import Method

from . import values as v
from .protos import MessageStrategies
from .world import COLORS, FEATURES, World, rows_csv

MAX_STREAM_MESSAGES = 4


@dataclass(frozen=True)
class Shape:
    request: type[Message]
    client_streaming: bool
    server_streaming: bool


def shape(method: Method) -> Shape:
    service, name = method.path.lstrip("/").split("/")
    found: MethodDescriptor = descriptor_pool.Default().FindServiceByName(service).methods_by_name[name]
    return Shape(message_factory.GetMessageClass(found.input_type), method.client_streaming, method.server_streaming)


def requests_for(method: Method, world: World, messages: MessageStrategies) -> st.SearchStrategy[list[Message]]:
    """The messages of one call (one for unary requests, a few for client streams)."""
    s = shape(method)
    single = messages.of(s.request.DESCRIPTOR)
    near = _NEAR_VALID.get(method.path)
    if not s.client_streaming:
        one = st.one_of(single, near(world, messages)) if near else single
        return one.map(lambda m: [guard(method.path, m, world)])
    generic = st.lists(single, max_size=MAX_STREAM_MESSAGES)
    return st.one_of(generic, near(world, messages)) if near else generic


def guard(path: str, request: Message, world: World) -> Message:
    """Keeps the fuzz from revoking the tokens the stack and the test run on."""
    if path == "/flywheel.v1.TokenService/RevokeToken":
        assert isinstance(request, auth_pb2.RevokeTokenRequest)
        if request.name in world.protected_tokens:
            request.name = f"fuzz-{request.name}"
    return request


# -- almost valid ----------------------------------------------------------------------------------


def _ingest_dataset(world: World, messages: MessageStrategies) -> st.SearchStrategy[list[Message]]:
    header = st.builds(
        lambda name, fmt, mode: ingestion_pb2.IngestDatasetRequest(
            header=ingestion_pb2.IngestHeader(dataset=name, format=fmt, mode=mode)
        ),
        st.sampled_from(world.datasets) | messages.strings,
        st.sampled_from(list(ingestion_pb2.DataFormat.values())) | v.ints(*v.INT32),
        st.sampled_from(list(common_pb2.WriteMode.values())) | v.ints(*v.INT32),
    )
    chunks = st.lists(_hostile_table_bytes().map(lambda b: ingestion_pb2.IngestDatasetRequest(chunk=b)), max_size=3)
    return st.builds(lambda h, c: [h, *c], header, chunks)


@st.composite
def _hostile_table_bytes(draw: st.DrawFn) -> bytes:
    """CSV with hostile cells, or Arrow/Parquet that is truncated or mutated, or random bytes."""
    kind = draw(st.integers(0, 4))
    if kind <= 1:
        cell = st.one_of(
            st.sampled_from(["", "NaN", "inf", "-inf", "1e999", "9" * 40, "true", "maybe", *COLORS, '"', '""x', "\\"]),
            st.text(max_size=8).map(lambda t: t.replace("\n", " ")),
            st.integers(1, 200_000).map(lambda n: "z" * n),
        )
        header = draw(st.sampled_from(["id,f0,f1,f2,f3,color,flag,label", "id,f0,f0,label", "", "\ufeffid,label"]))
        width = header.count(",") + 1 + draw(st.integers(-1, 1))
        rows = draw(st.lists(st.lists(cell, min_size=max(width, 0), max_size=max(width, 0)), max_size=6))
        text = "\n".join([header, *(",".join(r) for r in rows)]).encode()
        if draw(st.booleans()):
            at = draw(st.integers(0, len(text)))
            text = (
                text[:at] + draw(st.sampled_from([b"\xff", b"\xed\xa0\x80", b"\x00", b"\r", b"\x1f\x8b"])) + text[at:]
            )
        return text
    if kind == 2:
        data = _table_file(draw(st.sampled_from(["parquet", "arrow"])))
        cut = draw(st.integers(0, len(data)))
        return data[:cut] if draw(st.booleans()) else data[:cut] + bytes([draw(st.integers(0, 255))]) + data[cut + 1 :]
    if kind == 3:
        return rows_csv(draw(st.integers(1, 50)), start_id=draw(st.integers(0, 10**6)))
    return draw(v.binaries(4096))


_TABLE_FILES: dict[str, bytes] = {}


def _table_file(kind: str) -> bytes:
    if kind not in _TABLE_FILES:
        import pyarrow.csv as pcsv
        import pyarrow.ipc as ipc
        import pyarrow.parquet as pq

        table = pcsv.read_csv(io.BytesIO(rows_csv(20)))
        sink = io.BytesIO()
        if kind == "parquet":
            pq.write_table(table, sink)
        else:
            with ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
        _TABLE_FILES[kind] = sink.getvalue()
    return _TABLE_FILES[kind]


def _register_model(world: World, messages: MessageStrategies) -> st.SearchStrategy[list[Message]]:
    header_msg = messages.of(registry_pb2.RegisterModelHeader.DESCRIPTOR)

    @st.composite
    def build(draw: st.DrawFn) -> list[Message]:
        artifact = draw(
            st.one_of(
                v.binaries(4096),
                st.builds(lambda cut: _onnx_model()[:cut], st.integers(0, len(_onnx_model()))),
                st.just(_onnx_model()),
            )
        )
        header = draw(header_msg)
        assert isinstance(header, registry_pb2.RegisterModelHeader)
        header.model_name = draw(st.sampled_from([world.model, "fuzz-other"]) | messages.strings)
        header.artifact_uri = ""
        if draw(st.booleans()):
            header.sha256 = hashlib.sha256(artifact).hexdigest()
        if draw(st.booleans()):
            header.format = "onnx"
        chunks = [artifact[i : i + 1024] for i in range(0, len(artifact), 1024)] or [b""]
        return [
            registry_pb2.RegisterModelRequest(header=header),
            *[registry_pb2.RegisterModelRequest(chunk=c) for c in chunks[:64]],
        ]

    return build()


_ONNX: list[bytes] = []


def _onnx_model() -> bytes:
    """A tiny valid ONNX model (x + 1 over [N, 4] floats), built once."""
    if not _ONNX:
        from onnx import TensorProto, helper

        x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])
        y = helper.make_tensor_value_info("label", TensorProto.FLOAT, ["N", 4])
        one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
        graph = helper.make_graph([helper.make_node("Add", ["X", "one"], ["label"])], "fuzz", [x], [y], [one])
        _ONNX.append(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return _ONNX[0]


def _model_infer(world: World, messages: MessageStrategies) -> st.SearchStrategy[Message]:
    @st.composite
    def build(draw: st.DrawFn) -> Message:
        rows = draw(st.sampled_from([0, 1, 3, 64, 10**6, 2**31, -1]) | v.ints(*v.INT64))
        width = draw(st.sampled_from([len(FEATURES), 0, 3, 5]))
        datatype = draw(st.sampled_from(["FP32", "FP64", "INT64", "BYTES", "BOOL", "FP16", "UINT8", "", "fp32"]))
        tensor = oip.ModelInferRequest.InferInputTensor(
            name=draw(st.sampled_from([world.input_name, "x", ""])), datatype=datatype, shape=[rows, width]
        )
        request = oip.ModelInferRequest(
            model_name=draw(st.sampled_from([world.model]) | messages.strings),
            model_version=draw(st.sampled_from(["", str(world.model_version), "0", "-1", "999", "abc"])),
            id=draw(st.text(max_size=12)),
        )
        count = max(0, min(rows, 256)) * width if 0 <= rows * width <= 10**6 else draw(st.integers(0, 64))
        values = draw(st.lists(v.floats(32), min_size=count, max_size=count))
        if draw(st.booleans()):
            with np.errstate(all="ignore"):
                request.raw_input_contents.append(np.array(values, dtype=np.float32).tobytes())
        else:
            tensor.contents.fp32_contents.extend(values)
        request.inputs.append(tensor)
        if draw(st.booleans()):
            request.outputs.add(name=draw(st.sampled_from(["label", "probabilities", "nope", ""])))
        return request

    return build()


def _create_spec(world: World, messages: MessageStrategies) -> st.SearchStrategy[Message]:
    huge = st.sampled_from([10**9, 2**31 - 1, 10**6, -1, 0, 1.5, float("nan"), float("inf"), "auto", None, [10**6] * 3])
    param_names = st.sampled_from(
        ["n_estimators", "max_depth", "hidden_layer_sizes", "max_iter", "C", "learning_rate", "min_samples_leaf", "x"]
    )

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        spec = training_pb2.TrainingSpec(
            name=draw(st.sampled_from(["fuzz-spec", "fuzz-spec-2"]) | messages.strings),
            dataset=draw(st.sampled_from(world.datasets) | messages.strings),
            model_name=draw(st.sampled_from([world.model, "fuzz-spec-model"]) | messages.strings),
            task=draw(st.sampled_from(list(common_pb2.Task.values()))),
            estimator=draw(st.sampled_from(list(training_pb2.Estimator.values()))),
            metric=draw(st.sampled_from(["accuracy", "f1", "rmse", "", "nope"])),
        )
        space = spec.search_space
        space.strategy = draw(st.sampled_from(list(training_pb2.SearchStrategy.values())))
        space.trial_budget = draw(v.ints(*v.INT32, known=(1, 2, 10**6)))
        space.cv_folds = draw(v.ints(*v.INT32, known=(2, 3, 10**6)))
        for name in draw(st.lists(param_names, max_size=3, unique=True)):
            if draw(st.booleans()):
                choices = ListValue()
                choices.extend(draw(st.lists(huge, min_size=0, max_size=4)))
                space.params[name].choices.CopyFrom(choices)
            else:
                space.params[name].range.low = draw(v.floats())
                space.params[name].range.high = draw(v.floats())
                space.params[name].range.log = draw(st.booleans())
                space.params[name].range.integer = draw(st.booleans())
        fixed = draw(st.dictionaries(param_names, huge, max_size=3))
        space.fixed_params.update(fixed)
        spec.triggers.on_data_versioned = draw(st.booleans())
        spec.feature_fields.extend(draw(st.lists(st.sampled_from([*FEATURES, "color", "label", "nope"]), max_size=4)))
        spec.parity_tolerance = draw(v.floats())
        return training_pb2.CreateSpecRequest(spec=spec)

    return build()


_NEAR_VALID: dict[str, Callable[[World, MessageStrategies], st.SearchStrategy]] = {
    "/flywheel.v1.IngestionService/IngestDataset": _ingest_dataset,
    "/flywheel.v1.RegistryService/RegisterModel": _register_model,
    "/inference.GRPCInferenceService/ModelInfer": _model_infer,
    "/inference.GRPCInferenceService/ModelStreamInfer": lambda w, m: st.lists(_model_infer(w, m), max_size=3),
    "/flywheel.v1.TrainingService/CreateSpec": _create_spec,
}
