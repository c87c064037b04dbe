"""Hostile and broken input against real processes (issue 12's acceptance): each test sends what an
outside client, producer or model file could send, and asserts the answer (a status code, or a DLQ
record with its error headers), that the service's process survived (same PID), and that a good
input right after it is processed.

One `flywheel up` for the module, with small caps so every limit is cheap to reach.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from google.protobuf.duration_pb2 import Duration
from onnx import TensorProto, helper

from flywheel.bus.topics import Topics
from flywheel.v1 import common_pb2, ingestion_pb2, registry_pb2
from services.ingestion.tables import DEFAULT_LIMITS
from tests.polling import wait_until

from .clients import Clients, make_csv, schema
from .hostile import (
    assert_same_process,
    dead_letter,
    dead_letters,
    dlq_headers,
    peak_rss,
    produce,
    refusal,
    reset_peak_rss,
    service_pid,
)
from .stack import UpProcess

I = ingestion_pb2  # noqa: E741
R = registry_pb2
CODE = grpc.StatusCode

MiB = 1024 * 1024
MAX_UPLOAD_MB = DEFAULT_LIMITS.max_line_bytes // MiB + 4  # room for a CSV line over the line cap
MAX_ROWS = 10_000
MAX_DECODED_MB = 1
MAX_CELL_CHARS = 1_000
MAX_ARTIFACT_MB = 1

LIMITS = "limits"  # the dataset the read-limit tests ingest into
RECORDS = "records"  # the dataset fed through flywheel.ingest.records
MODEL = "hostile-model"


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An ingest root, and a directory beside it that is not one (with a readable CSV in it)."""
    base = tmp_path_factory.mktemp("hostile_input")
    root, outside = base / "root", base / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "data.csv").write_bytes(make_csv(20, start_id=900_000))
    return {"base": base, "root": root, "outside": outside}


@pytest.fixture(scope="module")
def stack(dirs: dict[str, Path]) -> Iterator[UpProcess]:
    up = UpProcess(
        dirs["base"] / "home",
        env={
            "FLYWHEEL_INGEST_ROOTS": str(dirs["root"]),
            "FLYWHEEL_INGESTION_MAX_UPLOAD_MB": str(MAX_UPLOAD_MB),
            "FLYWHEEL_INGESTION_MAX_ROWS": str(MAX_ROWS),
            "FLYWHEEL_INGESTION_MAX_DECODED_MB": str(MAX_DECODED_MB),
            "FLYWHEEL_INGESTION_MAX_CELL_CHARS": str(MAX_CELL_CHARS),
            "FLYWHEEL_REGISTRY_MAX_ARTIFACT_MB": str(MAX_ARTIFACT_MB),
        },
    )
    up.start()
    yield up
    up.kill_all()


@pytest.fixture(scope="module")
def limits_dataset(api: Clients) -> str:
    api.ingestion.CreateDataset(I.CreateDatasetRequest(dataset=I.Dataset(name=LIMITS, schema=schema())))
    return LIMITS


# -- ingestion helpers --------------------------------------------------------------------------


class _Ids:
    """Fresh key ranges, so every good ingest adds new rows (and so makes a new version)."""

    next = 0

    @classmethod
    def take(cls, n: int) -> int:
        start, cls.next = cls.next, cls.next + n
        return start


def _latest(api: Clients, dataset: str) -> int:
    return api.ingestion.GetDataset(I.GetDatasetRequest(name=dataset)).dataset.latest_version


def _upload(dataset: str, data: bytes, fmt: int = I.DATA_FORMAT_CSV) -> Iterator[I.IngestDatasetRequest]:
    yield I.IngestDatasetRequest(header=I.IngestHeader(dataset=dataset, format=fmt))
    for i in range(0, len(data), MiB):
        yield I.IngestDatasetRequest(chunk=data[i : i + MiB])


def _from_uri(api: Clients, dataset: str, uri: str, fmt: int = 0) -> I.IngestFromUriResponse:
    return api.ingestion.IngestFromUri(I.IngestFromUriRequest(dataset=dataset, uri=uri, format=fmt))


