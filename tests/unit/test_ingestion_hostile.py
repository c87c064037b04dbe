"""Hostile input to ingestion and the registry, below the gRPC layer: decompression bombs decoded in
a memory-capped child (this process's memory does not grow), the CSV line cap exact, dataset and
registration metadata bounded, refused values never echoed, refused model uploads never stored,
and each dataset's micro-batch policy applied from its first record on."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from onnx import TensorProto, helper

from flywheel.artifacts import LocalArtifactStore
from flywheel.config import Settings
from flywheel.errors import InvalidArgument, NotFound, ResourceExhausted
from flywheel.v1 import common_pb2, ingestion_pb2, registry_pb2
from services.ingestion import store
from services.ingestion.datasets import MAX_SPEC_BYTES, check_dataset
from services.ingestion.decode_guard import DecodeGuard
from services.ingestion.handlers import decode_rows
from services.ingestion.pipeline import prepare_version
from services.ingestion.policies import DEFAULT, MicroBatchPolicies
from services.ingestion.tables import ReadLimits, decode_untrusted, read_csv
from services.registry.catalog import Catalog
from services.registry.model_check import check_declared

MiB = 1024 * 1024
NAMES = ["id", "x"]
PARQUET, ARROW = ingestion_pb2.DATA_FORMAT_PARQUET, ingestion_pb2.DATA_FORMAT_ARROW_IPC
SMALL = ReadLimits(max_rows=10_000, max_decoded_bytes=MiB, max_cell_chars=1000, max_line_bytes=64 * 1024)


def _schema() -> common_pb2.Schema:
    return common_pb2.Schema(
        key_field="id",
        fields=[
            common_pb2.Field(name="id", type=common_pb2.FIELD_TYPE_INT),
            common_pb2.Field(name="x", type=common_pb2.FIELD_TYPE_FLOAT, min=0, max=10),
        ],
    )


# -- decompression bombs: decoded in a child under an address-space limit -----------------------


def _parquet(table: pa.Table) -> bytes:
    out = io.BytesIO()
    pq.write_table(table, out, compression="zstd")
    return out.getvalue()


def _arrow(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _bomb(rows: int = 10_000, total: int = 256 * MiB) -> pa.Table:
    """A few KB compressed, `total` bytes decoded: zero-filled fixed-size values."""
    zeros = pa.py_buffer(np.zeros(total // rows * rows, dtype=np.uint8))
    pad = pa.FixedSizeBinaryArray.from_buffers(pa.binary(total // rows), rows, [None, zeros])
    return pa.table({"id": pa.array(np.arange(rows)), "x": pa.array(np.ones(rows)), "pad": pad})


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise AssertionError(key)


def _reset_peak_rss() -> int:
    """Peak RSS (VmHWM) := current RSS; returns that, in KiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS")


@pytest.fixture
async def guard(tmp_path: Path) -> AsyncIterator[DecodeGuard]:
    g = DecodeGuard(tmp_path / "tmp", SMALL)
    yield g
    await g.close()


@pytest.mark.parametrize("fmt", [PARQUET, ARROW], ids=["Parquet", "Arrow"])
async def test_a_bomb_is_refused_without_this_process_decoding_it(guard: DecodeGuard, fmt: int) -> None:
    data = (_parquet if fmt == PARQUET else _arrow)(_bomb())
    assert len(data) < 64 * 1024
    base = _reset_peak_rss()
    with pytest.raises(ResourceExhausted) as err:
        await guard.decode([data], fmt, NAMES)
    assert err.value.field == "data" and "bytes" in str(err.value)
    assert (_status_kib("VmHWM") - base) * 1024 < 32 * MiB


@pytest.mark.parametrize("fmt", [PARQUET, ARROW], ids=["Parquet", "Arrow"])
async def test_a_normal_upload_decodes_in_the_child_as_it_would_in_process(
    guard: DecodeGuard, tmp_path: Path, fmt: int
) -> None:
    rng = np.random.default_rng(1)
    table = pa.table({"x": pa.array(rng.normal(size=5000)), "id": pa.array(np.arange(5000)), "extra": ["e"] * 5000})
    data = (_parquet if fmt == PARQUET else _arrow)(table)
    expected = decode_untrusted(data, fmt, NAMES, SMALL)
    assert (await guard.decode([data[:100], data[100:]], fmt, NAMES)).equals(expected)  # chunks, as uploaded
    path = tmp_path / "upload.bin"
    path.write_bytes(data)
    assert (await guard.decode(path, fmt, NAMES)).equals(expected)  # a file in an ingest root, read in place
    assert not list((tmp_path / "tmp").iterdir())  # the job's directory is gone


