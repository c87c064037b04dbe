import datetime

from flywheel.v1 import common_pb2 as _common_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataVersioned(_message.Message):
    __slots__ = ("meta", "dataset", "parent_version", "mode", "row_count", "train_rows", "test_rows", "quarantined_rows", "profile_uri", "data_uri", "schema")
    META_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PARENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    TRAIN_ROWS_FIELD_NUMBER: _ClassVar[int]
    TEST_ROWS_FIELD_NUMBER: _ClassVar[int]
    QUARANTINED_ROWS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_URI_FIELD_NUMBER: _ClassVar[int]
    DATA_URI_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    meta: _common_pb2.EventMeta
    dataset: _common_pb2.DatasetRef
    parent_version: int
    mode: _common_pb2.WriteMode
    row_count: int
    train_rows: int
    test_rows: int
    quarantined_rows: int
    profile_uri: str
    data_uri: str
    schema: _common_pb2.Schema
    def __init__(self, meta: _Optional[_Union[_common_pb2.EventMeta, _Mapping]] = ..., dataset: _Optional[_Union[_common_pb2.DatasetRef, _Mapping]] = ..., parent_version: _Optional[int] = ..., mode: _Optional[_Union[_common_pb2.WriteMode, str]] = ..., row_count: _Optional[int] = ..., train_rows: _Optional[int] = ..., test_rows: _Optional[int] = ..., quarantined_rows: _Optional[int] = ..., profile_uri: _Optional[str] = ..., data_uri: _Optional[str] = ..., schema: _Optional[_Union[_common_pb2.Schema, _Mapping]] = ...) -> None: ...

class ModelRegistered(_message.Message):
    __slots__ = ("meta", "model", "checksum", "artifact_uri", "signature", "metrics", "lineage", "tags", "task", "size_bytes")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    META_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_URI_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    LINEAGE_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    meta: _common_pb2.EventMeta
    model: _common_pb2.ModelRef
    checksum: str
    artifact_uri: str
    signature: _common_pb2.ModelSignature
    metrics: _containers.RepeatedCompositeFieldContainer[_common_pb2.Metric]
    lineage: _common_pb2.Lineage
    tags: _containers.ScalarMap[str, str]
    task: _common_pb2.Task
    size_bytes: int
    def __init__(self, meta: _Optional[_Union[_common_pb2.EventMeta, _Mapping]] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., checksum: _Optional[str] = ..., artifact_uri: _Optional[str] = ..., signature: _Optional[_Union[_common_pb2.ModelSignature, _Mapping]] = ..., metrics: _Optional[_Iterable[_Union[_common_pb2.Metric, _Mapping]]] = ..., lineage: _Optional[_Union[_common_pb2.Lineage, _Mapping]] = ..., tags: _Optional[_Mapping[str, str]] = ..., task: _Optional[_Union[_common_pb2.Task, str]] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class ModelPromoted(_message.Message):
    __slots__ = ("meta", "model", "previous_version", "alias", "reason", "actor", "rollback", "artifact_uri", "checksum", "lineage")
    META_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_URI_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    LINEAGE_FIELD_NUMBER: _ClassVar[int]
    meta: _common_pb2.EventMeta
    model: _common_pb2.ModelRef
    previous_version: int
    alias: str
    reason: str
    actor: str
    rollback: bool
    artifact_uri: str
    checksum: str
    lineage: _common_pb2.Lineage
    def __init__(self, meta: _Optional[_Union[_common_pb2.EventMeta, _Mapping]] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., previous_version: _Optional[int] = ..., alias: _Optional[str] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ..., rollback: _Optional[bool] = ..., artifact_uri: _Optional[str] = ..., checksum: _Optional[str] = ..., lineage: _Optional[_Union[_common_pb2.Lineage, _Mapping]] = ...) -> None: ...

class DriftDetected(_message.Message):
    __slots__ = ("meta", "model", "window_id", "kind", "scores", "segment", "window_start", "window_end", "window_rows", "alert_id")
    META_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WINDOW_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_FIELD_NUMBER: _ClassVar[int]
    WINDOW_ROWS_FIELD_NUMBER: _ClassVar[int]
    ALERT_ID_FIELD_NUMBER: _ClassVar[int]
    meta: _common_pb2.EventMeta
    model: _common_pb2.ModelRef
    window_id: str
    kind: _common_pb2.DriftKind
    scores: _containers.RepeatedCompositeFieldContainer[_common_pb2.FeatureScore]
    segment: _common_pb2.Segment
    window_start: _timestamp_pb2.Timestamp
    window_end: _timestamp_pb2.Timestamp
    window_rows: int
    alert_id: str
    def __init__(self, meta: _Optional[_Union[_common_pb2.EventMeta, _Mapping]] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., window_id: _Optional[str] = ..., kind: _Optional[_Union[_common_pb2.DriftKind, str]] = ..., scores: _Optional[_Iterable[_Union[_common_pb2.FeatureScore, _Mapping]]] = ..., segment: _Optional[_Union[_common_pb2.Segment, _Mapping]] = ..., window_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., window_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., window_rows: _Optional[int] = ..., alert_id: _Optional[str] = ...) -> None: ...

class PredictionRecord(_message.Message):
    __slots__ = ("request_id", "inputs", "outputs", "latency_ms", "occurred_at", "row_index", "role")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    ROW_INDEX_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    inputs: _struct_pb2.Struct
    outputs: _struct_pb2.Struct
    latency_ms: float
    occurred_at: _timestamp_pb2.Timestamp
    row_index: int
    role: _common_pb2.ServingRole
    def __init__(self, request_id: _Optional[str] = ..., inputs: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., outputs: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., latency_ms: _Optional[float] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., row_index: _Optional[int] = ..., role: _Optional[_Union[_common_pb2.ServingRole, str]] = ...) -> None: ...

class PredictionColumns(_message.Message):
    __slots__ = ("request_ids", "row_indexes", "latency_ms", "occurred_at_unix_nanos", "roles", "feature_names", "inputs", "outputs", "class_labels")
    REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    ROW_INDEXES_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    CLASS_LABELS_FIELD_NUMBER: _ClassVar[int]
    request_ids: _containers.RepeatedScalarFieldContainer[str]
    row_indexes: _containers.RepeatedScalarFieldContainer[int]
    latency_ms: _containers.RepeatedScalarFieldContainer[float]
    occurred_at_unix_nanos: _containers.RepeatedScalarFieldContainer[int]
    roles: _containers.RepeatedScalarFieldContainer[_common_pb2.ServingRole]
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    inputs: LoggedTensor
    outputs: _containers.RepeatedCompositeFieldContainer[LoggedTensor]
    class_labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, request_ids: _Optional[_Iterable[str]] = ..., row_indexes: _Optional[_Iterable[int]] = ..., latency_ms: _Optional[_Iterable[float]] = ..., occurred_at_unix_nanos: _Optional[_Iterable[int]] = ..., roles: _Optional[_Iterable[_Union[_common_pb2.ServingRole, str]]] = ..., feature_names: _Optional[_Iterable[str]] = ..., inputs: _Optional[_Union[LoggedTensor, _Mapping]] = ..., outputs: _Optional[_Iterable[_Union[LoggedTensor, _Mapping]]] = ..., class_labels: _Optional[_Iterable[str]] = ...) -> None: ...