def _good_upload(api: Clients, dataset: str) -> None:
    """A clean CSV upload right after a refusal: a new version with every row accepted."""
    before = _latest(api, dataset)
    resp = api.ingestion.IngestDataset(_upload(dataset, make_csv(50, start_id=_Ids.take(50))))
    assert resp.version.ref.version == before + 1 and resp.stats.rows_accepted == 50, resp


def _good_file(api: Clients, dataset: str, root: Path) -> None:
    """A clean CSV inside the ingest root, read by IngestFromUri right after a refusal."""
    path = root / f"good-{_Ids.next}.csv"
    path.write_bytes(make_csv(50, start_id=_Ids.take(50)))
    before = _latest(api, dataset)
    resp = _from_uri(api, dataset, str(path))
    assert resp.version.ref.version == before + 1 and resp.stats.rows_accepted == 50, resp


def _table(rows: int, **extra: pa.Array) -> pa.Table:
    """`rows` rows in the shape of clients.schema() (constant values: they compress to nothing)."""
    columns = {"id": pa.array(np.zeros(rows, dtype=np.int64))}
    columns |= {f"f{i}": pa.array(np.zeros(rows)) for i in range(4)}
    columns["label"] = pa.array(np.zeros(rows, dtype=np.int64))
    return pa.table({**columns, **extra})


def _parquet(table: pa.Table) -> bytes:
    out = io.BytesIO()
    pq.write_table(table, out, compression="zstd")
    return out.getvalue()


