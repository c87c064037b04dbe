import datetime

from flywheel.v1 import common_pb2 as _common_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FeatureThresholds(_message.Message):
    __slots__ = ("psi", "ks_statistic", "chi2_p_value", "ignore")
    PSI_FIELD_NUMBER: _ClassVar[int]
    KS_STATISTIC_FIELD_NUMBER: _ClassVar[int]
    CHI2_P_VALUE_FIELD_NUMBER: _ClassVar[int]
    IGNORE_FIELD_NUMBER: _ClassVar[int]
    psi: float
    ks_statistic: float
    chi2_p_value: float
    ignore: bool
    def __init__(self, psi: _Optional[float] = ..., ks_statistic: _Optional[float] = ..., chi2_p_value: _Optional[float] = ..., ignore: _Optional[bool] = ...) -> None: ...

class IntegrityThresholds(_message.Message):
    __slots__ = ("max_null_rate", "max_out_of_range_rate", "max_unseen_category_rate", "max_type_mismatch_rate")
    MAX_NULL_RATE_FIELD_NUMBER: _ClassVar[int]
    MAX_OUT_OF_RANGE_RATE_FIELD_NUMBER: _ClassVar[int]
    MAX_UNSEEN_CATEGORY_RATE_FIELD_NUMBER: _ClassVar[int]
    MAX_TYPE_MISMATCH_RATE_FIELD_NUMBER: _ClassVar[int]
    max_null_rate: float
    max_out_of_range_rate: float
    max_unseen_category_rate: float
    max_type_mismatch_rate: float
    def __init__(self, max_null_rate: _Optional[float] = ..., max_out_of_range_rate: _Optional[float] = ..., max_unseen_category_rate: _Optional[float] = ..., max_type_mismatch_rate: _Optional[float] = ...) -> None: ...

class QualityThreshold(_message.Message):
    __slots__ = ("metric", "max_drop", "min_labelled_rows")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    MAX_DROP_FIELD_NUMBER: _ClassVar[int]
    MIN_LABELLED_ROWS_FIELD_NUMBER: _ClassVar[int]
    metric: str
    max_drop: float
    min_labelled_rows: int
    def __init__(self, metric: _Optional[str] = ..., max_drop: _Optional[float] = ..., min_labelled_rows: _Optional[int] = ...) -> None: ...

class SegmentConfig(_message.Message):
    __slots__ = ("field", "bucket_edges", "metric", "min_value", "max_gap", "min_rows")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    BUCKET_EDGES_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    MIN_VALUE_FIELD_NUMBER: _ClassVar[int]
    MAX_GAP_FIELD_NUMBER: _ClassVar[int]
    MIN_ROWS_FIELD_NUMBER: _ClassVar[int]
    field: str
    bucket_edges: _containers.RepeatedScalarFieldContainer[float]
    metric: str
    min_value: float
    max_gap: float
    min_rows: int
    def __init__(self, field: _Optional[str] = ..., bucket_edges: _Optional[_Iterable[float]] = ..., metric: _Optional[str] = ..., min_value: _Optional[float] = ..., max_gap: _Optional[float] = ..., min_rows: _Optional[int] = ...) -> None: ...

class WindowPolicy(_message.Message):
    __slots__ = ("size_rows", "duration", "min_rows")
    SIZE_ROWS_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    MIN_ROWS_FIELD_NUMBER: _ClassVar[int]
    size_rows: int
    duration: _duration_pb2.Duration
    min_rows: int
    def __init__(self, size_rows: _Optional[int] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., min_rows: _Optional[int] = ...) -> None: ...