class LoggedTensor(_message.Message):
    __slots__ = ("name", "datatype", "shape", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    datatype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, name: _Optional[str] = ..., datatype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class PredictionsLogged(_message.Message):
    __slots__ = ("meta", "model", "records", "dropped", "columns")
    META_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    meta: _common_pb2.EventMeta
    model: _common_pb2.ModelRef
    records: _containers.RepeatedCompositeFieldContainer[PredictionRecord]
    dropped: int
    columns: PredictionColumns
    def __init__(self, meta: _Optional[_Union[_common_pb2.EventMeta, _Mapping]] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., records: _Optional[_Iterable[_Union[PredictionRecord, _Mapping]]] = ..., dropped: _Optional[int] = ..., columns: _Optional[_Union[PredictionColumns, _Mapping]] = ...) -> None: ...

class Feedback(_message.Message):
    __slots__ = ("meta", "model_name", "request_id", "label", "occurred_at", "row_index", "features")
    META_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    ROW_INDEX_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    meta: _common_pb2.EventMeta
    model_name: str
    request_id: str
    label: _struct_pb2.Value
    occurred_at: _timestamp_pb2.Timestamp
    row_index: int
    features: _struct_pb2.Struct
    def __init__(self, meta: _Optional[_Union[_common_pb2.EventMeta, _Mapping]] = ..., model_name: _Optional[str] = ..., request_id: _Optional[str] = ..., label: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., row_index: _Optional[int] = ..., features: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class IngestRecords(_message.Message):
    __slots__ = ("meta", "dataset", "rows")
    META_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    meta: _common_pb2.EventMeta
    dataset: str
    rows: _containers.RepeatedCompositeFieldContainer[_struct_pb2.Struct]
    def __init__(self, meta: _Optional[_Union[_common_pb2.EventMeta, _Mapping]] = ..., dataset: _Optional[str] = ..., rows: _Optional[_Iterable[_Union[_struct_pb2.Struct, _Mapping]]] = ...) -> None: ...
