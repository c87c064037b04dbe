import datetime

from flywheel.v1 import common_pb2 as _common_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InvalidRowPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INVALID_ROW_POLICY_UNSPECIFIED: _ClassVar[InvalidRowPolicy]
    INVALID_ROW_POLICY_REJECT: _ClassVar[InvalidRowPolicy]
    INVALID_ROW_POLICY_QUARANTINE: _ClassVar[InvalidRowPolicy]

class DataFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_FORMAT_UNSPECIFIED: _ClassVar[DataFormat]
    DATA_FORMAT_CSV: _ClassVar[DataFormat]
    DATA_FORMAT_ARROW_IPC: _ClassVar[DataFormat]
    DATA_FORMAT_PARQUET: _ClassVar[DataFormat]
INVALID_ROW_POLICY_UNSPECIFIED: InvalidRowPolicy
INVALID_ROW_POLICY_REJECT: InvalidRowPolicy
INVALID_ROW_POLICY_QUARANTINE: InvalidRowPolicy
DATA_FORMAT_UNSPECIFIED: DataFormat
DATA_FORMAT_CSV: DataFormat
DATA_FORMAT_ARROW_IPC: DataFormat
DATA_FORMAT_PARQUET: DataFormat

class MicroBatchPolicy(_message.Message):
    __slots__ = ("max_rows", "max_wait")
    MAX_ROWS_FIELD_NUMBER: _ClassVar[int]
    MAX_WAIT_FIELD_NUMBER: _ClassVar[int]
    max_rows: int
    max_wait: _duration_pb2.Duration
    def __init__(self, max_rows: _Optional[int] = ..., max_wait: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Dataset(_message.Message):
    __slots__ = ("name", "description", "schema", "invalid_row_policy", "micro_batch", "feedback_model", "labels", "create_time", "latest_version")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    INVALID_ROW_POLICY_FIELD_NUMBER: _ClassVar[int]
    MICRO_BATCH_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_MODEL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    schema: _common_pb2.Schema
    invalid_row_policy: InvalidRowPolicy
    micro_batch: MicroBatchPolicy
    feedback_model: str
    labels: _containers.ScalarMap[str, str]
    create_time: _timestamp_pb2.Timestamp
    latest_version: int
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., schema: _Optional[_Union[_common_pb2.Schema, _Mapping]] = ..., invalid_row_policy: _Optional[_Union[InvalidRowPolicy, str]] = ..., micro_batch: _Optional[_Union[MicroBatchPolicy, _Mapping]] = ..., feedback_model: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., latest_version: _Optional[int] = ...) -> None: ...

class FeatureProfile(_message.Message):
    __slots__ = ("name", "type", "count", "null_rate", "min", "max", "mean", "stddev", "bin_edges", "histogram", "category_frequencies")
    class CategoryFrequenciesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    NULL_RATE_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STDDEV_FIELD_NUMBER: _ClassVar[int]
    BIN_EDGES_FIELD_NUMBER: _ClassVar[int]
    HISTOGRAM_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FREQUENCIES_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: _common_pb2.FieldType
    count: int
    null_rate: float
    min: float
    max: float
    mean: float
    stddev: float
    bin_edges: _containers.RepeatedScalarFieldContainer[float]
    histogram: _containers.RepeatedScalarFieldContainer[int]
    category_frequencies: _containers.ScalarMap[str, float]
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[_common_pb2.FieldType, str]] = ..., count: _Optional[int] = ..., null_rate: _Optional[float] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., mean: _Optional[float] = ..., stddev: _Optional[float] = ..., bin_edges: _Optional[_Iterable[float]] = ..., histogram: _Optional[_Iterable[int]] = ..., category_frequencies: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ProfileSummary(_message.Message):
    __slots__ = ("row_count", "features")
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    row_count: int
    features: _containers.RepeatedCompositeFieldContainer[FeatureProfile]
    def __init__(self, row_count: _Optional[int] = ..., features: _Optional[_Iterable[_Union[FeatureProfile, _Mapping]]] = ...) -> None: ...