class MonitoringPolicy(_message.Message):
    __slots__ = ("model_name", "enabled", "window", "default_thresholds", "feature_thresholds", "prediction_thresholds", "integrity", "quality", "segments", "consecutive_breaches", "cooldown")
    class FeatureThresholdsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: FeatureThresholds
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[FeatureThresholds, _Mapping]] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    INTEGRITY_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_BREACHES_FIELD_NUMBER: _ClassVar[int]
    COOLDOWN_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    enabled: bool
    window: WindowPolicy
    default_thresholds: FeatureThresholds
    feature_thresholds: _containers.MessageMap[str, FeatureThresholds]
    prediction_thresholds: FeatureThresholds
    integrity: IntegrityThresholds
    quality: QualityThreshold
    segments: _containers.RepeatedCompositeFieldContainer[SegmentConfig]
    consecutive_breaches: int
    cooldown: _duration_pb2.Duration
    def __init__(self, model_name: _Optional[str] = ..., enabled: _Optional[bool] = ..., window: _Optional[_Union[WindowPolicy, _Mapping]] = ..., default_thresholds: _Optional[_Union[FeatureThresholds, _Mapping]] = ..., feature_thresholds: _Optional[_Mapping[str, FeatureThresholds]] = ..., prediction_thresholds: _Optional[_Union[FeatureThresholds, _Mapping]] = ..., integrity: _Optional[_Union[IntegrityThresholds, _Mapping]] = ..., quality: _Optional[_Union[QualityThreshold, _Mapping]] = ..., segments: _Optional[_Iterable[_Union[SegmentConfig, _Mapping]]] = ..., consecutive_breaches: _Optional[int] = ..., cooldown: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class FeatureIntegrity(_message.Message):
    __slots__ = ("feature", "nulls", "out_of_range", "unseen_categories", "type_mismatches")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    NULLS_FIELD_NUMBER: _ClassVar[int]
    OUT_OF_RANGE_FIELD_NUMBER: _ClassVar[int]
    UNSEEN_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    TYPE_MISMATCHES_FIELD_NUMBER: _ClassVar[int]
    feature: str
    nulls: int
    out_of_range: int
    unseen_categories: int
    type_mismatches: int
    def __init__(self, feature: _Optional[str] = ..., nulls: _Optional[int] = ..., out_of_range: _Optional[int] = ..., unseen_categories: _Optional[int] = ..., type_mismatches: _Optional[int] = ...) -> None: ...

class IntegrityReport(_message.Message):
    __slots__ = ("features", "missing_fields", "extra_fields", "scores")
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELDS_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    features: _containers.RepeatedCompositeFieldContainer[FeatureIntegrity]
    missing_fields: _containers.RepeatedScalarFieldContainer[str]
    extra_fields: _containers.RepeatedScalarFieldContainer[str]
    scores: _containers.RepeatedCompositeFieldContainer[_common_pb2.FeatureScore]
    def __init__(self, features: _Optional[_Iterable[_Union[FeatureIntegrity, _Mapping]]] = ..., missing_fields: _Optional[_Iterable[str]] = ..., extra_fields: _Optional[_Iterable[str]] = ..., scores: _Optional[_Iterable[_Union[_common_pb2.FeatureScore, _Mapping]]] = ...) -> None: ...

class QualityReport(_message.Message):
    __slots__ = ("labelled_rows", "metrics", "metric", "value", "reference_value", "drop", "breached")
    LABELLED_ROWS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_VALUE_FIELD_NUMBER: _ClassVar[int]
    DROP_FIELD_NUMBER: _ClassVar[int]
    BREACHED_FIELD_NUMBER: _ClassVar[int]
    labelled_rows: int
    metrics: _containers.RepeatedCompositeFieldContainer[_common_pb2.Metric]
    metric: str
    value: float
    reference_value: float
    drop: float
    breached: bool
    def __init__(self, labelled_rows: _Optional[int] = ..., metrics: _Optional[_Iterable[_Union[_common_pb2.Metric, _Mapping]]] = ..., metric: _Optional[str] = ..., value: _Optional[float] = ..., reference_value: _Optional[float] = ..., drop: _Optional[float] = ..., breached: _Optional[bool] = ...) -> None: ...

class LatencySummary(_message.Message):
    __slots__ = ("p50_ms", "p99_ms", "mean_ms")
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    MEAN_MS_FIELD_NUMBER: _ClassVar[int]
    p50_ms: float
    p99_ms: float
    mean_ms: float
    def __init__(self, p50_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ..., mean_ms: _Optional[float] = ...) -> None: ...

class WindowReport(_message.Message):
    __slots__ = ("window_id", "model", "start", "end", "rows", "reference", "feature_scores", "prediction_scores", "integrity", "quality", "latency", "breached")
    WINDOW_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SCORES_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_SCORES_FIELD_NUMBER: _ClassVar[int]
    INTEGRITY_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    BREACHED_FIELD_NUMBER: _ClassVar[int]
    window_id: str
    model: _common_pb2.ModelRef
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    rows: int
    reference: _common_pb2.DatasetRef
    feature_scores: _containers.RepeatedCompositeFieldContainer[_common_pb2.FeatureScore]
    prediction_scores: _containers.RepeatedCompositeFieldContainer[_common_pb2.FeatureScore]
    integrity: IntegrityReport
    quality: QualityReport
    latency: LatencySummary
    breached: _containers.RepeatedScalarFieldContainer[_common_pb2.DriftKind]
    def __init__(self, window_id: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., rows: _Optional[int] = ..., reference: _Optional[_Union[_common_pb2.DatasetRef, _Mapping]] = ..., feature_scores: _Optional[_Iterable[_Union[_common_pb2.FeatureScore, _Mapping]]] = ..., prediction_scores: _Optional[_Iterable[_Union[_common_pb2.FeatureScore, _Mapping]]] = ..., integrity: _Optional[_Union[IntegrityReport, _Mapping]] = ..., quality: _Optional[_Union[QualityReport, _Mapping]] = ..., latency: _Optional[_Union[LatencySummary, _Mapping]] = ..., breached: _Optional[_Iterable[_Union[_common_pb2.DriftKind, str]]] = ...) -> None: ...

class Alert(_message.Message):
    __slots__ = ("alert_id", "model", "kind", "window_id", "scores", "segment", "message", "create_time", "event_id", "suppressed")
    ALERT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    WINDOW_ID_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    SUPPRESSED_FIELD_NUMBER: _ClassVar[int]
    alert_id: str
    model: _common_pb2.ModelRef
    kind: _common_pb2.DriftKind
    window_id: str
    scores: _containers.RepeatedCompositeFieldContainer[_common_pb2.FeatureScore]
    segment: _common_pb2.Segment
    message: str
    create_time: _timestamp_pb2.Timestamp
    event_id: str
    suppressed: bool
    def __init__(self, alert_id: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., kind: _Optional[_Union[_common_pb2.DriftKind, str]] = ..., window_id: _Optional[str] = ..., scores: _Optional[_Iterable[_Union[_common_pb2.FeatureScore, _Mapping]]] = ..., segment: _Optional[_Union[_common_pb2.Segment, _Mapping]] = ..., message: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., event_id: _Optional[str] = ..., suppressed: _Optional[bool] = ...) -> None: ...

class SegmentStats(_message.Message):
    __slots__ = ("segment", "rows", "labelled_rows", "metrics", "breached")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    LABELLED_ROWS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    BREACHED_FIELD_NUMBER: _ClassVar[int]
    segment: _common_pb2.Segment
    rows: int
    labelled_rows: int
    metrics: _containers.RepeatedCompositeFieldContainer[_common_pb2.Metric]
    breached: bool
    def __init__(self, segment: _Optional[_Union[_common_pb2.Segment, _Mapping]] = ..., rows: _Optional[int] = ..., labelled_rows: _Optional[int] = ..., metrics: _Optional[_Iterable[_Union[_common_pb2.Metric, _Mapping]]] = ..., breached: _Optional[bool] = ...) -> None: ...

class SegmentGap(_message.Message):
    __slots__ = ("field", "metric", "gap", "best", "worst", "breached")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    GAP_FIELD_NUMBER: _ClassVar[int]
    BEST_FIELD_NUMBER: _ClassVar[int]
    WORST_FIELD_NUMBER: _ClassVar[int]
    BREACHED_FIELD_NUMBER: _ClassVar[int]
    field: str
    metric: str
    gap: float
    best: _common_pb2.Segment
    worst: _common_pb2.Segment
    breached: bool
    def __init__(self, field: _Optional[str] = ..., metric: _Optional[str] = ..., gap: _Optional[float] = ..., best: _Optional[_Union[_common_pb2.Segment, _Mapping]] = ..., worst: _Optional[_Union[_common_pb2.Segment, _Mapping]] = ..., breached: _Optional[bool] = ...) -> None: ...

class GetDriftReportRequest(_message.Message):
    __slots__ = ("model_name", "model_version", "window_id", "window_count")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    WINDOW_ID_FIELD_NUMBER: _ClassVar[int]
    WINDOW_COUNT_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: int
    window_id: str
    window_count: int
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[int] = ..., window_id: _Optional[str] = ..., window_count: _Optional[int] = ...) -> None: ...