def _arrow(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _noise(n: int) -> bytes:
    """Random bytes, the same every run (a failure must reproduce)."""
    return np.random.default_rng(12).bytes(n)


def _wide(columns: int) -> pa.Table:
    return pa.table({f"c{i}": pa.array([0], pa.int8()) for i in range(columns)})


def _bomb() -> pa.Table:
    """Within the row cap and a few KiB compressed, but ~5 MiB decoded (5x the decoded cap): one
    long string repeated, which dictionary encoding and zstd shrink to almost nothing. Its Parquet
    metadata declares a tiny size too, so only reading batch by batch catches it."""
    return _table(MAX_ROWS, pad=pa.array(["x" * 500] * MAX_ROWS))


# -- flywheel.ingest.records: the issue's original report ---------------------------------------

RECORD_CASES = {
    # A JSON string no UTF-8 column can hold: it used to put ingestion in a crash loop.
    "lone surrogate": b'{"id": %d, "color": "\\ud800"}',
    "not UTF-8": b'{"id": %d, "color": "\xff\xfe"}',
    "not a row": b'[%d, "blue"]',
}


@pytest.fixture(scope="module")
def records_dataset(api: Clients) -> str:
    fields = [
        common_pb2.Field(name="id", type=common_pb2.FIELD_TYPE_INT),
        common_pb2.Field(name="color", type=common_pb2.FIELD_TYPE_CATEGORICAL),
    ]
    dataset = I.Dataset(
        name=RECORDS,
        schema=common_pb2.Schema(fields=fields, key_field="id", train_fraction=0.5),
        micro_batch=I.MicroBatchPolicy(max_rows=1),  # a batch per record: the good one is never in the bad one's
    )
    api.ingestion.CreateDataset(I.CreateDatasetRequest(dataset=dataset))
    return RECORDS


@pytest.mark.parametrize("case", list(RECORD_CASES))
def test_a_record_ingestion_cannot_read_is_dead_lettered(
    stack: UpProcess, api: Clients, records_dataset: str, case: str
) -> None:
    pid = service_pid(stack, "ingestion")
    key = records_dataset.encode()
    bad = RECORD_CASES[case] % _Ids.take(1)
    produce(stack, Topics.INGEST_RECORDS, key, bad)

    headers = dlq_headers(dead_letter(stack, Topics.INGEST_RECORDS, bad, key))
    assert headers.get("error.type"), headers
    message = headers.get("error.message", b"")
    assert message, headers
    for echo in (b"ud800", b"\xed\xa0\x80", b"\xff\xfe", b"blue"):  # the value, escaped, raw or re-encoded
        assert echo not in message, message
    if case == "lone surrogate":
        assert b"color" in message, message  # the field at fault

    assert_same_process(stack, "ingestion", pid)
    before = _latest(api, records_dataset)  # the gRPC API answers too
    produce(stack, Topics.INGEST_RECORDS, key, json.dumps({"id": _Ids.take(1), "color": "red"}).encode())
    wait_until(lambda: _latest(api, records_dataset) > before, 30, "a version from the good record")
    sent_back = [r.value for r in dead_letters(stack, Topics.INGEST_RECORDS, key, idle_s=0.5)]
    assert sent_back.count(bad) == 1, "dead-lettered more than once: it is being retried"
    assert_same_process(stack, "ingestion", pid)


# -- IngestFromUri: only files under the ingest roots -------------------------------------------


def test_ingest_from_uri_reads_only_under_the_roots(
    stack: UpProcess, api: Clients, dirs: dict[str, Path], limits_dataset: str
) -> None:
    pid = service_pid(stack, "ingestion")
    root, outside = dirs["root"], dirs["outside"]
    (root / "link.csv").symlink_to(outside / "data.csv")
    (root / "dirlink").symlink_to(outside)
    uris = {
        "outside, existing": str(outside / "data.csv"),
        "outside, missing": str(outside / "missing.csv"),
        "outside, file://": f"file://{outside / 'data.csv'}",
        "a system file": "/etc/passwd",
        "a symlink in the root to a file outside": str(root / "link.csv"),
        "through a symlinked directory": str(root / "dirlink" / "data.csv"),
        "dot-dot": f"{root}/../outside/data.csv",
        "dot-dot, missing": f"{root}/../outside/missing.csv",
    }
    answers = {}
    for what, uri in uris.items():
        code, details = refusal(lambda uri=uri: _from_uri(api, limits_dataset, uri, I.DATA_FORMAT_CSV))
        assert code == CODE.PERMISSION_DENIED, (what, code, details)
        answers[what] = details
    # Whether the path exists is not told: one answer for all, naming the field and nothing of the path.
    assert len(set(answers.values())) == 1, answers
    assert next(iter(answers.values())).startswith("uri"), answers
    assert not any(str(dirs["base"]) in d or "passwd" in d for d in answers.values()), answers

    assert_same_process(stack, "ingestion", pid)
    _good_file(api, limits_dataset, root)
    assert_same_process(stack, "ingestion", pid)


# -- read limits: IngestDataset (stream) and IngestFromUri (file in the root) -------------------

# name -> (how it is sent, the bytes, their format, the code, text the details hold)
LIMIT_CASES: dict[str, tuple[str, Callable[[], bytes], int, grpc.StatusCode, str]] = {
    "rows: CSV upload": ("stream", lambda: make_csv(MAX_ROWS + 1), I.DATA_FORMAT_CSV, CODE.RESOURCE_EXHAUSTED, "rows"),
    "rows: Arrow upload": (
        "stream", lambda: _arrow(_table(MAX_ROWS + 1)), I.DATA_FORMAT_ARROW_IPC, CODE.RESOURCE_EXHAUSTED, "rows"
    ),
    "rows: Parquet file": (
        "uri", lambda: _parquet(_table(MAX_ROWS + 1)), I.DATA_FORMAT_PARQUET, CODE.RESOURCE_EXHAUSTED, "rows"
    ),
    "columns: Arrow upload": (
        "stream", lambda: _arrow(_wide(10_001)), I.DATA_FORMAT_ARROW_IPC, CODE.RESOURCE_EXHAUSTED, "columns"
    ),
    "columns: Parquet file": (
        "uri", lambda: _parquet(_wide(10_001)), I.DATA_FORMAT_PARQUET, CODE.RESOURCE_EXHAUSTED, "columns"
    ),
    "bomb: Arrow upload": (
        "stream", lambda: _arrow(_bomb()), I.DATA_FORMAT_ARROW_IPC, CODE.RESOURCE_EXHAUSTED, "bytes"
    ),
    "bomb: Parquet upload": (
        "stream", lambda: _parquet(_bomb()), I.DATA_FORMAT_PARQUET, CODE.RESOURCE_EXHAUSTED, "bytes"
    ),
    "bomb: Parquet file": ("uri", lambda: _parquet(_bomb()), I.DATA_FORMAT_PARQUET, CODE.RESOURCE_EXHAUSTED, "bytes"),
    "corrupt Parquet file": (
        "uri", lambda: b"PAR1" + _noise(2000) + b"PAR1", I.DATA_FORMAT_PARQUET, CODE.INVALID_ARGUMENT, "data"
    ),
    "truncated Parquet upload": (
        "stream", lambda: _parquet(_table(100))[:-300], I.DATA_FORMAT_PARQUET, CODE.INVALID_ARGUMENT, "data"
    ),
    "corrupt Arrow upload": (
        "stream", lambda: b"\xff" * 8 + _noise(2000), I.DATA_FORMAT_ARROW_IPC, CODE.INVALID_ARGUMENT, "data"
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(LIMIT_CASES))
def test_input_past_the_read_limits_is_refused(
    stack: UpProcess, api: Clients, dirs: dict[str, Path], limits_dataset: str, case: str
) -> None:
    how, make, fmt, expected, text = LIMIT_CASES[case]
    data = make()
    assert len(data) < MAX_UPLOAD_MB * MiB  # refused for what it decodes to, not for its size
    pid = service_pid(stack, "ingestion")
    if how == "stream":
        code, details = refusal(lambda: api.ingestion.IngestDataset(_upload(limits_dataset, data, fmt)))
    else:
        path = dirs["root"] / f"{case.replace(' ', '-').replace(':', '')}.bin"
        path.write_bytes(data)
        code, details = refusal(lambda: _from_uri(api, limits_dataset, str(path), fmt))
    assert code == expected and text in details, (code, details)

    assert_same_process(stack, "ingestion", pid)
    if how == "stream":
        _good_upload(api, limits_dataset)
    else:
        _good_file(api, limits_dataset, dirs["root"])
    assert_same_process(stack, "ingestion", pid)


def _zero_bytes_table(rows: int, width: int) -> pa.Table:
    """`rows` values of `width` zero bytes each, in the shape of clients.schema() plus that column;
    the zero pages cost this process no memory, and compress to almost nothing."""
    zeros = pa.py_buffer(np.zeros(rows * width, dtype=np.uint8))
    return _table(rows, pad=pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), rows, [None, zeros]))


