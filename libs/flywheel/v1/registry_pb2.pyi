import datetime

from flywheel.v1 import common_pb2 as _common_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PromotionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROMOTION_STATE_UNSPECIFIED: _ClassVar[PromotionState]
    PROMOTION_STATE_PENDING_CHECKS: _ClassVar[PromotionState]
    PROMOTION_STATE_CHECKS_FAILED: _ClassVar[PromotionState]
    PROMOTION_STATE_PENDING_APPROVAL: _ClassVar[PromotionState]
    PROMOTION_STATE_PROMOTED: _ClassVar[PromotionState]
    PROMOTION_STATE_NOT_PROMOTED: _ClassVar[PromotionState]
    PROMOTION_STATE_REJECTED: _ClassVar[PromotionState]

class AuditAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIT_ACTION_UNSPECIFIED: _ClassVar[AuditAction]
    AUDIT_ACTION_REGISTERED: _ClassVar[AuditAction]
    AUDIT_ACTION_ALIAS_SET: _ClassVar[AuditAction]
    AUDIT_ACTION_ALIAS_DELETED: _ClassVar[AuditAction]
    AUDIT_ACTION_TAGS_SET: _ClassVar[AuditAction]
    AUDIT_ACTION_ARCHIVED: _ClassVar[AuditAction]
    AUDIT_ACTION_CHECKS_REPORTED: _ClassVar[AuditAction]
    AUDIT_ACTION_PROMOTED: _ClassVar[AuditAction]
    AUDIT_ACTION_NOT_PROMOTED: _ClassVar[AuditAction]
    AUDIT_ACTION_APPROVED: _ClassVar[AuditAction]
    AUDIT_ACTION_REJECTED: _ClassVar[AuditAction]
    AUDIT_ACTION_ROLLED_BACK: _ClassVar[AuditAction]
    AUDIT_ACTION_POLICY_SET: _ClassVar[AuditAction]