class GetDriftReportResponse(_message.Message):
    __slots__ = ("windows",)
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    windows: _containers.RepeatedCompositeFieldContainer[WindowReport]
    def __init__(self, windows: _Optional[_Iterable[_Union[WindowReport, _Mapping]]] = ...) -> None: ...

class ListAlertsRequest(_message.Message):
    __slots__ = ("model_name", "kind", "since", "page_size", "page_token")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    kind: _common_pb2.DriftKind
    since: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    def __init__(self, model_name: _Optional[str] = ..., kind: _Optional[_Union[_common_pb2.DriftKind, str]] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAlertsResponse(_message.Message):
    __slots__ = ("alerts", "next_page_token")
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    alerts: _containers.RepeatedCompositeFieldContainer[Alert]
    next_page_token: str
    def __init__(self, alerts: _Optional[_Iterable[_Union[Alert, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetSegmentReportRequest(_message.Message):
    __slots__ = ("model_name", "model_version", "window_id", "field")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    WINDOW_ID_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: int
    window_id: str
    field: str
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[int] = ..., window_id: _Optional[str] = ..., field: _Optional[str] = ...) -> None: ...

class GetSegmentReportResponse(_message.Message):
    __slots__ = ("model", "window_id", "segments", "gaps")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WINDOW_ID_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    GAPS_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    window_id: str
    segments: _containers.RepeatedCompositeFieldContainer[SegmentStats]
    gaps: _containers.RepeatedCompositeFieldContainer[SegmentGap]
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., window_id: _Optional[str] = ..., segments: _Optional[_Iterable[_Union[SegmentStats, _Mapping]]] = ..., gaps: _Optional[_Iterable[_Union[SegmentGap, _Mapping]]] = ...) -> None: ...

class SetMonitoringPolicyRequest(_message.Message):
    __slots__ = ("policy", "actor")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    policy: MonitoringPolicy
    actor: str
    def __init__(self, policy: _Optional[_Union[MonitoringPolicy, _Mapping]] = ..., actor: _Optional[str] = ...) -> None: ...

class SetMonitoringPolicyResponse(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: MonitoringPolicy
    def __init__(self, policy: _Optional[_Union[MonitoringPolicy, _Mapping]] = ...) -> None: ...

class GetMonitoringPolicyRequest(_message.Message):
    __slots__ = ("model_name",)
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    def __init__(self, model_name: _Optional[str] = ...) -> None: ...

class GetMonitoringPolicyResponse(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: MonitoringPolicy
    def __init__(self, policy: _Optional[_Union[MonitoringPolicy, _Mapping]] = ...) -> None: ...

class FeedbackLabel(_message.Message):
    __slots__ = ("request_id", "row_index", "label", "occurred_at", "features")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ROW_INDEX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    row_index: int
    label: _struct_pb2.Value
    occurred_at: _timestamp_pb2.Timestamp
    features: _struct_pb2.Struct
    def __init__(self, request_id: _Optional[str] = ..., row_index: _Optional[int] = ..., label: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., features: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class RecordFeedbackRequest(_message.Message):
    __slots__ = ("model_name", "labels")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    labels: _containers.RepeatedCompositeFieldContainer[FeedbackLabel]
    def __init__(self, model_name: _Optional[str] = ..., labels: _Optional[_Iterable[_Union[FeedbackLabel, _Mapping]]] = ...) -> None: ...

class RecordFeedbackResponse(_message.Message):
    __slots__ = ("accepted", "matched")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    matched: int
    def __init__(self, accepted: _Optional[int] = ..., matched: _Optional[int] = ...) -> None: ...

class WatchAlertsRequest(_message.Message):
    __slots__ = ("model_name", "kinds")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    kinds: _containers.RepeatedScalarFieldContainer[_common_pb2.DriftKind]
    def __init__(self, model_name: _Optional[str] = ..., kinds: _Optional[_Iterable[_Union[_common_pb2.DriftKind, str]]] = ...) -> None: ...

class WatchAlertsResponse(_message.Message):
    __slots__ = ("alert",)
    ALERT_FIELD_NUMBER: _ClassVar[int]
    alert: Alert
    def __init__(self, alert: _Optional[_Union[Alert, _Mapping]] = ...) -> None: ...