@pytest.mark.parametrize("fmt", [I.DATA_FORMAT_PARQUET, I.DATA_FORMAT_ARROW_IPC], ids=["Parquet", "Arrow"])
def test_a_decompression_bomb_is_refused_before_it_is_decoded(
    stack: UpProcess, api: Clients, limits_dataset: str, fmt: int
) -> None:
    """Within the row cap and under 10 KB, but 256 MiB decoded (256x the decoded cap): refusing it
    must not cost the service anything like that much memory."""
    table = _zero_bytes_table(MAX_ROWS, 256 * MiB // MAX_ROWS)
    data = _parquet(table) if fmt == I.DATA_FORMAT_PARQUET else _arrow(table)
    assert len(data) < 10_000
    pid = service_pid(stack, "ingestion")
    base = reset_peak_rss(pid)
    code, details = refusal(lambda: api.ingestion.IngestDataset(_upload(limits_dataset, data, fmt)))
    grown = peak_rss(pid) - base
    assert code == CODE.RESOURCE_EXHAUSTED and details.startswith("data"), (code, details)
    assert grown < 64 * MiB, f"refusing a {len(data)}-byte upload took {grown // MiB} MiB of memory"

    assert_same_process(stack, "ingestion", pid)
    _good_upload(api, limits_dataset)


def test_a_csv_line_over_the_line_cap_is_refused_without_echoing_it(
    stack: UpProcess, api: Clients, limits_dataset: str
) -> None:
    # The long cell is in a column the schema does not have, so only the line cap can catch it.
    line = b"SECRET-LINE-" * (DEFAULT_LIMITS.max_line_bytes // 12 + MiB // 12)
    data = b"id,f0,f1,f2,f3,label,notes\n1,0,0,0,0,1,short\n2,0,0,0,0,1," + line + b"\n"
    assert DEFAULT_LIMITS.max_line_bytes < len(line) < MAX_UPLOAD_MB * MiB
    pid = service_pid(stack, "ingestion")
    code, details = refusal(lambda: api.ingestion.IngestDataset(_upload(limits_dataset, data)))
    assert code == CODE.INVALID_ARGUMENT and details.startswith("data"), (code, details[:300])
    assert "SECRET" not in details, details[:300]
    assert_same_process(stack, "ingestion", pid)
    _good_upload(api, limits_dataset)


def test_a_csv_cell_over_the_cell_cap_is_refused_without_echoing_it(
    stack: UpProcess, api: Clients, limits_dataset: str
) -> None:
    cell = b"SECRET-CELL-" * (MAX_CELL_CHARS // 12 + 1)
    data = b"id,f0,f1,f2,f3,label\n1,0,0,0,0,1\n2," + cell + b",0,0,0,1\n"
    pid = service_pid(stack, "ingestion")
    code, details = refusal(lambda: api.ingestion.IngestDataset(_upload(limits_dataset, data)))
    assert code == CODE.INVALID_ARGUMENT and details.startswith("f0"), (code, details)  # the field at fault
    assert "SECRET" not in details, details
    assert_same_process(stack, "ingestion", pid)
    _good_upload(api, limits_dataset)


def test_an_upload_or_file_over_the_byte_cap_is_refused(
    stack: UpProcess, api: Clients, dirs: dict[str, Path], limits_dataset: str
) -> None:
    data = make_csv(10) + b"\n" * (MAX_UPLOAD_MB * MiB)  # valid CSV if it were read at all
    pid = service_pid(stack, "ingestion")
    code, details = refusal(lambda: api.ingestion.IngestDataset(_upload(limits_dataset, data)))
    assert code == CODE.RESOURCE_EXHAUSTED and details.startswith("chunk"), (code, details)
    path = dirs["root"] / "big.csv"
    path.write_bytes(data)
    code, details = refusal(lambda: _from_uri(api, limits_dataset, str(path)))
    assert code == CODE.RESOURCE_EXHAUSTED and details.startswith("uri"), (code, details)

    assert_same_process(stack, "ingestion", pid)
    _good_upload(api, limits_dataset)
    _good_file(api, limits_dataset, dirs["root"])


# -- dataset definitions ------------------------------------------------------------------------


def _field(ds: I.Dataset, name: str) -> common_pb2.Field:
    return next(f for f in ds.schema.fields if f.name == name)


def _categorical(ds: I.Dataset) -> common_pb2.Field:
    return ds.schema.fields.add(name="cat", type=common_pb2.FIELD_TYPE_CATEGORICAL, nullable=True)


# name -> (what makes a good definition hostile, the field the answer names)
DEFINITION_CASES: dict[str, tuple[Callable[[I.Dataset], object], str]] = {
    "field named __split": (lambda ds: ds.schema.fields.add(name="__split", type=1), "dataset.schema.fields[6].name"),
    "field named __x": (lambda ds: ds.schema.fields.add(name="__x", type=1), "dataset.schema.fields[6].name"),
    "field name too long": (lambda ds: ds.schema.fields.add(name="n" * 257, type=1), "dataset.schema.fields[6].name"),
    "min NaN": (lambda ds: setattr(_field(ds, "f0"), "min", float("nan")), "dataset.schema.fields[1].min"),
    "min -inf": (lambda ds: setattr(_field(ds, "f0"), "min", float("-inf")), "dataset.schema.fields[1].min"),
    "max inf": (lambda ds: setattr(_field(ds, "f1"), "max", float("inf")), "dataset.schema.fields[2].max"),
    "max NaN": (lambda ds: setattr(_field(ds, "label"), "max", float("nan")), "dataset.schema.fields[5].max"),
    "too many allowed values": (
        lambda ds: _categorical(ds).allowed_values.extend(str(i) for i in range(10_001)),
        "dataset.schema.fields[6].allowed_values",
    ),
    "an allowed value too long": (
        lambda ds: _categorical(ds).allowed_values.extend(["a", "b" * 257]),
        "dataset.schema.fields[6].allowed_values",
    ),
    "too many fields": (
        lambda ds: ds.schema.fields.extend(common_pb2.Field(name=f"g{i}", type=1) for i in range(1_000)),
        "dataset.schema.fields",
    ),
    "description too long": (lambda ds: setattr(ds, "description", "d" * 4_097), "dataset.description"),
    # A field's description travels in every data.versioned event, like the dataset's own.
    "field description too long": (
        lambda ds: setattr(_field(ds, "f0"), "description", "d" * 4_097), "dataset.schema.fields[1].description"
    ),
    "train_fraction NaN": (
        lambda ds: setattr(ds.schema, "train_fraction", float("nan")), "dataset.schema.train_fraction"
    ),
    "train_fraction inf": (
        lambda ds: setattr(ds.schema, "train_fraction", float("inf")), "dataset.schema.train_fraction"
    ),
    "micro-batch rows too many": (
        lambda ds: setattr(ds.micro_batch, "max_rows", 1_000_001), "dataset.micro_batch.max_rows"
    ),
    "micro-batch rows negative": (lambda ds: setattr(ds.micro_batch, "max_rows", -1), "dataset.micro_batch.max_rows"),
    "micro-batch wait too long": (
        lambda ds: ds.micro_batch.max_wait.CopyFrom(Duration(seconds=3_601)), "dataset.micro_batch.max_wait"
    ),
    "micro-batch wait negative": (
        lambda ds: ds.micro_batch.max_wait.CopyFrom(Duration(seconds=-1)), "dataset.micro_batch.max_wait"
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(DEFINITION_CASES))
def test_a_dataset_definition_out_of_bounds_is_refused(stack: UpProcess, api: Clients, case: str) -> None:
    spoil, field = DEFINITION_CASES[case]
    name = f"def-{list(DEFINITION_CASES).index(case)}"
    bad = I.Dataset(name=name, schema=schema())
    spoil(bad)
    pid = service_pid(stack, "ingestion")
    code, details = refusal(lambda: api.ingestion.CreateDataset(I.CreateDatasetRequest(dataset=bad)))
    assert code == CODE.INVALID_ARGUMENT and details.startswith(f"{field}:"), (code, details[:300])

    assert_same_process(stack, "ingestion", pid)
    good = I.Dataset(name=name, schema=schema(), micro_batch=I.MicroBatchPolicy(max_rows=1_000_000))
    good.micro_batch.max_wait.CopyFrom(Duration(seconds=3_600))
    assert api.ingestion.CreateDataset(I.CreateDatasetRequest(dataset=good)).dataset.name == name
    assert_same_process(stack, "ingestion", pid)


# -- registry: model files, metadata, policies, downloads ----------------------------------------


@pytest.fixture(scope="module")
def good_model() -> bytes:
    """A trained classifier as training would register it."""
    from skl2onnx import to_onnx  # slow imports: only for this module's registry tests
    from sklearn.linear_model import LogisticRegression

    x = np.random.default_rng(0).normal(size=(60, 3)).astype(np.float32)
    clf = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    return to_onnx(
        clf, x[:1], options={id(clf): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3}
    ).SerializeToString()


def _header(**fields: object) -> R.RegisterModelHeader:
    signature = common_pb2.ModelSignature(
        inputs=[common_pb2.TensorSpec(name="X", datatype="FP32", shape=[-1, 3])],
        outputs=[
            common_pb2.TensorSpec(name="label", datatype="INT64", shape=[-1]),
            common_pb2.TensorSpec(name="probabilities", datatype="FP32", shape=[-1, 2]),
        ],
        feature_names=["f0", "f1", "f2"],
        class_labels=["0", "1"],
    )
    header = R.RegisterModelHeader(
        model_name=MODEL, task=common_pb2.TASK_CLASSIFICATION, signature=signature, format="onnx"
    )
    for name, value in fields.items():
        field = getattr(header, name)
        if isinstance(value, dict):
            field.update(value)
        elif isinstance(value, list):
            field.extend(value)
        elif hasattr(field, "CopyFrom"):
            field.CopyFrom(value)
        else:
            setattr(header, name, value)
    return header


def _register(api: Clients, data: bytes, header: R.RegisterModelHeader | None = None) -> R.RegisterModelResponse:
    def requests() -> Iterator[R.RegisterModelRequest]:
        yield R.RegisterModelRequest(header=header or _header())
        for i in range(0, len(data), 256 * 1024):
            yield R.RegisterModelRequest(chunk=data[i : i + 256 * 1024])

    return api.registry.RegisterModel(requests())


def _good_registration(api: Clients, data: bytes) -> int:
    resp = _register(api, data)
    assert resp.created, resp
    return resp.version.ref.version


def _add_model(opset: int = 17, domain: str = "", weights: int = 2) -> onnx.ModelProto:
    weight = helper.make_tensor("w", TensorProto.FLOAT, [weights], np.arange(weights, dtype=np.float32))
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [weights])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [weights])],
        initializer=[weight],
    )
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets)