class Comparison(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPARISON_UNSPECIFIED: _ClassVar[Comparison]
    COMPARISON_GT: _ClassVar[Comparison]
    COMPARISON_GTE: _ClassVar[Comparison]
    COMPARISON_LT: _ClassVar[Comparison]
    COMPARISON_LTE: _ClassVar[Comparison]
    COMPARISON_EQ: _ClassVar[Comparison]
PROMOTION_STATE_UNSPECIFIED: PromotionState
PROMOTION_STATE_PENDING_CHECKS: PromotionState
PROMOTION_STATE_CHECKS_FAILED: PromotionState
PROMOTION_STATE_PENDING_APPROVAL: PromotionState
PROMOTION_STATE_PROMOTED: PromotionState
PROMOTION_STATE_NOT_PROMOTED: PromotionState
PROMOTION_STATE_REJECTED: PromotionState
AUDIT_ACTION_UNSPECIFIED: AuditAction
AUDIT_ACTION_REGISTERED: AuditAction
AUDIT_ACTION_ALIAS_SET: AuditAction
AUDIT_ACTION_ALIAS_DELETED: AuditAction
AUDIT_ACTION_TAGS_SET: AuditAction
AUDIT_ACTION_ARCHIVED: AuditAction
AUDIT_ACTION_CHECKS_REPORTED: AuditAction
AUDIT_ACTION_PROMOTED: AuditAction
AUDIT_ACTION_NOT_PROMOTED: AuditAction
AUDIT_ACTION_APPROVED: AuditAction
AUDIT_ACTION_REJECTED: AuditAction
AUDIT_ACTION_ROLLED_BACK: AuditAction
AUDIT_ACTION_POLICY_SET: AuditAction
COMPARISON_UNSPECIFIED: Comparison
COMPARISON_GT: Comparison
COMPARISON_GTE: Comparison
COMPARISON_LT: Comparison
COMPARISON_LTE: Comparison
COMPARISON_EQ: Comparison

class PromotionDecision(_message.Message):
    __slots__ = ("state", "reason", "actor", "time")
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    state: PromotionState
    reason: str
    actor: str
    time: _timestamp_pb2.Timestamp
    def __init__(self, state: _Optional[_Union[PromotionState, str]] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class StagingCheck(_message.Message):
    __slots__ = ("name", "passed", "detail")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    name: str
    passed: bool
    detail: str
    def __init__(self, name: _Optional[str] = ..., passed: _Optional[bool] = ..., detail: _Optional[str] = ...) -> None: ...

class StagingReport(_message.Message):
    __slots__ = ("passed", "checks", "sample_metrics", "latency_p50_ms", "latency_p99_ms", "latency_calls", "reporter", "report_time", "champion_metrics", "champion_version")
    PASSED_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_METRICS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_CALLS_FIELD_NUMBER: _ClassVar[int]
    REPORTER_FIELD_NUMBER: _ClassVar[int]
    REPORT_TIME_FIELD_NUMBER: _ClassVar[int]
    CHAMPION_METRICS_FIELD_NUMBER: _ClassVar[int]
    CHAMPION_VERSION_FIELD_NUMBER: _ClassVar[int]
    passed: bool
    checks: _containers.RepeatedCompositeFieldContainer[StagingCheck]
    sample_metrics: _containers.RepeatedCompositeFieldContainer[_common_pb2.Metric]
    latency_p50_ms: float
    latency_p99_ms: float
    latency_calls: int
    reporter: str
    report_time: _timestamp_pb2.Timestamp
    champion_metrics: _containers.RepeatedCompositeFieldContainer[_common_pb2.Metric]
    champion_version: int
    def __init__(self, passed: _Optional[bool] = ..., checks: _Optional[_Iterable[_Union[StagingCheck, _Mapping]]] = ..., sample_metrics: _Optional[_Iterable[_Union[_common_pb2.Metric, _Mapping]]] = ..., latency_p50_ms: _Optional[float] = ..., latency_p99_ms: _Optional[float] = ..., latency_calls: _Optional[int] = ..., reporter: _Optional[str] = ..., report_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., champion_metrics: _Optional[_Iterable[_Union[_common_pb2.Metric, _Mapping]]] = ..., champion_version: _Optional[int] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("ref", "description", "task", "checksum", "size_bytes", "artifact_uri", "format", "signature", "metrics", "params", "lineage", "tags", "aliases", "create_time", "created_by", "staging", "promotion", "archived", "archive_reason")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REF_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_URI_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    LINEAGE_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    STAGING_FIELD_NUMBER: _ClassVar[int]
    PROMOTION_FIELD_NUMBER: _ClassVar[int]
    ARCHIVED_FIELD_NUMBER: _ClassVar[int]
    ARCHIVE_REASON_FIELD_NUMBER: _ClassVar[int]
    ref: _common_pb2.ModelRef
    description: str
    task: _common_pb2.Task
    checksum: str
    size_bytes: int
    artifact_uri: str
    format: str
    signature: _common_pb2.ModelSignature
    metrics: _containers.RepeatedCompositeFieldContainer[_common_pb2.Metric]
    params: _struct_pb2.Struct
    lineage: _common_pb2.Lineage
    tags: _containers.ScalarMap[str, str]
    aliases: _containers.RepeatedScalarFieldContainer[str]
    create_time: _timestamp_pb2.Timestamp
    created_by: str
    staging: StagingReport
    promotion: PromotionDecision
    archived: bool
    archive_reason: str
    def __init__(self, ref: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., description: _Optional[str] = ..., task: _Optional[_Union[_common_pb2.Task, str]] = ..., checksum: _Optional[str] = ..., size_bytes: _Optional[int] = ..., artifact_uri: _Optional[str] = ..., format: _Optional[str] = ..., signature: _Optional[_Union[_common_pb2.ModelSignature, _Mapping]] = ..., metrics: _Optional[_Iterable[_Union[_common_pb2.Metric, _Mapping]]] = ..., params: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., lineage: _Optional[_Union[_common_pb2.Lineage, _Mapping]] = ..., tags: _Optional[_Mapping[str, str]] = ..., aliases: _Optional[_Iterable[str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_by: _Optional[str] = ..., staging: _Optional[_Union[StagingReport, _Mapping]] = ..., promotion: _Optional[_Union[PromotionDecision, _Mapping]] = ..., archived: _Optional[bool] = ..., archive_reason: _Optional[str] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("name", "latest_version", "aliases", "policy", "create_time")
    class AliasesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    latest_version: int
    aliases: _containers.ScalarMap[str, int]
    policy: _common_pb2.PromotionPolicy
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., latest_version: _Optional[int] = ..., aliases: _Optional[_Mapping[str, int]] = ..., policy: _Optional[_Union[_common_pb2.PromotionPolicy, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Alias(_message.Message):
    __slots__ = ("model_name", "alias", "version", "update_time", "updated_by")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATED_BY_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    alias: str
    version: int
    update_time: _timestamp_pb2.Timestamp
    updated_by: str
    def __init__(self, model_name: _Optional[str] = ..., alias: _Optional[str] = ..., version: _Optional[int] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_by: _Optional[str] = ...) -> None: ...

class AuditEvent(_message.Message):
    __slots__ = ("id", "time", "actor", "action", "model_name", "version", "alias", "from_version", "to_version", "reason", "causation_id", "details")
    ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CAUSATION_ID_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    id: str
    time: _timestamp_pb2.Timestamp
    actor: str
    action: AuditAction
    model_name: str
    version: int
    alias: str
    from_version: int
    to_version: int
    reason: str
    causation_id: str
    details: _struct_pb2.Struct
    def __init__(self, id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., actor: _Optional[str] = ..., action: _Optional[_Union[AuditAction, str]] = ..., model_name: _Optional[str] = ..., version: _Optional[int] = ..., alias: _Optional[str] = ..., from_version: _Optional[int] = ..., to_version: _Optional[int] = ..., reason: _Optional[str] = ..., causation_id: _Optional[str] = ..., details: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class RegisterModelHeader(_message.Message):
    __slots__ = ("model_name", "description", "task", "signature", "metrics", "params", "lineage", "tags", "format", "artifact_uri", "sha256", "idempotency_key", "promotion_policy", "actor")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    LINEAGE_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_URI_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    PROMOTION_POLICY_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    description: str
    task: _common_pb2.Task
    signature: _common_pb2.ModelSignature
    metrics: _containers.RepeatedCompositeFieldContainer[_common_pb2.Metric]
    params: _struct_pb2.Struct
    lineage: _common_pb2.Lineage
    tags: _containers.ScalarMap[str, str]
    format: str
    artifact_uri: str
    sha256: str
    idempotency_key: str
    promotion_policy: _common_pb2.PromotionPolicy
    actor: str
    def __init__(self, model_name: _Optional[str] = ..., description: _Optional[str] = ..., task: _Optional[_Union[_common_pb2.Task, str]] = ..., signature: _Optional[_Union[_common_pb2.ModelSignature, _Mapping]] = ..., metrics: _Optional[_Iterable[_Union[_common_pb2.Metric, _Mapping]]] = ..., params: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., lineage: _Optional[_Union[_common_pb2.Lineage, _Mapping]] = ..., tags: _Optional[_Mapping[str, str]] = ..., format: _Optional[str] = ..., artifact_uri: _Optional[str] = ..., sha256: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., promotion_policy: _Optional[_Union[_common_pb2.PromotionPolicy, _Mapping]] = ..., actor: _Optional[str] = ...) -> None: ...

class RegisterModelRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: RegisterModelHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[RegisterModelHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class RegisterModelResponse(_message.Message):
    __slots__ = ("version", "created")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    version: ModelVersion
    created: bool
    def __init__(self, version: _Optional[_Union[ModelVersion, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("alias", "page_size", "page_token")
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    alias: str
    page_size: int
    page_token: str
    def __init__(self, alias: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "next_page_token")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    next_page_token: str
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetModelVersionRequest(_message.Message):
    __slots__ = ("name", "version", "alias")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    alias: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., alias: _Optional[str] = ...) -> None: ...

class GetModelVersionResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: ModelVersion
    def __init__(self, version: _Optional[_Union[ModelVersion, _Mapping]] = ...) -> None: ...

class ListModelVersionsRequest(_message.Message):
    __slots__ = ("name", "include_archived", "page_size", "page_token")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_ARCHIVED_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    name: str
    include_archived: bool
    page_size: int
    page_token: str
    def __init__(self, name: _Optional[str] = ..., include_archived: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListModelVersionsResponse(_message.Message):
    __slots__ = ("versions", "next_page_token")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    next_page_token: str
    def __init__(self, versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class MetricFilter(_message.Message):
    __slots__ = ("metric", "op", "value")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    metric: str
    op: Comparison
    value: float
    def __init__(self, metric: _Optional[str] = ..., op: _Optional[_Union[Comparison, str]] = ..., value: _Optional[float] = ...) -> None: ...

class SearchModelVersionsRequest(_message.Message):
    __slots__ = ("name", "tags", "metric_filters", "dataset_name", "dataset_version", "created_after", "created_before", "order_by_metric", "ascending", "include_archived", "page_size", "page_token")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    METRIC_FILTERS_FIELD_NUMBER: _ClassVar[int]
    DATASET_NAME_FIELD_NUMBER: _ClassVar[int]
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AFTER_FIELD_NUMBER: _ClassVar[int]
    CREATED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    ORDER_BY_METRIC_FIELD_NUMBER: _ClassVar[int]
    ASCENDING_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_ARCHIVED_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    name: str
    tags: _containers.ScalarMap[str, str]
    metric_filters: _containers.RepeatedCompositeFieldContainer[MetricFilter]
    dataset_name: str
    dataset_version: int
    created_after: _timestamp_pb2.Timestamp
    created_before: _timestamp_pb2.Timestamp
    order_by_metric: str
    ascending: bool
    include_archived: bool
    page_size: int
    page_token: str
    def __init__(self, name: _Optional[str] = ..., tags: _Optional[_Mapping[str, str]] = ..., metric_filters: _Optional[_Iterable[_Union[MetricFilter, _Mapping]]] = ..., dataset_name: _Optional[str] = ..., dataset_version: _Optional[int] = ..., created_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., order_by_metric: _Optional[str] = ..., ascending: _Optional[bool] = ..., include_archived: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class SearchModelVersionsResponse(_message.Message):
    __slots__ = ("versions", "next_page_token")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    next_page_token: str
    def __init__(self, versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DownloadArtifactRequest(_message.Message):
    __slots__ = ("name", "version", "alias", "chunk_size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    alias: str
    chunk_size: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., alias: _Optional[str] = ..., chunk_size: _Optional[int] = ...) -> None: ...

class DownloadArtifactResponse(_message.Message):
    __slots__ = ("sha256", "size_bytes", "model", "chunk", "offset")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size_bytes: int
    model: _common_pb2.ModelRef
    chunk: bytes
    offset: int
    def __init__(self, sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., chunk: _Optional[bytes] = ..., offset: _Optional[int] = ...) -> None: ...

class SetAliasRequest(_message.Message):
    __slots__ = ("name", "alias", "version", "actor", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    alias: str
    version: int
    actor: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., alias: _Optional[str] = ..., version: _Optional[int] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class SetAliasResponse(_message.Message):
    __slots__ = ("alias", "previous_version")
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    alias: Alias
    previous_version: int
    def __init__(self, alias: _Optional[_Union[Alias, _Mapping]] = ..., previous_version: _Optional[int] = ...) -> None: ...

class DeleteAliasRequest(_message.Message):
    __slots__ = ("name", "alias", "actor", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    alias: str
    actor: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., alias: _Optional[str] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class DeleteAliasResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetAliasRequest(_message.Message):
    __slots__ = ("name", "alias")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    name: str
    alias: str
    def __init__(self, name: _Optional[str] = ..., alias: _Optional[str] = ...) -> None: ...

class GetAliasResponse(_message.Message):
    __slots__ = ("alias",)
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    alias: Alias
    def __init__(self, alias: _Optional[_Union[Alias, _Mapping]] = ...) -> None: ...

class SetTagsRequest(_message.Message):
    __slots__ = ("name", "version", "tags", "remove_keys", "actor")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    REMOVE_KEYS_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    tags: _containers.ScalarMap[str, str]
    remove_keys: _containers.RepeatedScalarFieldContainer[str]
    actor: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., tags: _Optional[_Mapping[str, str]] = ..., remove_keys: _Optional[_Iterable[str]] = ..., actor: _Optional[str] = ...) -> None: ...

class SetTagsResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: ModelVersion
    def __init__(self, version: _Optional[_Union[ModelVersion, _Mapping]] = ...) -> None: ...

class ArchiveVersionRequest(_message.Message):
    __slots__ = ("name", "version", "reason", "actor")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    reason: str
    actor: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class ArchiveVersionResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: ModelVersion
    def __init__(self, version: _Optional[_Union[ModelVersion, _Mapping]] = ...) -> None: ...

class GetLineageRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class GetLineageResponse(_message.Message):
    __slots__ = ("version", "lineage", "dataset_ancestry")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LINEAGE_FIELD_NUMBER: _ClassVar[int]
    DATASET_ANCESTRY_FIELD_NUMBER: _ClassVar[int]
    version: ModelVersion
    lineage: _common_pb2.Lineage
    dataset_ancestry: _containers.RepeatedCompositeFieldContainer[_common_pb2.DatasetRef]
    def __init__(self, version: _Optional[_Union[ModelVersion, _Mapping]] = ..., lineage: _Optional[_Union[_common_pb2.Lineage, _Mapping]] = ..., dataset_ancestry: _Optional[_Iterable[_Union[_common_pb2.DatasetRef, _Mapping]]] = ...) -> None: ...

class ListAuditEventsRequest(_message.Message):
    __slots__ = ("name", "version", "action", "since", "page_size", "page_token")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    action: AuditAction
    since: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., action: _Optional[_Union[AuditAction, str]] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAuditEventsResponse(_message.Message):
    __slots__ = ("events", "next_page_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AuditEvent]
    next_page_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[AuditEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SetPromotionPolicyRequest(_message.Message):
    __slots__ = ("model_name", "policy", "actor")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    policy: _common_pb2.PromotionPolicy
    actor: str
    def __init__(self, model_name: _Optional[str] = ..., policy: _Optional[_Union[_common_pb2.PromotionPolicy, _Mapping]] = ..., actor: _Optional[str] = ...) -> None: ...

class SetPromotionPolicyResponse(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: _common_pb2.PromotionPolicy
    def __init__(self, policy: _Optional[_Union[_common_pb2.PromotionPolicy, _Mapping]] = ...) -> None: ...

class GetPromotionPolicyRequest(_message.Message):
    __slots__ = ("model_name",)
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    def __init__(self, model_name: _Optional[str] = ...) -> None: ...

class GetPromotionPolicyResponse(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: _common_pb2.PromotionPolicy
    def __init__(self, policy: _Optional[_Union[_common_pb2.PromotionPolicy, _Mapping]] = ...) -> None: ...

class ReportStagingChecksRequest(_message.Message):
    __slots__ = ("model", "report", "causation_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    CAUSATION_ID_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    report: StagingReport
    causation_id: str
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., report: _Optional[_Union[StagingReport, _Mapping]] = ..., causation_id: _Optional[str] = ...) -> None: ...

class ReportStagingChecksResponse(_message.Message):
    __slots__ = ("version", "decision")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    version: ModelVersion
    decision: PromotionDecision
    def __init__(self, version: _Optional[_Union[ModelVersion, _Mapping]] = ..., decision: _Optional[_Union[PromotionDecision, _Mapping]] = ...) -> None: ...

class ApproveVersionRequest(_message.Message):
    __slots__ = ("name", "version", "actor", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    actor: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ApproveVersionResponse(_message.Message):
    __slots__ = ("version", "decision")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    version: ModelVersion
    decision: PromotionDecision
    def __init__(self, version: _Optional[_Union[ModelVersion, _Mapping]] = ..., decision: _Optional[_Union[PromotionDecision, _Mapping]] = ...) -> None: ...

class RejectVersionRequest(_message.Message):
    __slots__ = ("name", "version", "actor", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    actor: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RejectVersionResponse(_message.Message):
    __slots__ = ("version", "decision")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    version: ModelVersion
    decision: PromotionDecision
    def __init__(self, version: _Optional[_Union[ModelVersion, _Mapping]] = ..., decision: _Optional[_Union[PromotionDecision, _Mapping]] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("name", "to_version", "actor", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    to_version: int
    actor: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., to_version: _Optional[int] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RollbackResponse(_message.Message):
    __slots__ = ("production", "previous_version")
    PRODUCTION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    production: _common_pb2.ModelRef
    previous_version: int
    def __init__(self, production: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., previous_version: _Optional[int] = ...) -> None: ...