async def test_the_childs_refusals_keep_their_code_and_field(guard: DecodeGuard) -> None:
    with pytest.raises(ResourceExhausted, match="rows"):
        await guard.decode([_arrow(pa.table({"id": np.arange(10_001), "x": np.ones(10_001)}))], ARROW, NAMES)
    with pytest.raises(InvalidArgument) as err:
        await guard.decode([_parquet(pa.table({"id": [1]}))], PARQUET, NAMES)
    assert err.value.field == "x"  # the missing column
    noise = np.random.default_rng(2).bytes(2000)
    for data, fmt in ((b"PAR1" + noise + b"PAR1", PARQUET), (b"\xff" * 8 + noise, ARROW)):
        with pytest.raises(InvalidArgument) as err:
            await guard.decode([data], fmt, NAMES)
        assert err.value.field == "data" and "unreadable" in str(err.value)


async def test_a_type_error_does_not_echo_names_from_the_file(guard: DecodeGuard) -> None:
    nested = pa.table({"id": [1], "x": pa.array([{"secret_field_name": [1, 2]}])})
    with pytest.raises(InvalidArgument) as err:
        await guard.decode([_arrow(nested)], ARROW, NAMES)
    assert err.value.field == "x" and "secret" not in str(err.value)


# -- CSV: the line cap holds exactly -----------------------------------------------------------


def _csv_with_line(length: int, rows_before: int) -> bytes:
    """A CSV whose third column (not in the schema) makes one line exactly `length` bytes long,
    after `rows_before` short rows (12 bytes each): the long line starts anywhere in a block."""
    short = b"".join(b"%07d,1,s\n" % i for i in range(rows_before))
    prefix = b"9999999,1,"
    return b"id,x,notes\n" + short + prefix + b"n" * (length - len(prefix)) + b"\n1,2,s\n"


CSV = ReadLimits(max_line_bytes=64 * 1024)


@pytest.mark.parametrize("rows_before", [0, 1, 100, 3_000, 5_460, 5_461, 10_000, 16_000])
def test_a_line_of_exactly_the_cap_is_read_wherever_it_falls(rows_before: int) -> None:
    table = read_csv(_csv_with_line(CSV.max_line_bytes, rows_before), _schema(), limits=CSV)
    assert table.num_rows == rows_before + 2


@pytest.mark.parametrize("rows_before", [0, 100, 5_461])
def test_a_line_one_byte_over_the_cap_is_refused_wherever_it_falls(rows_before: int) -> None:
    data = _csv_with_line(CSV.max_line_bytes + 1, rows_before)
    with pytest.raises(InvalidArgument) as err:
        read_csv(data, _schema(), limits=CSV)
    assert err.value.field == "data" and f"line {rows_before + 2} is longer than 65536 bytes" in str(err.value)
    assert "nnnn" not in str(err.value)


# -- dataset definitions -----------------------------------------------------------------------


def _dataset(**fields: Any) -> ingestion_pb2.Dataset:
    return ingestion_pb2.Dataset(name="d", schema=_schema(), **fields)


def test_a_fields_description_is_bounded_like_the_datasets() -> None:
    ds = _dataset()
    ds.schema.fields[1].description = "d" * 4096
    check_dataset(ds)
    ds.schema.fields[1].description = "d" * 4097
    with pytest.raises(InvalidArgument) as err:
        check_dataset(ds)
    assert err.value.field == "dataset.schema.fields[1].description"


def test_a_definition_within_every_part_cap_but_too_big_as_a_whole_is_refused() -> None:
    ds = _dataset()
    for i in range(6):  # 6 fields of 1,000 values of 256 characters: 1.5 MB
        ds.schema.fields.add(
            name=f"c{i}", type=common_pb2.FIELD_TYPE_CATEGORICAL, allowed_values=[f"{j:0256d}" for j in range(1000)]
        )
    assert ds.ByteSize() > MAX_SPEC_BYTES
    with pytest.raises(InvalidArgument) as err:
        check_dataset(ds)
    assert err.value.field == "dataset"


@pytest.mark.parametrize(
    "spoil",
    [
        lambda ds: setattr(ds, "name", "BAD" * 1000),
        lambda ds: setattr(ds.schema, "key_field", "SECRET" * 100),
        lambda ds: setattr(ds.schema, "label_field", "SECRET" * 100),
    ],
)
def test_a_refused_definition_does_not_echo_names(spoil: Any) -> None:
    ds = _dataset()
    spoil(ds)
    with pytest.raises(InvalidArgument) as err:
        check_dataset(ds)
    assert "SECRET" not in str(err.value) and "BADBAD" not in str(err.value)


# -- refused values are not echoed --------------------------------------------------------------