def _external_data() -> bytes:
    model = _add_model()
    weight = model.graph.initializer[0]
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="../../../../etc/passwd")
    return model.SerializeToString()


def _checker_fails() -> bytes:
    model = _add_model()
    model.graph.node[0].input[1] = "undefined"
    return model.SerializeToString()


# name -> (the artifact, the code)
ARTIFACT_CASES: dict[str, tuple[Callable[[], bytes], grpc.StatusCode]] = {
    "text, not ONNX": (lambda: b"not a model " * 100, CODE.INVALID_ARGUMENT),
    "random bytes": (lambda: _noise(4096), CODE.INVALID_ARGUMENT),
    "external tensor data": (_external_data, CODE.INVALID_ARGUMENT),
    "unknown operator domain": (lambda: _add_model(domain="evil.ops").SerializeToString(), CODE.INVALID_ARGUMENT),
    "opset above the runtime's": (
        lambda: _add_model(opset=onnx.defs.onnx_opset_version() + 1).SerializeToString(), CODE.INVALID_ARGUMENT
    ),
    "graph the checker rejects": (_checker_fails, CODE.INVALID_ARGUMENT),
    "over the byte cap": (lambda: _noise(MAX_ARTIFACT_MB * MiB + 1), CODE.RESOURCE_EXHAUSTED),
}  # fmt: skip


