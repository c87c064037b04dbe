import datetime

from flywheel.v1 import common_pb2 as _common_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SlotState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SLOT_STATE_UNSPECIFIED: _ClassVar[SlotState]
    SLOT_STATE_LOADING: _ClassVar[SlotState]
    SLOT_STATE_WARMING: _ClassVar[SlotState]
    SLOT_STATE_READY: _ClassVar[SlotState]
    SLOT_STATE_DRAINING: _ClassVar[SlotState]
    SLOT_STATE_FAILED: _ClassVar[SlotState]

class TrafficMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRAFFIC_MODE_UNSPECIFIED: _ClassVar[TrafficMode]
    TRAFFIC_MODE_PRODUCTION_ONLY: _ClassVar[TrafficMode]
    TRAFFIC_MODE_CANARY: _ClassVar[TrafficMode]
    TRAFFIC_MODE_SHADOW: _ClassVar[TrafficMode]
SLOT_STATE_UNSPECIFIED: SlotState
SLOT_STATE_LOADING: SlotState
SLOT_STATE_WARMING: SlotState
SLOT_STATE_READY: SlotState
SLOT_STATE_DRAINING: SlotState
SLOT_STATE_FAILED: SlotState
TRAFFIC_MODE_UNSPECIFIED: TrafficMode
TRAFFIC_MODE_PRODUCTION_ONLY: TrafficMode
TRAFFIC_MODE_CANARY: TrafficMode
TRAFFIC_MODE_SHADOW: TrafficMode

class SlotStats(_message.Message):
    __slots__ = ("request_count", "error_count", "latency_p50_ms", "latency_p99_ms")
    REQUEST_COUNT_FIELD_NUMBER: _ClassVar[int]
    ERROR_COUNT_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_MS_FIELD_NUMBER: _ClassVar[int]
    request_count: int
    error_count: int
    latency_p50_ms: float
    latency_p99_ms: float
    def __init__(self, request_count: _Optional[int] = ..., error_count: _Optional[int] = ..., latency_p50_ms: _Optional[float] = ..., latency_p99_ms: _Optional[float] = ...) -> None: ...

class ModelSlot(_message.Message):
    __slots__ = ("role", "model", "state", "execution_provider", "checksum", "loaded_at", "inflight_requests", "error", "stats")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    INFLIGHT_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    role: _common_pb2.ServingRole
    model: _common_pb2.ModelRef
    state: SlotState
    execution_provider: str
    checksum: str
    loaded_at: _timestamp_pb2.Timestamp
    inflight_requests: int
    error: str
    stats: SlotStats
    def __init__(self, role: _Optional[_Union[_common_pb2.ServingRole, str]] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., state: _Optional[_Union[SlotState, str]] = ..., execution_provider: _Optional[str] = ..., checksum: _Optional[str] = ..., loaded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., inflight_requests: _Optional[int] = ..., error: _Optional[str] = ..., stats: _Optional[_Union[SlotStats, _Mapping]] = ...) -> None: ...

class TrafficSplit(_message.Message):
    __slots__ = ("mode", "challenger", "percent", "update_time", "updated_by")
    MODE_FIELD_NUMBER: _ClassVar[int]
    CHALLENGER_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATED_BY_FIELD_NUMBER: _ClassVar[int]
    mode: TrafficMode
    challenger: _common_pb2.ModelRef
    percent: float
    update_time: _timestamp_pb2.Timestamp
    updated_by: str
    def __init__(self, mode: _Optional[_Union[TrafficMode, str]] = ..., challenger: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., percent: _Optional[float] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_by: _Optional[str] = ...) -> None: ...

class BatchingConfig(_message.Message):
    __slots__ = ("enabled", "max_batch_size", "max_queue_delay_us")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_DELAY_US_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    max_batch_size: int
    max_queue_delay_us: int
    def __init__(self, enabled: _Optional[bool] = ..., max_batch_size: _Optional[int] = ..., max_queue_delay_us: _Optional[int] = ...) -> None: ...

class Deployment(_message.Message):
    __slots__ = ("model_name", "slots", "traffic", "batching", "log_sample_rate", "log_dropped")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_FIELD_NUMBER: _ClassVar[int]
    BATCHING_FIELD_NUMBER: _ClassVar[int]
    LOG_SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    LOG_DROPPED_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    slots: _containers.RepeatedCompositeFieldContainer[ModelSlot]
    traffic: TrafficSplit
    batching: BatchingConfig
    log_sample_rate: float
    log_dropped: int
    def __init__(self, model_name: _Optional[str] = ..., slots: _Optional[_Iterable[_Union[ModelSlot, _Mapping]]] = ..., traffic: _Optional[_Union[TrafficSplit, _Mapping]] = ..., batching: _Optional[_Union[BatchingConfig, _Mapping]] = ..., log_sample_rate: _Optional[float] = ..., log_dropped: _Optional[int] = ...) -> None: ...

class ListDeploymentsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDeploymentsResponse(_message.Message):
    __slots__ = ("deployments", "next_page_token")
    DEPLOYMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    deployments: _containers.RepeatedCompositeFieldContainer[Deployment]
    next_page_token: str
    def __init__(self, deployments: _Optional[_Iterable[_Union[Deployment, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetDeploymentRequest(_message.Message):
    __slots__ = ("model_name",)
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    def __init__(self, model_name: _Optional[str] = ...) -> None: ...

class GetDeploymentResponse(_message.Message):
    __slots__ = ("deployment",)
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    deployment: Deployment
    def __init__(self, deployment: _Optional[_Union[Deployment, _Mapping]] = ...) -> None: ...

class SetCanaryRequest(_message.Message):
    __slots__ = ("model_name", "challenger_version", "percent", "actor")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    CHALLENGER_VERSION_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    challenger_version: int
    percent: float
    actor: str
    def __init__(self, model_name: _Optional[str] = ..., challenger_version: _Optional[int] = ..., percent: _Optional[float] = ..., actor: _Optional[str] = ...) -> None: ...

class SetCanaryResponse(_message.Message):
    __slots__ = ("deployment",)
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    deployment: Deployment
    def __init__(self, deployment: _Optional[_Union[Deployment, _Mapping]] = ...) -> None: ...

class SetShadowRequest(_message.Message):
    __slots__ = ("model_name", "challenger_version", "percent", "actor")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    CHALLENGER_VERSION_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    challenger_version: int
    percent: float
    actor: str
    def __init__(self, model_name: _Optional[str] = ..., challenger_version: _Optional[int] = ..., percent: _Optional[float] = ..., actor: _Optional[str] = ...) -> None: ...

class SetShadowResponse(_message.Message):
    __slots__ = ("deployment",)
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    deployment: Deployment
    def __init__(self, deployment: _Optional[_Union[Deployment, _Mapping]] = ...) -> None: ...

class ClearTrafficRequest(_message.Message):
    __slots__ = ("model_name", "actor")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    actor: str
    def __init__(self, model_name: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class ClearTrafficResponse(_message.Message):
    __slots__ = ("deployment",)
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    deployment: Deployment
    def __init__(self, deployment: _Optional[_Union[Deployment, _Mapping]] = ...) -> None: ...
