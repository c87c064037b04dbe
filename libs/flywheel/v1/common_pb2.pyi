import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FieldType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FIELD_TYPE_UNSPECIFIED: _ClassVar[FieldType]
    FIELD_TYPE_FLOAT: _ClassVar[FieldType]
    FIELD_TYPE_INT: _ClassVar[FieldType]
    FIELD_TYPE_BOOL: _ClassVar[FieldType]
    FIELD_TYPE_CATEGORICAL: _ClassVar[FieldType]

class WriteMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WRITE_MODE_UNSPECIFIED: _ClassVar[WriteMode]
    WRITE_MODE_APPEND: _ClassVar[WriteMode]
    WRITE_MODE_REPLACE: _ClassVar[WriteMode]

class Split(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SPLIT_UNSPECIFIED: _ClassVar[Split]
    SPLIT_TRAIN: _ClassVar[Split]
    SPLIT_TEST: _ClassVar[Split]

class Task(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_UNSPECIFIED: _ClassVar[Task]
    TASK_CLASSIFICATION: _ClassVar[Task]
    TASK_REGRESSION: _ClassVar[Task]

class MetricDirection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METRIC_DIRECTION_UNSPECIFIED: _ClassVar[MetricDirection]
    METRIC_DIRECTION_MAXIMIZE: _ClassVar[MetricDirection]
    METRIC_DIRECTION_MINIMIZE: _ClassVar[MetricDirection]

class ApprovalMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    APPROVAL_MODE_UNSPECIFIED: _ClassVar[ApprovalMode]
    APPROVAL_MODE_AUTO: _ClassVar[ApprovalMode]
    APPROVAL_MODE_MANUAL: _ClassVar[ApprovalMode]

class ServingRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SERVING_ROLE_UNSPECIFIED: _ClassVar[ServingRole]
    SERVING_ROLE_PRODUCTION: _ClassVar[ServingRole]
    SERVING_ROLE_CANARY: _ClassVar[ServingRole]
    SERVING_ROLE_SHADOW: _ClassVar[ServingRole]
    SERVING_ROLE_STAGING: _ClassVar[ServingRole]

class DriftKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DRIFT_KIND_UNSPECIFIED: _ClassVar[DriftKind]
    DRIFT_KIND_DATA_DRIFT: _ClassVar[DriftKind]
    DRIFT_KIND_PREDICTION_DRIFT: _ClassVar[DriftKind]
    DRIFT_KIND_INTEGRITY: _ClassVar[DriftKind]
    DRIFT_KIND_QUALITY: _ClassVar[DriftKind]
    DRIFT_KIND_SEGMENT: _ClassVar[DriftKind]
FIELD_TYPE_UNSPECIFIED: FieldType
FIELD_TYPE_FLOAT: FieldType
FIELD_TYPE_INT: FieldType
FIELD_TYPE_BOOL: FieldType
FIELD_TYPE_CATEGORICAL: FieldType
WRITE_MODE_UNSPECIFIED: WriteMode
WRITE_MODE_APPEND: WriteMode
WRITE_MODE_REPLACE: WriteMode
SPLIT_UNSPECIFIED: Split
SPLIT_TRAIN: Split
SPLIT_TEST: Split
TASK_UNSPECIFIED: Task
TASK_CLASSIFICATION: Task
TASK_REGRESSION: Task
METRIC_DIRECTION_UNSPECIFIED: MetricDirection
METRIC_DIRECTION_MAXIMIZE: MetricDirection
METRIC_DIRECTION_MINIMIZE: MetricDirection
APPROVAL_MODE_UNSPECIFIED: ApprovalMode
APPROVAL_MODE_AUTO: ApprovalMode
APPROVAL_MODE_MANUAL: ApprovalMode
SERVING_ROLE_UNSPECIFIED: ServingRole
SERVING_ROLE_PRODUCTION: ServingRole
SERVING_ROLE_CANARY: ServingRole
SERVING_ROLE_SHADOW: ServingRole
SERVING_ROLE_STAGING: ServingRole
DRIFT_KIND_UNSPECIFIED: DriftKind
DRIFT_KIND_DATA_DRIFT: DriftKind
DRIFT_KIND_PREDICTION_DRIFT: DriftKind
DRIFT_KIND_INTEGRITY: DriftKind
DRIFT_KIND_QUALITY: DriftKind
DRIFT_KIND_SEGMENT: DriftKind

class EventMeta(_message.Message):
    __slots__ = ("event_id", "occurred_at", "producer", "schema_version", "causation_id", "correlation_id")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    CAUSATION_ID_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    occurred_at: _timestamp_pb2.Timestamp
    producer: str
    schema_version: int
    causation_id: str
    correlation_id: str
    def __init__(self, event_id: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., producer: _Optional[str] = ..., schema_version: _Optional[int] = ..., causation_id: _Optional[str] = ..., correlation_id: _Optional[str] = ...) -> None: ...

class DatasetRef(_message.Message):
    __slots__ = ("name", "version", "content_hash")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    content_hash: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., content_hash: _Optional[str] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class Field(_message.Message):
    __slots__ = ("name", "type", "nullable", "min", "max", "allowed_values", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NULLABLE_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_VALUES_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: FieldType
    nullable: bool
    min: float
    max: float
    allowed_values: _containers.RepeatedScalarFieldContainer[str]
    description: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[FieldType, str]] = ..., nullable: _Optional[bool] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., allowed_values: _Optional[_Iterable[str]] = ..., description: _Optional[str] = ...) -> None: ...

class Schema(_message.Message):
    __slots__ = ("fields", "label_field", "key_field", "train_fraction")
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FRACTION_FIELD_NUMBER: _ClassVar[int]
    fields: _containers.RepeatedCompositeFieldContainer[Field]
    label_field: str
    key_field: str
    train_fraction: float
    def __init__(self, fields: _Optional[_Iterable[_Union[Field, _Mapping]]] = ..., label_field: _Optional[str] = ..., key_field: _Optional[str] = ..., train_fraction: _Optional[float] = ...) -> None: ...

class Metric(_message.Message):
    __slots__ = ("name", "value", "split", "class_label")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    CLASS_LABEL_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    split: Split
    class_label: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ..., split: _Optional[_Union[Split, str]] = ..., class_label: _Optional[str] = ...) -> None: ...