@pytest.mark.parametrize("case", list(ARTIFACT_CASES))
def test_a_model_file_that_is_not_a_self_contained_onnx_model_is_refused(
    stack: UpProcess, api: Clients, good_model: bytes, case: str
) -> None:
    make, expected = ARTIFACT_CASES[case]
    pid = service_pid(stack, "registry")
    code, details = refusal(lambda: _register(api, make()))
    assert code == expected and details.startswith("chunk"), (code, details)
    assert "passwd" not in details, details

    assert_same_process(stack, "registry", pid)
    _good_registration(api, good_model)
    assert_same_process(stack, "registry", pid)


def _metrics(*values: float) -> list[common_pb2.Metric]:
    return [common_pb2.Metric(name=f"m{i}", value=v, split=common_pb2.SPLIT_TEST) for i, v in enumerate(values)]


def _policy(min_improvement: float) -> common_pb2.PromotionPolicy:
    return common_pb2.PromotionPolicy(
        metric="accuracy", direction=common_pb2.METRIC_DIRECTION_MAXIMIZE, min_improvement=min_improvement
    )


# name -> (header fields, the field the answer names)
HEADER_CASES: dict[str, tuple[dict[str, object], str]] = {
    "too many tags": ({"tags": {f"k{i}": "v" for i in range(65)}}, "header.tags"),
    "tag key too long": ({"tags": {"k" * 129: "v"}}, "header.tags"),
    "empty tag key": ({"tags": {"": "v"}}, "header.tags"),
    "tag value too long": ({"tags": {"k": "v" * 1_025}}, "header.tags"),
    "description too long": ({"description": "d" * 4_097}, "header.description"),
    "too many metrics": ({"metrics": _metrics(*[0.5] * 1_001)}, "header.metrics"),
    "metric NaN": ({"metrics": _metrics(0.5, float("nan"))}, "header.metrics[1].value"),
    "metric inf": ({"metrics": _metrics(float("inf"))}, "header.metrics[0].value"),
    "metric -inf": ({"metrics": _metrics(0.5, 0.5, float("-inf"))}, "header.metrics[2].value"),
    "metric without a name": ({"metrics": [common_pb2.Metric(value=0.5)]}, "header.metrics[0]"),
    "policy min_improvement NaN": (
        {"promotion_policy": _policy(float("nan"))}, "header.promotion_policy.min_improvement"
    ),
    "calibration sample as a file path": ({"calibration_uri": "file:///etc/passwd"}, "header.calibration_uri"),
    "calibration sample, not a digest": ({"calibration_uri": "sha256:../../etc/passwd"}, "header.calibration_uri"),
    "calibration sample of a regressor": (
        {"calibration_uri": "sha256:" + "0" * 64, "task": common_pb2.TASK_REGRESSION}, "header.calibration_uri"
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(HEADER_CASES))
def test_registration_metadata_out_of_bounds_is_refused(
    stack: UpProcess, api: Clients, good_model: bytes, case: str
) -> None:
    fields, field = HEADER_CASES[case]
    pid = service_pid(stack, "registry")
    code, details = refusal(lambda: _register(api, good_model, _header(**fields)))
    assert code == CODE.INVALID_ARGUMENT and details.startswith(f"{field}:"), (code, details[:300])

    assert_same_process(stack, "registry", pid)
    _good_registration(api, good_model)
    assert_same_process(stack, "registry", pid)


def test_a_calibration_sample_that_is_not_stored_is_not_found(
    stack: UpProcess, api: Clients, good_model: bytes
) -> None:
    pid = service_pid(stack, "registry")
    code, details = refusal(lambda: _register(api, good_model, _header(calibration_uri="sha256:" + "ab" * 32)))
    assert code == CODE.NOT_FOUND and details.startswith("header.calibration_uri:"), (code, details)
    assert_same_process(stack, "registry", pid)


def test_tags_out_of_bounds_are_refused(stack: UpProcess, api: Clients, good_model: bytes) -> None:
    version = _good_registration(api, good_model)
    pid = service_pid(stack, "registry")
    for tags in ({f"k{i}": "v" for i in range(65)}, {"k": "v" * 1_025}, {"k" * 129: "v"}, {"": "v"}):
        request = R.SetTagsRequest(name=MODEL, version=version, tags=tags)
        code, details = refusal(lambda request=request: api.registry.SetTags(request))
        assert code == CODE.INVALID_ARGUMENT and details.startswith("tags:"), (code, details[:300])

    assert_same_process(stack, "registry", pid)
    tags = {f"k{i}": "v" * 1_024 for i in range(64)}
    assert dict(api.registry.SetTags(R.SetTagsRequest(name=MODEL, version=version, tags=tags)).version.tags) == tags
    assert_same_process(stack, "registry", pid)


@pytest.mark.parametrize("min_improvement", [float("nan"), float("inf"), float("-inf"), -0.01, 1e6 + 1])
def test_a_promotion_policy_out_of_range_is_refused(
    stack: UpProcess, api: Clients, good_model: bytes, min_improvement: float
) -> None:
    _good_registration(api, good_model)  # the model exists
    pid = service_pid(stack, "registry")
    request = R.SetPromotionPolicyRequest(model_name=MODEL, policy=_policy(min_improvement))
    code, details = refusal(lambda: api.registry.SetPromotionPolicy(request))
    assert code == CODE.INVALID_ARGUMENT and details.startswith("policy.min_improvement:"), (code, details)

    assert_same_process(stack, "registry", pid)
    api.registry.SetPromotionPolicy(R.SetPromotionPolicyRequest(model_name=MODEL, policy=_policy(1e6)))
    policy = api.registry.GetPromotionPolicy(R.GetPromotionPolicyRequest(model_name=MODEL)).policy
    assert policy.min_improvement == 1e6
    assert_same_process(stack, "registry", pid)


def test_download_chunks_below_the_floor_are_refused(stack: UpProcess, api: Clients) -> None:
    data = _add_model(weights=60_000).SerializeToString()  # ~240 KB: several 64 KiB chunks
    version = _good_registration(api, data)
    pid = service_pid(stack, "registry")

    def download(chunk_size: int) -> list[R.DownloadArtifactResponse]:
        return list(
            api.registry.DownloadArtifact(R.DownloadArtifactRequest(name=MODEL, version=version, chunk_size=chunk_size))
        )

    for chunk_size in (1, 1_024, 64 * 1024 - 1, -1, 2**31 - 1):
        code, details = refusal(lambda chunk_size=chunk_size: download(chunk_size))
        assert code == CODE.INVALID_ARGUMENT and details.startswith("chunk_size:"), (chunk_size, code, details)

    assert_same_process(stack, "registry", pid)
    pieces = download(64 * 1024)
    assert [len(p.chunk) for p in pieces[:-1]] == [64 * 1024] * (len(pieces) - 1) and len(pieces) >= 3
    assert b"".join(p.chunk for p in pieces) == data
    assert pieces[0].sha256 == hashlib.sha256(data).hexdigest()
    assert [len(p.chunk) for p in download(0)] == [len(data)]  # the default: 1 MiB
    assert_same_process(stack, "registry", pid)