def test_a_rejected_row_names_row_field_and_reason_but_not_the_value() -> None:
    raw = read_csv(b"id,x\n1,1\n2,SECRET-VALUE\n", _schema())
    with pytest.raises(InvalidArgument) as err:
        prepare_version(raw, _schema(), ingestion_pb2.INVALID_ROW_POLICY_REJECT, None, common_pb2.WRITE_MODE_APPEND)
    assert err.value.field == "x" and str(err.value) == "x: row 2: type_mismatch"


class _Record:
    def __init__(self, value: bytes) -> None:
        self.key, self.value, self.headers = b"d", value, []


@pytest.mark.parametrize("value", [b'{"id": 1, "c": "\xff\xfeSECRET"}', b'{"id": 1, "c": SECRET}'])
def test_an_unreadable_record_is_refused_without_quoting_it(value: bytes) -> None:
    with pytest.raises(Exception) as err:
        decode_rows(_Record(value))  # type: ignore[arg-type]
    assert "SECRET" not in str(err.value) and "\\xff" not in str(err.value) and "0xff" not in str(err.value)


class _NoRows:
    async def fetchrow(self, *args: Any) -> None:
        return None


async def test_an_unknown_dataset_is_named_only_when_its_name_is_well_formed() -> None:
    with pytest.raises(NotFound, match="'missing'"):
        await store.get_dataset(_NoRows(), "missing")  # type: ignore[arg-type]
    with pytest.raises(NotFound) as err:
        await store.get_dataset(_NoRows(), "SECRET " * 1000)  # type: ignore[arg-type]
    assert "SECRET" not in str(err.value)


# -- the records consumer: each dataset's micro-batch policy from its first record on ----------


def _with_policy(max_rows: int, wait_s: int) -> ingestion_pb2.Dataset:
    ds = _dataset(micro_batch=ingestion_pb2.MicroBatchPolicy(max_rows=max_rows))
    ds.micro_batch.max_wait.FromSeconds(wait_s)
    return ds


async def test_a_datasets_policy_applies_as_soon_as_it_is_looked_up() -> None:
    asked: list[str] = []

    async def lookup(key: str) -> ingestion_pb2.Dataset | None:
        asked.append(key)
        return _with_policy(1, 30) if key == "d" else None

    policies = MicroBatchPolicies(lookup)
    assert policies("d") == DEFAULT  # the first ask starts the lookup
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert policies("d") == (1, 30.0)
    assert policies("nope") == DEFAULT
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert policies("nope") == DEFAULT and asked == ["d", "nope"]  # not asked again before retry_s


async def test_unknown_keys_are_retried_later_and_remembered_within_bounds() -> None:
    now = [0.0]
    found: dict[str, ingestion_pb2.Dataset] = {}

    async def lookup(key: str) -> ingestion_pb2.Dataset | None:
        return found.get(key)

    policies = MicroBatchPolicies(lookup, max_entries=3, retry_s=5.0, clock=lambda: now[0])
    policies("late")
    await asyncio.sleep(0.01)
    found["late"] = _with_policy(7, 2)  # created after its first record arrived
    assert policies("late") == DEFAULT
    now[0] = 5.0
    policies("late")
    await asyncio.sleep(0.01)
    assert policies("late") == (7, 2.0)
    for i in range(10):  # a producer sending many keys does not grow it without bound
        policies(f"k{i}")
        await asyncio.sleep(0.01)
    assert len(policies._unknown) <= 3 and len(policies._known) <= 3


async def test_a_failed_lookup_falls_back_to_the_defaults() -> None:
    async def lookup(key: str) -> ingestion_pb2.Dataset | None:
        raise ConnectionError("database away")

    policies = MicroBatchPolicies(lookup)
    policies("d")
    await asyncio.sleep(0.01)
    assert policies("d") == DEFAULT


def test_the_handler_refreshes_a_policy_from_the_dataset_it_read() -> None:
    async def lookup(key: str) -> ingestion_pb2.Dataset | None:
        raise AssertionError("not looked up: already known")

    policies = MicroBatchPolicies(lookup)
    policies.remember("d", _with_policy(3, 4))
    assert policies("d") == (3, 4.0)


# -- registry: registration metadata bounds, refused uploads never stored -----------------------


def _header(**fields: Any) -> registry_pb2.RegisterModelHeader:
    header = registry_pb2.RegisterModelHeader(
        model_name="m",
        signature=common_pb2.ModelSignature(
            inputs=[common_pb2.TensorSpec(name="X", datatype="FP32", shape=[-1, 2])],
            outputs=[common_pb2.TensorSpec(name="y", datatype="FP32", shape=[-1])],
            feature_names=["a", "b"],
            class_labels=["0", "1"],
        ),
    )
    for name, value in fields.items():
        target = header
        *path, last = name.split(".")
        for part in path:
            target = getattr(target, part)
        if isinstance(value, list):
            getattr(target, last).extend(value)
        else:
            setattr(target, last, value)
    return header


