"""Ingestion domain: readers, validation, split, versions, content hash, profile (no I/O)."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from flywheel.errors import InvalidArgument
from flywheel.v1 import common_pb2, ingestion_pb2
from services.ingestion import profile, tables, validation, versioning
from services.ingestion.pipeline import prepare_version
from services.ingestion.versioning import SPLIT_COLUMN

F = common_pb2.Field
REJECT = ingestion_pb2.INVALID_ROW_POLICY_REJECT
QUARANTINE = ingestion_pb2.INVALID_ROW_POLICY_QUARANTINE
APPEND = common_pb2.WRITE_MODE_APPEND
REPLACE = common_pb2.WRITE_MODE_REPLACE


def make_schema(train_fraction: float = 0.0) -> common_pb2.Schema:
    return common_pb2.Schema(
        fields=[
            F(name="id", type=common_pb2.FIELD_TYPE_INT),
            F(name="x", type=common_pb2.FIELD_TYPE_FLOAT, nullable=True, min=0, max=10),
            F(name="flag", type=common_pb2.FIELD_TYPE_BOOL),
            F(name="y", type=common_pb2.FIELD_TYPE_CATEGORICAL, allowed_values=["a", "b"]),
        ],
        key_field="id",
        label_field="y",
        train_fraction=train_fraction,
    )


def csv_of(*rows: str, header: str = "id,x,flag,y") -> bytes:
    return ("\n".join([header, *rows]) + "\n").encode()


def check(*rows: str) -> validation.ValidationResult:
    schema = make_schema()
    return validation.validate(tables.read_csv(csv_of(*rows), schema), schema)


def numbers_table(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "id": pa.array(np.arange(n, dtype=np.int64)),
            "x": pa.array(rng.uniform(0, 10, n)),
            "flag": pa.array(rng.random(n) < 0.3),
            "y": pa.array(np.asarray(["a", "b"], dtype=object)[rng.integers(0, 2, n)]),
        }
    )


# --- readers ---------------------------------------------------------------------------


def test_read_csv_gives_text_columns_in_schema_order_and_drops_extras():
    raw = tables.read_csv(b"y,extra,flag,x,id\na,zz,true,1.5,1\n", make_schema())
    assert raw.column_names == ["id", "x", "flag", "y"]
    assert all(t == pa.string() for t in raw.schema.types)
    assert raw.to_pylist() == [{"id": "1", "x": "1.5", "flag": "true", "y": "a"}]


def test_read_csv_empty_cells_are_null_and_delimiter_is_honoured():
    raw = tables.read_csv(b"id;x;flag;y\n1;;true;a\n", make_schema(), delimiter=";")
    assert raw.column("x").to_pylist() == [None]


def test_read_csv_missing_field_names_the_field():
    with pytest.raises(InvalidArgument) as err:
        tables.read_csv(b"id,x,y\n1,2,a\n", make_schema())
    assert err.value.field == "flag"
    assert "missing_field" in str(err.value)


def test_read_csv_rejects_malformed_rows():
    with pytest.raises(InvalidArgument) as err:
        tables.read_csv(b"id,x,flag,y\n1,2\n", make_schema())
    assert err.value.field == tables.DATA_FIELD


def test_arrow_ipc_and_json_rows_take_the_csv_path():
    schema = make_schema()
    typed = pa.table({"id": [1, 2], "x": [1.5, None], "flag": [True, False], "y": ["a", "b"], "z": [0, 0]})
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, typed.schema) as writer:
        writer.write_table(typed)
    from_ipc = tables.read_arrow_ipc(sink.getvalue(), schema)
    from_rows = tables.rows_to_table(
        [{"id": 1, "x": 1.5, "flag": True, "y": "a"}, {"id": 2, "flag": False, "y": "b"}], schema
    )
    from_csv = tables.read_csv(csv_of("1,1.5,true,a", "2,,false,b"), schema)
    assert from_ipc.schema == from_csv.schema == from_rows.schema
    expected = validation.validate(from_csv, schema).table
    assert validation.validate(from_ipc, schema).table.equals(expected)
    assert validation.validate(from_rows, schema).table.equals(expected)


def test_read_parquet_round_trips_version_bytes():
    table = versioning.assign_split(numbers_table(50), "id", 0.8)
    assert tables.read_parquet(versioning.to_parquet_bytes(table)).equals(table)


# --- validation ------------------------------------------------------------------------


def test_valid_rows_are_typed():
    result = check("1,1.5,TRUE,a", "2,,no,b", "3,10,1,a", "4,0,Yes,b", "5,2,0,a", "6,3,false,a")
    t = result.table
    assert t.schema.types == [pa.int64(), pa.float64(), pa.bool_(), pa.string()]
    assert t.column("x").to_pylist() == [1.5, None, 10.0, 0.0, 2.0, 3.0]
    assert t.column("flag").to_pylist() == [True, False, True, True, False, False]
    assert (result.rows_received, result.counts, result.sample_errors) == (6, {}, [])


@pytest.mark.parametrize(
    ("row", "field", "reason", "value"),
    [
        (",1,true,a", "id", "null_not_allowed", ""),
        ("1,abc,true,a", "x", "type_mismatch", "abc"),
        ("1.5,1,true,a", "id", "type_mismatch", "1.5"),
        ("9223372036854775808,1,true,a", "id", "type_mismatch", "9223372036854775808"),
        ("1,1,maybe,a", "flag", "type_mismatch", "maybe"),
        ("1,10.5,true,a", "x", "out_of_range", "10.5"),
        ("1,-0.1,true,a", "x", "out_of_range", "-0.1"),
        ("1,inf,true,a", "x", "out_of_range", "inf"),
        ("1,1,true,c", "y", "not_allowed_value", "c"),
        ("1,1,,a", "flag", "null_not_allowed", ""),
    ],
)
def test_each_reason_code(row: str, field: str, reason: str, value: str):
    result = check("7,1,true,a", row)
    assert result.counts == {reason: 1}
    assert result.sample_errors == [validation.RowError(row=2, field=field, reason=reason, value=value)]
    assert result.table.column("id").to_pylist() == [7]


def test_missing_column_is_missing_field():
    schema = make_schema()
    with pytest.raises(InvalidArgument) as err:
        validation.validate(pa.table({"id": ["1"], "x": ["1"], "flag": ["1"]}), schema)
    assert err.value.field == "y"
    assert "missing_field" in str(err.value)


def test_nan_is_null_and_whitespace_is_ignored_for_numbers():
    result = check(" 8 ,nan,true,a", "9, 2.5 ,true,b")
    assert result.counts == {}
    assert result.table.column("id").to_pylist() == [8, 9]
    assert result.table.column("x").to_pylist() == [None, 2.5]


def test_a_row_counts_once_under_its_first_failing_field():
    result = check("x,99,maybe,c", "2,1,true,a")
    assert result.counts == {"type_mismatch": 1}
    assert result.sample_errors[0].field == "id"


def test_sample_errors_are_bounded_and_in_row_order():
    result = check(*[f"{i},1,true,zz" for i in range(50)])
    assert result.counts == {"not_allowed_value": 50}
    assert [e.row for e in result.sample_errors] == list(range(1, validation.SAMPLE_LIMIT + 1))
    assert validation.first_error(tables.read_csv(csv_of("1,1,true,a", "2,x,true,a"), make_schema()), make_schema())
    assert result.to_proto().rows_quarantined == 50


def test_first_error_is_none_for_clean_data():
    schema = make_schema()
    assert validation.first_error(tables.read_csv(csv_of("1,1,true,a"), schema), schema) is None


def test_already_typed_columns_are_accepted():
    schema = make_schema()
    assert validation.validate(numbers_table(20), schema).counts == {}


def test_schema_problems_are_invalid_arguments():
    bad = make_schema()
    bad.key_field = "nope"
    with pytest.raises(InvalidArgument) as err:
        validation.check_schema(bad)
    assert err.value.field == "schema.key_field"


# --- policy ----------------------------------------------------------------------------


def test_reject_names_row_field_and_reason():
    schema = make_schema()
    raw = tables.read_csv(csv_of("1,1,true,a", "2,1,true,a", "3,11,true,a"), schema)
    with pytest.raises(InvalidArgument) as err:
        prepare_version(raw, schema, REJECT, None, APPEND)
    assert err.value.field == "x"
    assert "row 3" in str(err.value) and "out_of_range" in str(err.value)
    assert "11" not in str(err.value), "a refused value is never echoed back"


def test_unspecified_policy_rejects():
    schema = make_schema()
    raw = tables.read_csv(csv_of("1,1,true,c"), schema)
    with pytest.raises(InvalidArgument, match="not_allowed_value"):
        prepare_version(raw, schema, ingestion_pb2.INVALID_ROW_POLICY_UNSPECIFIED, None, APPEND)


def test_quarantine_keeps_valid_rows_and_counts_reasons():
    schema = make_schema()
    raw = tables.read_csv(csv_of("1,1,true,a", "2,x,true,a", "3,1,true,c", "4,,true,b", "5,y,1,a"), schema)
    version = prepare_version(raw, schema, QUARANTINE, None, APPEND)
    assert version.row_count == 2
    assert version.stats.counts == {"type_mismatch": 2, "not_allowed_value": 1}
    assert version.stats.rows_received == 5
    assert version.train_rows + version.test_rows == 2


def test_no_valid_rows_is_an_error():
    schema = make_schema()
    raw = tables.read_csv(csv_of("1,x,true,a"), schema)
    with pytest.raises(InvalidArgument, match="no valid rows") as err:
        prepare_version(raw, schema, QUARANTINE, None, APPEND)
    assert err.value.field == "records"


# --- split -----------------------------------------------------------------------------

# Computed once from the hash in versioning.py; a change here moves rows between splits.
GOLDEN_HASHES = {"0": 0xC1E42AF088FF1B2C, "7": 0xCF48FFA9F52BA797, "user-7": 0x05F45893168BEB5F}
GOLDEN_TEST_KEYS = {"7", "17", "19"}  # of "0".."19" at train_fraction 0.8


def test_key_hash_golden_values():
    hashes = versioning.key_hash(pa.array(list(GOLDEN_HASHES)))
    assert [int(h) for h in hashes] == list(GOLDEN_HASHES.values())


def test_key_hash_matches_a_plain_python_reference():
    def reference(text: str) -> int:
        mask, h = 2**64 - 1, 0xCBF29CE484222325
        for byte in text.encode():
            h = ((h ^ byte) * 0x100000001B3) & mask
        for mult in (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53):
            h = ((h ^ (h >> 33)) * mult) & mask
        return h ^ (h >> 33)

    keys = ["", "a", "ключ", "x" * 300, "12", "user-1234567890"]
    assert [int(h) for h in versioning.key_hash(pa.array(keys))] == [reference(k) for k in keys]


def test_golden_split():
    table = pa.table({"id": pa.array(range(20), pa.int64())})
    split = versioning.assign_split(table, "id", 0.8).column(SPLIT_COLUMN).to_pylist()
    assert {str(i) for i, s in enumerate(split) if s == "test"} == GOLDEN_TEST_KEYS


def test_same_key_same_split_across_tables():
    first = versioning.assign_split(numbers_table(1000, seed=1), "id", 0.7)
    other = numbers_table(1000, seed=2).slice(500).take(pa.array(np.arange(499, -1, -1)))
    second = versioning.assign_split(other, "id", 0.7)
    by_key = dict(zip(first.column("id").to_pylist(), first.column(SPLIT_COLUMN).to_pylist(), strict=True))
    for key, split in zip(second.column("id").to_pylist(), second.column(SPLIT_COLUMN).to_pylist(), strict=True):
        assert by_key[key] == split
    # The string form is what is hashed: an int key and its text agree.
    text_keys = pa.table({"id": pa.array([str(i) for i in range(1000)])})
    assert versioning.assign_split(text_keys, "id", 0.7).column(SPLIT_COLUMN).equals(first.column(SPLIT_COLUMN))


def test_split_fraction_is_close_on_10k_rows():
    table = versioning.assign_split(numbers_table(10_000), "id", 0.0)  # 0 = default 0.8
    train = table.column(SPLIT_COLUMN).to_pylist().count("train") / 10_000
    assert abs(train - 0.8) < 0.02
    table = versioning.assign_split(numbers_table(10_000), "id", 0.3)
    assert abs(table.column(SPLIT_COLUMN).to_pylist().count("train") / 10_000 - 0.3) < 0.02


@pytest.mark.parametrize("fraction", [1.0, -0.1, 1.5])
def test_train_fraction_must_be_in_open_unit_interval(fraction: float):
    with pytest.raises(InvalidArgument) as err:
        versioning.assign_split(numbers_table(5), "id", fraction)
    assert err.value.field == "train_fraction"


# --- versions --------------------------------------------------------------------------


def test_append_and_replace():
    schema = make_schema()
    parent = prepare_version(
        tables.read_csv(csv_of("1,1,true,a", "2,2,true,b"), schema), schema, REJECT, None, APPEND
    ).table
    new = tables.read_csv(csv_of("3,3,false,a"), schema)
    appended = prepare_version(new, schema, REJECT, parent, APPEND)
    assert appended.table.column("id").to_pylist() == [1, 2, 3]
    assert appended.table.column_names == [*parent.column_names]
    assert appended.table.slice(0, 2).equals(parent)  # parent rows keep their values and splits
    unspecified = prepare_version(new, schema, REJECT, parent, common_pb2.WRITE_MODE_UNSPECIFIED)
    assert unspecified.content_hash == appended.content_hash
    replaced = prepare_version(new, schema, REJECT, parent, REPLACE)
    assert replaced.table.column("id").to_pylist() == [3]
    # A parent read back from Parquet combines the same way.
    again = prepare_version(new, schema, REJECT, tables.read_parquet(versioning.to_parquet_bytes(parent)), APPEND)
    assert again.content_hash == appended.content_hash


def test_combine_rejects_unknown_mode():
    with pytest.raises(InvalidArgument) as err:
        versioning.combine(None, numbers_table(3), 99)
    assert err.value.field == "mode"


def test_identical_content_identical_hash_and_bytes():
    table = versioning.assign_split(numbers_table(3000), "id", 0.8)
    rechunked = pa.concat_tables([table.slice(0, 1000), table.slice(1000)])
    assert rechunked.column("x").num_chunks == 2
    assert versioning.content_hash(table) == versioning.content_hash(rechunked)
    assert versioning.to_parquet_bytes(table) == versioning.to_parquet_bytes(rechunked)

    changed = table.set_column(1, "x", pa.array([*table.column("x").to_pylist()[:-1], 0.5]))
    assert versioning.content_hash(changed) != versioning.content_hash(table)
    reordered = table.take(pa.array(np.arange(2999, -1, -1)))
    assert versioning.content_hash(reordered) != versioning.content_hash(table)
    with_null = table.set_column(1, "x", pa.array([*table.column("x").to_pylist()[:-1], None]))
    assert versioning.content_hash(with_null) != versioning.content_hash(table)


def test_prepared_version_is_deterministic():
    schema = make_schema()
    raw = tables.read_csv(csv_of(*[f"{i},{i % 10},true,a" for i in range(100)]), schema)
    first, second = (prepare_version(raw, schema, REJECT, None, APPEND) for _ in range(2))
    assert first.content_hash == second.content_hash
    assert first.parquet == second.parquet
    assert profile.profile_to_json(first.profile) == profile.profile_to_json(second.profile)


# --- profile ---------------------------------------------------------------------------


def test_profile_on_train_split():
    schema = make_schema()
    table = versioning.assign_split(numbers_table(5000), "id", 0.8)
    table = table.set_column(
        1, "x", pa.array([None if i % 10 == 0 else v for i, v in enumerate(table["x"].to_pylist())])
    )
    prof = profile.build_profile(table, schema, bins=10)
    json.loads(profile.profile_to_json(prof))  # JSON-serialisable, no NaN

    train = table.filter(pc.equal(table[SPLIT_COLUMN], "train"))
    assert prof["row_count"] == train.num_rows
    assert prof["feature_order"] == ["x", "flag", "y"]  # key field excluded

    x = prof["features"]["x"]
    values = np.asarray(train["x"].drop_null().to_numpy())
    assert x["count"] == len(values) == sum(x["histogram"])
    assert len(x["bin_edges"]) == 11 and len(x["histogram"]) == 10
    assert x["bin_edges"][0] == x["min"] == values.min() and x["bin_edges"][-1] == x["max"] == values.max()
    assert x["null_rate"] == pytest.approx(train["x"].null_count / train.num_rows)
    assert x["mean"] == pytest.approx(values.mean()) and x["stddev"] == pytest.approx(values.std())
    bins = profile.bin_index(x["bin_edges"], values)
    assert np.bincount(bins, minlength=10).tolist() == x["histogram"]
    assert 0 < len(x["sample"]) <= profile.SAMPLE_SIZE and set(x["sample"]) <= set(values.tolist())

    for name in ("flag", "y"):
        freqs = prof["features"][name]["category_frequencies"]
        assert sum(freqs.values()) == pytest.approx(1.0)
    assert set(prof["features"]["flag"]["category_frequencies"]) == {"true", "false"}


def test_profile_dedups_edges_of_discrete_columns():
    schema = make_schema()
    table = pa.table({"id": pa.array(range(100), pa.int64()), "x": pa.array([1.0] * 90 + [2.0] * 10)})
    table = table.append_column("flag", pa.array([True] * 100)).append_column("y", pa.array(["a"] * 100))
    x = profile.build_profile(table, schema)["features"]["x"]
    assert x["bin_edges"] == sorted(set(x["bin_edges"]))
    assert sum(x["histogram"]) == 100 and len(x["histogram"]) == len(x["bin_edges"]) - 1
    constant = table.set_column(1, "x", pa.array([3.0] * 100))
    assert profile.build_profile(constant, schema)["features"]["x"]["histogram"] == [100]


def test_profile_summary():
    schema = make_schema()
    prof = profile.build_profile(versioning.assign_split(numbers_table(500), "id", 0.8), schema)
    summary = profile.profile_summary(prof, schema)
    assert summary.row_count == prof["row_count"]
    assert [f.name for f in summary.features] == ["x", "flag", "y"]
    x = summary.features[0]
    assert x.type == common_pb2.FIELD_TYPE_FLOAT and x.HasField("mean")
    assert list(x.histogram) == prof["features"]["x"]["histogram"]
    assert not summary.features[2].HasField("mean")
    assert dict(summary.features[2].category_frequencies) == prof["features"]["y"]["category_frequencies"]


def test_append_is_an_upsert_by_key():
    schema = make_schema()
    first = prepare_version(tables.read_csv(csv_of("1,0.5,true,a", "2,1.5,false,b"), schema), schema, 0, None, 0)
    same = prepare_version(tables.read_csv(csv_of("1,0.5,true,a", "2,1.5,false,b"), schema), schema, 0, first.table, 0)
    assert same.content_hash == first.content_hash, "re-sending the same rows is the same version"
    corrected = prepare_version(
        tables.read_csv(csv_of("2,9.5,false,b", "3,3.0,true,a"), schema), schema, 0, first.table, 0
    )
    assert corrected.row_count == 3
    by_id = dict(zip(corrected.table["id"].to_pylist(), corrected.table["x"].to_pylist(), strict=True))
    assert by_id == {1: 0.5, 2: 9.5, 3: 3.0}