class Lineage(_message.Message):
    __slots__ = ("dataset", "run_id", "spec_name", "spec_version", "code_version", "parent_dataset_versions", "seed")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_VERSION_FIELD_NUMBER: _ClassVar[int]
    CODE_VERSION_FIELD_NUMBER: _ClassVar[int]
    PARENT_DATASET_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    dataset: DatasetRef
    run_id: str
    spec_name: str
    spec_version: int
    code_version: str
    parent_dataset_versions: _containers.RepeatedScalarFieldContainer[int]
    seed: int
    def __init__(self, dataset: _Optional[_Union[DatasetRef, _Mapping]] = ..., run_id: _Optional[str] = ..., spec_name: _Optional[str] = ..., spec_version: _Optional[int] = ..., code_version: _Optional[str] = ..., parent_dataset_versions: _Optional[_Iterable[int]] = ..., seed: _Optional[int] = ...) -> None: ...

class TensorSpec(_message.Message):
    __slots__ = ("name", "datatype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    datatype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., datatype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class ModelSignature(_message.Message):
    __slots__ = ("inputs", "outputs", "feature_names", "class_labels")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    CLASS_LABELS_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    outputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    class_labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, inputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., feature_names: _Optional[_Iterable[str]] = ..., class_labels: _Optional[_Iterable[str]] = ...) -> None: ...

class PromotionPolicy(_message.Message):
    __slots__ = ("metric", "direction", "min_improvement", "approval")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    MIN_IMPROVEMENT_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_FIELD_NUMBER: _ClassVar[int]
    metric: str
    direction: MetricDirection
    min_improvement: float
    approval: ApprovalMode
    def __init__(self, metric: _Optional[str] = ..., direction: _Optional[_Union[MetricDirection, str]] = ..., min_improvement: _Optional[float] = ..., approval: _Optional[_Union[ApprovalMode, str]] = ...) -> None: ...

class FeatureScore(_message.Message):
    __slots__ = ("feature", "statistic", "score", "threshold", "p_value", "breached")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    STATISTIC_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    BREACHED_FIELD_NUMBER: _ClassVar[int]
    feature: str
    statistic: str
    score: float
    threshold: float
    p_value: float
    breached: bool
    def __init__(self, feature: _Optional[str] = ..., statistic: _Optional[str] = ..., score: _Optional[float] = ..., threshold: _Optional[float] = ..., p_value: _Optional[float] = ..., breached: _Optional[bool] = ...) -> None: ...

class Segment(_message.Message):
    __slots__ = ("field", "value")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    field: str
    value: str
    def __init__(self, field: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