DECLARED_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "feature names": ({"signature.feature_names": ["f"] * 10_001}, "header.signature.feature_names"),
    "a feature name": ({"signature.feature_names": ["f" * 257]}, "header.signature.feature_names[2]"),
    "class labels": ({"signature.class_labels": ["c"] * 10_001}, "header.signature.class_labels"),
    "a class label": ({"signature.class_labels": ["c" * 1025]}, "header.signature.class_labels[2]"),
    "input tensors": (
        {"signature.inputs": [common_pb2.TensorSpec(name="t")] * 64},
        "header.signature.inputs",
    ),
    "a tensor name": (
        {"signature.outputs": [common_pb2.TensorSpec(name="t" * 257)]},
        "header.signature.outputs[1].name",
    ),
    "a tensor datatype": (
        {"signature.outputs": [common_pb2.TensorSpec(name="t", datatype="D" * 33)]},
        "header.signature.outputs[1].datatype",
    ),
    "tensor dims": (
        {"signature.outputs": [common_pb2.TensorSpec(name="t", shape=[1] * 33)]},
        "header.signature.outputs[1].shape",
    ),
    "lineage run id": ({"lineage.run_id": "r" * 257}, "header.lineage.run_id"),
    "lineage dataset": ({"lineage.dataset.name": "d" * 257}, "header.lineage.dataset.name"),
    "lineage code version": ({"lineage.code_version": "v" * 257}, "header.lineage.code_version"),
    "lineage parents": ({"lineage.parent_dataset_versions": [1] * 1001}, "header.lineage.parent_dataset_versions"),
    "metric class label": (
        {"metrics": [common_pb2.Metric(name="f1", value=0.5, class_label="c" * 1025)]},
        "header.metrics[0].class_label",
    ),
    "idempotency key": ({"idempotency_key": "k" * 257}, "header.idempotency_key"),
    "actor": ({"actor": "a" * 257}, "header.actor"),
    "sha256": ({"sha256": "not-a-digest"}, "header.sha256"),
}


@pytest.mark.parametrize("case", list(DECLARED_CASES))
def test_what_a_registration_declares_is_bounded(case: str) -> None:
    fields, field = DECLARED_CASES[case]
    check_declared(_header())
    with pytest.raises(InvalidArgument) as err:
        check_declared(_header(**fields))
    assert err.value.field == field, err.value


def test_params_are_bounded_in_count_and_size() -> None:
    header = _header()
    header.params.update({f"p{i}": i for i in range(256)})
    check_declared(header)
    for params in ({f"p{i}": i for i in range(257)}, {"k" * 129: 1}, {"": 1}, {"p": "v" * 4097}):
        header = _header()
        header.params.update(params)
        with pytest.raises(InvalidArgument) as err:
            check_declared(header)
        assert err.value.field == "header.params"
    header = _header()
    header.params.update({"nested": {"a": list(range(1000))}})  # within the count, too big inside
    with pytest.raises(InvalidArgument) as err:
        check_declared(header)
    assert err.value.field == "header.params"


def test_a_header_within_every_part_cap_but_too_big_as_a_whole_is_refused() -> None:
    header = _header(**{"signature.class_labels": ["c" * 1024] * 2000})  # 2 MB of labels
    with pytest.raises(InvalidArgument) as err:
        check_declared(header)
    assert err.value.field == "header"


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 1000):
        yield data[i : i + 1000]


def _model(node_input: str = "w") -> bytes:
    weight = helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", node_input], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        initializer=[weight],
    )
    return bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())


@pytest.mark.parametrize("data", [b"not a model " * 100, _model(node_input="undefined")], ids=["text", "invalid"])
async def test_a_refused_model_upload_leaves_nothing_in_the_artifact_store(tmp_path: Path, data: bytes) -> None:
    artifacts = LocalArtifactStore(tmp_path / "artifacts")
    settings = Settings(home=tmp_path / "home", artifact_root=tmp_path / "artifacts")
    catalog = Catalog(None, artifacts, settings)  # type: ignore[arg-type]  # refused before any query
    with pytest.raises(InvalidArgument) as err:
        await catalog.register(_header(), _chunks(data), "tester")
    assert err.value.field == "chunk"
    assert not [p for p in (tmp_path / "artifacts").rglob("*") if p.is_file()]
    assert not [p for p in (tmp_path / "home").rglob("*") if p.is_file()]  # nor a spooled copy