class DatasetVersion(_message.Message):
    __slots__ = ("ref", "parent_version", "mode", "row_count", "train_rows", "test_rows", "quarantined_rows", "data_uri", "profile_uri", "profile", "schema", "source", "create_time")
    REF_FIELD_NUMBER: _ClassVar[int]
    PARENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    TRAIN_ROWS_FIELD_NUMBER: _ClassVar[int]
    TEST_ROWS_FIELD_NUMBER: _ClassVar[int]
    QUARANTINED_ROWS_FIELD_NUMBER: _ClassVar[int]
    DATA_URI_FIELD_NUMBER: _ClassVar[int]
    PROFILE_URI_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ref: _common_pb2.DatasetRef
    parent_version: int
    mode: _common_pb2.WriteMode
    row_count: int
    train_rows: int
    test_rows: int
    quarantined_rows: int
    data_uri: str
    profile_uri: str
    profile: ProfileSummary
    schema: _common_pb2.Schema
    source: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, ref: _Optional[_Union[_common_pb2.DatasetRef, _Mapping]] = ..., parent_version: _Optional[int] = ..., mode: _Optional[_Union[_common_pb2.WriteMode, str]] = ..., row_count: _Optional[int] = ..., train_rows: _Optional[int] = ..., test_rows: _Optional[int] = ..., quarantined_rows: _Optional[int] = ..., data_uri: _Optional[str] = ..., profile_uri: _Optional[str] = ..., profile: _Optional[_Union[ProfileSummary, _Mapping]] = ..., schema: _Optional[_Union[_common_pb2.Schema, _Mapping]] = ..., source: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RowError(_message.Message):
    __slots__ = ("row", "field", "reason", "value")
    ROW_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    row: int
    field: str
    reason: str
    value: str
    def __init__(self, row: _Optional[int] = ..., field: _Optional[str] = ..., reason: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class IngestStats(_message.Message):
    __slots__ = ("rows_received", "rows_accepted", "rows_quarantined", "quarantine_counts", "sample_errors")
    class QuarantineCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ROWS_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    ROWS_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    ROWS_QUARANTINED_FIELD_NUMBER: _ClassVar[int]
    QUARANTINE_COUNTS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    rows_received: int
    rows_accepted: int
    rows_quarantined: int
    quarantine_counts: _containers.ScalarMap[str, int]
    sample_errors: _containers.RepeatedCompositeFieldContainer[RowError]
    def __init__(self, rows_received: _Optional[int] = ..., rows_accepted: _Optional[int] = ..., rows_quarantined: _Optional[int] = ..., quarantine_counts: _Optional[_Mapping[str, int]] = ..., sample_errors: _Optional[_Iterable[_Union[RowError, _Mapping]]] = ...) -> None: ...

class CreateDatasetRequest(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: Dataset
    def __init__(self, dataset: _Optional[_Union[Dataset, _Mapping]] = ...) -> None: ...

class CreateDatasetResponse(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: Dataset
    def __init__(self, dataset: _Optional[_Union[Dataset, _Mapping]] = ...) -> None: ...

class GetDatasetRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetDatasetResponse(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: Dataset
    def __init__(self, dataset: _Optional[_Union[Dataset, _Mapping]] = ...) -> None: ...

class ListDatasetsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDatasetsResponse(_message.Message):
    __slots__ = ("datasets", "next_page_token")
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[Dataset]
    next_page_token: str
    def __init__(self, datasets: _Optional[_Iterable[_Union[Dataset, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class IngestHeader(_message.Message):
    __slots__ = ("dataset", "mode", "format", "csv_delimiter")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    CSV_DELIMITER_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    mode: _common_pb2.WriteMode
    format: DataFormat
    csv_delimiter: str
    def __init__(self, dataset: _Optional[str] = ..., mode: _Optional[_Union[_common_pb2.WriteMode, str]] = ..., format: _Optional[_Union[DataFormat, str]] = ..., csv_delimiter: _Optional[str] = ...) -> None: ...

class IngestDatasetRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: IngestHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[IngestHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class IngestDatasetResponse(_message.Message):
    __slots__ = ("version", "created", "stats")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    version: DatasetVersion
    created: bool
    stats: IngestStats
    def __init__(self, version: _Optional[_Union[DatasetVersion, _Mapping]] = ..., created: _Optional[bool] = ..., stats: _Optional[_Union[IngestStats, _Mapping]] = ...) -> None: ...

class IngestFromUriRequest(_message.Message):
    __slots__ = ("dataset", "uri", "format", "mode")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    uri: str
    format: DataFormat
    mode: _common_pb2.WriteMode
    def __init__(self, dataset: _Optional[str] = ..., uri: _Optional[str] = ..., format: _Optional[_Union[DataFormat, str]] = ..., mode: _Optional[_Union[_common_pb2.WriteMode, str]] = ...) -> None: ...

class IngestFromUriResponse(_message.Message):
    __slots__ = ("version", "created", "stats")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    version: DatasetVersion
    created: bool
    stats: IngestStats
    def __init__(self, version: _Optional[_Union[DatasetVersion, _Mapping]] = ..., created: _Optional[bool] = ..., stats: _Optional[_Union[IngestStats, _Mapping]] = ...) -> None: ...

class GetDatasetVersionRequest(_message.Message):
    __slots__ = ("dataset", "version")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    version: int
    def __init__(self, dataset: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class GetDatasetVersionResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: DatasetVersion
    def __init__(self, version: _Optional[_Union[DatasetVersion, _Mapping]] = ...) -> None: ...

class ListDatasetVersionsRequest(_message.Message):
    __slots__ = ("dataset", "page_size", "page_token")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    page_size: int
    page_token: str
    def __init__(self, dataset: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDatasetVersionsResponse(_message.Message):
    __slots__ = ("versions", "next_page_token")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[DatasetVersion]
    next_page_token: str
    def __init__(self, versions: _Optional[_Iterable[_Union[DatasetVersion, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ReadDatasetVersionRequest(_message.Message):
    __slots__ = ("dataset", "version", "split", "format", "columns", "batch_rows")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    BATCH_ROWS_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    version: int
    split: _common_pb2.Split
    format: DataFormat
    columns: _containers.RepeatedScalarFieldContainer[str]
    batch_rows: int
    def __init__(self, dataset: _Optional[str] = ..., version: _Optional[int] = ..., split: _Optional[_Union[_common_pb2.Split, str]] = ..., format: _Optional[_Union[DataFormat, str]] = ..., columns: _Optional[_Iterable[str]] = ..., batch_rows: _Optional[int] = ...) -> None: ...

class ReadDatasetVersionResponse(_message.Message):
    __slots__ = ("data", "rows", "ref")
    DATA_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    rows: int
    ref: _common_pb2.DatasetRef
    def __init__(self, data: _Optional[bytes] = ..., rows: _Optional[int] = ..., ref: _Optional[_Union[_common_pb2.DatasetRef, _Mapping]] = ...) -> None: ...
