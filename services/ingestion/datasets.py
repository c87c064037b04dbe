"""Rules for a dataset definition: name, schema, policies. Plain Python, no gRPC or Kafka."""

from __future__ import annotations

import math
import re

from flywheel.errors import InvalidArgument
from flywheel.v1 import common_pb2, ingestion_pb2

NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")
DEFAULT_TRAIN_FRACTION = 0.8
DEFAULT_MAX_ROWS = 10_000
DEFAULT_MAX_WAIT_S = 5.0
# Limits on what a dataset definition may hold: it travels in every data.versioned event.
RESERVED_PREFIX = "__"
MAX_FIELDS = 1000
MAX_NAME_CHARS = 256
MAX_ALLOWED_VALUES = 10_000
MAX_DESCRIPTION_CHARS = 4096  # the dataset's, and each field's
MAX_SPEC_BYTES = 1024 * 1024  # the whole definition, serialized
MAX_MICRO_BATCH_ROWS = 1_000_000
MAX_MICRO_BATCH_WAIT_S = 3600


def check_dataset(ds: ingestion_pb2.Dataset) -> ingestion_pb2.Dataset:
    """Validate and fill defaults; returns the dataset as it will be stored."""
    if not NAME.match(ds.name):
        raise InvalidArgument(
            "not a valid dataset name ([a-z0-9][a-z0-9_.-]*, at most 128 characters)", field="dataset.name"
        )
    schema = ds.schema
    if not schema.fields:
        raise InvalidArgument("a schema needs at least one field", field="dataset.schema.fields")
    if len(schema.fields) > MAX_FIELDS:
        raise InvalidArgument(f"at most {MAX_FIELDS} fields", field="dataset.schema.fields")
    names = [f.name for f in schema.fields]
    for i, f in enumerate(schema.fields):
        where = f"dataset.schema.fields[{i}]"
        if not f.name:
            raise InvalidArgument("a field needs a name", field=f"{where}.name")
        if len(f.name) > MAX_NAME_CHARS:
            raise InvalidArgument(f"at most {MAX_NAME_CHARS} characters", field=f"{where}.name")
        if f.name.startswith(RESERVED_PREFIX):
            # Columns Flywheel adds to stored versions (the split, carried labels) start with "__".
            raise InvalidArgument(f"names starting with {RESERVED_PREFIX!r} are reserved", field=f"{where}.name")
        for bound in ("min", "max"):
            if f.HasField(bound) and not math.isfinite(getattr(f, bound)):
                raise InvalidArgument("must be a finite number", field=f"{where}.{bound}")
        if len(f.description) > MAX_DESCRIPTION_CHARS:
            raise InvalidArgument(f"at most {MAX_DESCRIPTION_CHARS} characters", field=f"{where}.description")
        if len(f.allowed_values) > MAX_ALLOWED_VALUES:
            raise InvalidArgument(f"at most {MAX_ALLOWED_VALUES} values", field=f"{where}.allowed_values")
        if any(len(v) > MAX_NAME_CHARS for v in f.allowed_values):
            raise InvalidArgument(f"values of at most {MAX_NAME_CHARS} characters", field=f"{where}.allowed_values")
        if names.count(f.name) > 1:
            raise InvalidArgument(f"field {f.name!r} is defined twice", field=f"{where}.name")
        if f.type == common_pb2.FIELD_TYPE_UNSPECIFIED:
            raise InvalidArgument(f"field {f.name!r} needs a type", field=f"{where}.type")
        if f.HasField("min") and f.HasField("max") and f.min > f.max:
            raise InvalidArgument(f"min {f.min} > max {f.max}", field=f"{where}.min")
        if f.allowed_values and f.type != common_pb2.FIELD_TYPE_CATEGORICAL:
            raise InvalidArgument("allowed_values is for categorical fields", field=f"{where}.allowed_values")
    if schema.label_field and schema.label_field not in names:
        raise InvalidArgument("must name a schema field", field="dataset.schema.label_field")
    if not schema.key_field:
        raise InvalidArgument("the split is hashed on a key field; name one", field="dataset.schema.key_field")
    if schema.key_field not in names:
        raise InvalidArgument("must name a schema field", field="dataset.schema.key_field")
    key = next(f for f in schema.fields if f.name == schema.key_field)
    if key.nullable:
        raise InvalidArgument("the key field cannot be nullable", field="dataset.schema.key_field")
    if schema.train_fraction == 0:
        schema.train_fraction = DEFAULT_TRAIN_FRACTION
    if not 0 < schema.train_fraction < 1:
        raise InvalidArgument("must be in (0, 1)", field="dataset.schema.train_fraction")
    if ds.invalid_row_policy == ingestion_pb2.INVALID_ROW_POLICY_UNSPECIFIED:
        ds.invalid_row_policy = ingestion_pb2.INVALID_ROW_POLICY_REJECT
    if not 0 <= ds.micro_batch.max_rows <= MAX_MICRO_BATCH_ROWS:
        raise InvalidArgument(f"must be in [0, {MAX_MICRO_BATCH_ROWS}]", field="dataset.micro_batch.max_rows")
    if ds.micro_batch.HasField("max_wait"):
        wait = ds.micro_batch.max_wait.ToTimedelta().total_seconds()
        if not 0 <= wait <= MAX_MICRO_BATCH_WAIT_S:
            raise InvalidArgument(
                f"must be in [0, {MAX_MICRO_BATCH_WAIT_S}] seconds", field="dataset.micro_batch.max_wait"
            )
    if len(ds.description) > MAX_DESCRIPTION_CHARS:
        raise InvalidArgument(f"at most {MAX_DESCRIPTION_CHARS} characters", field="dataset.description")
    if ds.ByteSize() > MAX_SPEC_BYTES:
        # Each part may be within its own cap while the whole is not (1,000 fields of 10,000 values).
        raise InvalidArgument(
            f"the definition is {ds.ByteSize()} bytes serialized; at most {MAX_SPEC_BYTES}", field="dataset"
        )
    return ds


def micro_batch(ds: ingestion_pb2.Dataset) -> tuple[int, float]:
    max_rows = ds.micro_batch.max_rows or DEFAULT_MAX_ROWS
    wait = ds.micro_batch.max_wait.ToTimedelta().total_seconds() if ds.micro_batch.HasField("max_wait") else 0
    return max_rows, wait or DEFAULT_MAX_WAIT_S
