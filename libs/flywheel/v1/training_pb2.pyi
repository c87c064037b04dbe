import datetime

from flywheel.v1 import common_pb2 as _common_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Estimator(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ESTIMATOR_UNSPECIFIED: _ClassVar[Estimator]
    ESTIMATOR_LOGISTIC_REGRESSION: _ClassVar[Estimator]
    ESTIMATOR_LINEAR_REGRESSION: _ClassVar[Estimator]
    ESTIMATOR_RANDOM_FOREST_CLASSIFIER: _ClassVar[Estimator]
    ESTIMATOR_RANDOM_FOREST_REGRESSOR: _ClassVar[Estimator]
    ESTIMATOR_GRADIENT_BOOSTING_CLASSIFIER: _ClassVar[Estimator]
    ESTIMATOR_GRADIENT_BOOSTING_REGRESSOR: _ClassVar[Estimator]
    ESTIMATOR_MLP_CLASSIFIER: _ClassVar[Estimator]
    ESTIMATOR_MLP_REGRESSOR: _ClassVar[Estimator]

class SearchStrategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEARCH_STRATEGY_UNSPECIFIED: _ClassVar[SearchStrategy]
    SEARCH_STRATEGY_GRID: _ClassVar[SearchStrategy]
    SEARCH_STRATEGY_RANDOM: _ClassVar[SearchStrategy]

class RunStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATUS_UNSPECIFIED: _ClassVar[RunStatus]
    RUN_STATUS_QUEUED: _ClassVar[RunStatus]
    RUN_STATUS_RUNNING: _ClassVar[RunStatus]
    RUN_STATUS_SUCCEEDED: _ClassVar[RunStatus]
    RUN_STATUS_FAILED: _ClassVar[RunStatus]
    RUN_STATUS_CANCELLED: _ClassVar[RunStatus]

class RunTrigger(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_TRIGGER_UNSPECIFIED: _ClassVar[RunTrigger]
    RUN_TRIGGER_MANUAL: _ClassVar[RunTrigger]
    RUN_TRIGGER_DATA_VERSIONED: _ClassVar[RunTrigger]
    RUN_TRIGGER_DRIFT_DETECTED: _ClassVar[RunTrigger]

class RunStage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STAGE_UNSPECIFIED: _ClassVar[RunStage]
    RUN_STAGE_QUEUED: _ClassVar[RunStage]
    RUN_STAGE_LOADING_DATA: _ClassVar[RunStage]
    RUN_STAGE_SEARCHING: _ClassVar[RunStage]
    RUN_STAGE_EVALUATING: _ClassVar[RunStage]
    RUN_STAGE_EXPORTING: _ClassVar[RunStage]
    RUN_STAGE_PARITY_CHECK: _ClassVar[RunStage]
    RUN_STAGE_REGISTERING: _ClassVar[RunStage]
    RUN_STAGE_DONE: _ClassVar[RunStage]
ESTIMATOR_UNSPECIFIED: Estimator
ESTIMATOR_LOGISTIC_REGRESSION: Estimator
ESTIMATOR_LINEAR_REGRESSION: Estimator
ESTIMATOR_RANDOM_FOREST_CLASSIFIER: Estimator
ESTIMATOR_RANDOM_FOREST_REGRESSOR: Estimator
ESTIMATOR_GRADIENT_BOOSTING_CLASSIFIER: Estimator
ESTIMATOR_GRADIENT_BOOSTING_REGRESSOR: Estimator
ESTIMATOR_MLP_CLASSIFIER: Estimator
ESTIMATOR_MLP_REGRESSOR: Estimator
SEARCH_STRATEGY_UNSPECIFIED: SearchStrategy
SEARCH_STRATEGY_GRID: SearchStrategy
SEARCH_STRATEGY_RANDOM: SearchStrategy
RUN_STATUS_UNSPECIFIED: RunStatus
RUN_STATUS_QUEUED: RunStatus
RUN_STATUS_RUNNING: RunStatus
RUN_STATUS_SUCCEEDED: RunStatus
RUN_STATUS_FAILED: RunStatus
RUN_STATUS_CANCELLED: RunStatus
RUN_TRIGGER_UNSPECIFIED: RunTrigger
RUN_TRIGGER_MANUAL: RunTrigger
RUN_TRIGGER_DATA_VERSIONED: RunTrigger
RUN_TRIGGER_DRIFT_DETECTED: RunTrigger
RUN_STAGE_UNSPECIFIED: RunStage
RUN_STAGE_QUEUED: RunStage
RUN_STAGE_LOADING_DATA: RunStage
RUN_STAGE_SEARCHING: RunStage
RUN_STAGE_EVALUATING: RunStage
RUN_STAGE_EXPORTING: RunStage
RUN_STAGE_PARITY_CHECK: RunStage
RUN_STAGE_REGISTERING: RunStage
RUN_STAGE_DONE: RunStage

class ParamDistribution(_message.Message):
    __slots__ = ("choices", "range")
    class Range(_message.Message):
        __slots__ = ("low", "high", "log", "integer")
        LOW_FIELD_NUMBER: _ClassVar[int]
        HIGH_FIELD_NUMBER: _ClassVar[int]
        LOG_FIELD_NUMBER: _ClassVar[int]
        INTEGER_FIELD_NUMBER: _ClassVar[int]
        low: float
        high: float
        log: bool
        integer: bool
        def __init__(self, low: _Optional[float] = ..., high: _Optional[float] = ..., log: _Optional[bool] = ..., integer: _Optional[bool] = ...) -> None: ...
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    choices: _struct_pb2.ListValue
    range: ParamDistribution.Range
    def __init__(self, choices: _Optional[_Union[_struct_pb2.ListValue, _Mapping]] = ..., range: _Optional[_Union[ParamDistribution.Range, _Mapping]] = ...) -> None: ...

class SearchSpace(_message.Message):
    __slots__ = ("strategy", "trial_budget", "seed", "params", "fixed_params", "cv_folds")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ParamDistribution
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ParamDistribution, _Mapping]] = ...) -> None: ...
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    TRIAL_BUDGET_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    FIXED_PARAMS_FIELD_NUMBER: _ClassVar[int]
    CV_FOLDS_FIELD_NUMBER: _ClassVar[int]
    strategy: SearchStrategy
    trial_budget: int
    seed: int
    params: _containers.MessageMap[str, ParamDistribution]
    fixed_params: _struct_pb2.Struct
    cv_folds: int
    def __init__(self, strategy: _Optional[_Union[SearchStrategy, str]] = ..., trial_budget: _Optional[int] = ..., seed: _Optional[int] = ..., params: _Optional[_Mapping[str, ParamDistribution]] = ..., fixed_params: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., cv_folds: _Optional[int] = ...) -> None: ...

class Triggers(_message.Message):
    __slots__ = ("on_data_versioned", "on_drift_detected", "cooldown", "wait_for_new_data")
    ON_DATA_VERSIONED_FIELD_NUMBER: _ClassVar[int]
    ON_DRIFT_DETECTED_FIELD_NUMBER: _ClassVar[int]
    COOLDOWN_FIELD_NUMBER: _ClassVar[int]
    WAIT_FOR_NEW_DATA_FIELD_NUMBER: _ClassVar[int]
    on_data_versioned: bool
    on_drift_detected: bool
    cooldown: _duration_pb2.Duration
    wait_for_new_data: bool
    def __init__(self, on_data_versioned: _Optional[bool] = ..., on_drift_detected: _Optional[bool] = ..., cooldown: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., wait_for_new_data: _Optional[bool] = ...) -> None: ...

class TrainingSpec(_message.Message):
    __slots__ = ("name", "version", "dataset", "model_name", "task", "estimator", "search_space", "metric", "direction", "triggers", "promotion_policy", "feature_fields", "parity_tolerance", "description", "tags", "create_time")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    ESTIMATOR_FIELD_NUMBER: _ClassVar[int]
    SEARCH_SPACE_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    TRIGGERS_FIELD_NUMBER: _ClassVar[int]
    PROMOTION_POLICY_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELDS_FIELD_NUMBER: _ClassVar[int]
    PARITY_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    dataset: str
    model_name: str
    task: _common_pb2.Task
    estimator: Estimator
    search_space: SearchSpace
    metric: str
    direction: _common_pb2.MetricDirection
    triggers: Triggers
    promotion_policy: _common_pb2.PromotionPolicy
    feature_fields: _containers.RepeatedScalarFieldContainer[str]
    parity_tolerance: float
    description: str
    tags: _containers.ScalarMap[str, str]
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., dataset: _Optional[str] = ..., model_name: _Optional[str] = ..., task: _Optional[_Union[_common_pb2.Task, str]] = ..., estimator: _Optional[_Union[Estimator, str]] = ..., search_space: _Optional[_Union[SearchSpace, _Mapping]] = ..., metric: _Optional[str] = ..., direction: _Optional[_Union[_common_pb2.MetricDirection, str]] = ..., triggers: _Optional[_Union[Triggers, _Mapping]] = ..., promotion_policy: _Optional[_Union[_common_pb2.PromotionPolicy, _Mapping]] = ..., feature_fields: _Optional[_Iterable[str]] = ..., parity_tolerance: _Optional[float] = ..., description: _Optional[str] = ..., tags: _Optional[_Mapping[str, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Trial(_message.Message):
    __slots__ = ("number", "params", "metrics", "duration", "status", "error")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    number: int
    params: _struct_pb2.Struct
    metrics: _containers.RepeatedCompositeFieldContainer[_common_pb2.Metric]
    duration: _duration_pb2.Duration
    status: RunStatus
    error: str
    def __init__(self, number: _Optional[int] = ..., params: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., metrics: _Optional[_Iterable[_Union[_common_pb2.Metric, _Mapping]]] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., status: _Optional[_Union[RunStatus, str]] = ..., error: _Optional[str] = ...) -> None: ...

class ConfusionMatrix(_message.Message):
    __slots__ = ("labels", "rows")
    class Row(_message.Message):
        __slots__ = ("counts",)
        COUNTS_FIELD_NUMBER: _ClassVar[int]
        counts: _containers.RepeatedScalarFieldContainer[int]
        def __init__(self, counts: _Optional[_Iterable[int]] = ...) -> None: ...
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedScalarFieldContainer[str]
    rows: _containers.RepeatedCompositeFieldContainer[ConfusionMatrix.Row]
    def __init__(self, labels: _Optional[_Iterable[str]] = ..., rows: _Optional[_Iterable[_Union[ConfusionMatrix.Row, _Mapping]]] = ...) -> None: ...

class Evaluation(_message.Message):
    __slots__ = ("split", "rows", "metrics", "confusion_matrix")
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    CONFUSION_MATRIX_FIELD_NUMBER: _ClassVar[int]
    split: _common_pb2.Split
    rows: int
    metrics: _containers.RepeatedCompositeFieldContainer[_common_pb2.Metric]
    confusion_matrix: ConfusionMatrix
    def __init__(self, split: _Optional[_Union[_common_pb2.Split, str]] = ..., rows: _Optional[int] = ..., metrics: _Optional[_Iterable[_Union[_common_pb2.Metric, _Mapping]]] = ..., confusion_matrix: _Optional[_Union[ConfusionMatrix, _Mapping]] = ...) -> None: ...

class ParityCheck(_message.Message):
    __slots__ = ("passed", "rows_checked", "max_abs_diff", "tolerance", "label_agreement", "reason")
    PASSED_FIELD_NUMBER: _ClassVar[int]
    ROWS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    LABEL_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    passed: bool
    rows_checked: int
    max_abs_diff: float
    tolerance: float
    label_agreement: float
    reason: str
    def __init__(self, passed: _Optional[bool] = ..., rows_checked: _Optional[int] = ..., max_abs_diff: _Optional[float] = ..., tolerance: _Optional[float] = ..., label_agreement: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class Run(_message.Message):
    __slots__ = ("run_id", "spec_name", "spec_version", "dataset", "trigger", "trigger_event_id", "status", "stage", "error", "seed", "code_version", "create_time", "start_time", "end_time", "trials", "best_trial", "best_params", "evaluation", "signature", "parity", "registered_model", "attempt")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CODE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    BEST_TRIAL_FIELD_NUMBER: _ClassVar[int]
    BEST_PARAMS_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    PARITY_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_MODEL_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    spec_name: str
    spec_version: int
    dataset: _common_pb2.DatasetRef
    trigger: RunTrigger
    trigger_event_id: str
    status: RunStatus
    stage: RunStage
    error: str
    seed: int
    code_version: str
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    trials: _containers.RepeatedCompositeFieldContainer[Trial]
    best_trial: int
    best_params: _struct_pb2.Struct
    evaluation: Evaluation
    signature: _common_pb2.ModelSignature
    parity: ParityCheck
    registered_model: _common_pb2.ModelRef
    attempt: int
    def __init__(self, run_id: _Optional[str] = ..., spec_name: _Optional[str] = ..., spec_version: _Optional[int] = ..., dataset: _Optional[_Union[_common_pb2.DatasetRef, _Mapping]] = ..., trigger: _Optional[_Union[RunTrigger, str]] = ..., trigger_event_id: _Optional[str] = ..., status: _Optional[_Union[RunStatus, str]] = ..., stage: _Optional[_Union[RunStage, str]] = ..., error: _Optional[str] = ..., seed: _Optional[int] = ..., code_version: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., trials: _Optional[_Iterable[_Union[Trial, _Mapping]]] = ..., best_trial: _Optional[int] = ..., best_params: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., evaluation: _Optional[_Union[Evaluation, _Mapping]] = ..., signature: _Optional[_Union[_common_pb2.ModelSignature, _Mapping]] = ..., parity: _Optional[_Union[ParityCheck, _Mapping]] = ..., registered_model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., attempt: _Optional[int] = ...) -> None: ...

class RunProgress(_message.Message):
    __slots__ = ("run_id", "status", "stage", "trials_completed", "trials_total", "last_trial", "best_score", "message", "time")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    TRIALS_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    TRIALS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    LAST_TRIAL_FIELD_NUMBER: _ClassVar[int]
    BEST_SCORE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    status: RunStatus
    stage: RunStage
    trials_completed: int
    trials_total: int
    last_trial: Trial
    best_score: float
    message: str
    time: _timestamp_pb2.Timestamp
    def __init__(self, run_id: _Optional[str] = ..., status: _Optional[_Union[RunStatus, str]] = ..., stage: _Optional[_Union[RunStage, str]] = ..., trials_completed: _Optional[int] = ..., trials_total: _Optional[int] = ..., last_trial: _Optional[_Union[Trial, _Mapping]] = ..., best_score: _Optional[float] = ..., message: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateSpecRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: TrainingSpec
    def __init__(self, spec: _Optional[_Union[TrainingSpec, _Mapping]] = ...) -> None: ...

class CreateSpecResponse(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: TrainingSpec
    def __init__(self, spec: _Optional[_Union[TrainingSpec, _Mapping]] = ...) -> None: ...

class GetSpecRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class GetSpecResponse(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: TrainingSpec
    def __init__(self, spec: _Optional[_Union[TrainingSpec, _Mapping]] = ...) -> None: ...

class ListSpecsRequest(_message.Message):
    __slots__ = ("dataset", "model_name", "all_versions", "page_size", "page_token")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    ALL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    model_name: str
    all_versions: bool
    page_size: int
    page_token: str
    def __init__(self, dataset: _Optional[str] = ..., model_name: _Optional[str] = ..., all_versions: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSpecsResponse(_message.Message):
    __slots__ = ("specs", "next_page_token")
    SPECS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    specs: _containers.RepeatedCompositeFieldContainer[TrainingSpec]
    next_page_token: str
    def __init__(self, specs: _Optional[_Iterable[_Union[TrainingSpec, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class StartRunRequest(_message.Message):
    __slots__ = ("spec_name", "spec_version", "dataset_version", "seed", "request_id")
    SPEC_NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    spec_name: str
    spec_version: int
    dataset_version: int
    seed: int
    request_id: str
    def __init__(self, spec_name: _Optional[str] = ..., spec_version: _Optional[int] = ..., dataset_version: _Optional[int] = ..., seed: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class StartRunResponse(_message.Message):
    __slots__ = ("run", "created")
    RUN_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    run: Run
    created: bool
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class GetRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: Run
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("spec_name", "model_name", "dataset", "status", "page_size", "page_token")
    SPEC_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    spec_name: str
    model_name: str
    dataset: str
    status: RunStatus
    page_size: int
    page_token: str
    def __init__(self, spec_name: _Optional[str] = ..., model_name: _Optional[str] = ..., dataset: _Optional[str] = ..., status: _Optional[_Union[RunStatus, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs", "next_page_token")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[Run]
    next_page_token: str
    def __init__(self, runs: _Optional[_Iterable[_Union[Run, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CompareRunsRequest(_message.Message):
    __slots__ = ("run_ids", "metrics")
    RUN_IDS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    run_ids: _containers.RepeatedScalarFieldContainer[str]
    metrics: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, run_ids: _Optional[_Iterable[str]] = ..., metrics: _Optional[_Iterable[str]] = ...) -> None: ...

class ComparisonRow(_message.Message):
    __slots__ = ("name", "values", "differs", "best_index")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    DIFFERS_FIELD_NUMBER: _ClassVar[int]
    BEST_INDEX_FIELD_NUMBER: _ClassVar[int]
    name: str
    values: _containers.RepeatedCompositeFieldContainer[_struct_pb2.Value]
    differs: bool
    best_index: int
    def __init__(self, name: _Optional[str] = ..., values: _Optional[_Iterable[_Union[_struct_pb2.Value, _Mapping]]] = ..., differs: _Optional[bool] = ..., best_index: _Optional[int] = ...) -> None: ...

class CompareRunsResponse(_message.Message):
    __slots__ = ("runs", "metrics", "params")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[Run]
    metrics: _containers.RepeatedCompositeFieldContainer[ComparisonRow]
    params: _containers.RepeatedCompositeFieldContainer[ComparisonRow]
    def __init__(self, runs: _Optional[_Iterable[_Union[Run, _Mapping]]] = ..., metrics: _Optional[_Iterable[_Union[ComparisonRow, _Mapping]]] = ..., params: _Optional[_Iterable[_Union[ComparisonRow, _Mapping]]] = ...) -> None: ...

class WatchRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class WatchRunResponse(_message.Message):
    __slots__ = ("progress",)
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    progress: RunProgress
    def __init__(self, progress: _Optional[_Union[RunProgress, _Mapping]] = ...) -> None: ...

class TriggerDecision(_message.Message):
    __slots__ = ("id", "time", "spec_name", "model_name", "trigger", "event_id", "decision", "reason", "run_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    SPEC_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    time: _timestamp_pb2.Timestamp
    spec_name: str
    model_name: str
    trigger: RunTrigger
    event_id: str
    decision: str
    reason: str
    run_id: str
    def __init__(self, id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., spec_name: _Optional[str] = ..., model_name: _Optional[str] = ..., trigger: _Optional[_Union[RunTrigger, str]] = ..., event_id: _Optional[str] = ..., decision: _Optional[str] = ..., reason: _Optional[str] = ..., run_id: _Optional[str] = ...) -> None: ...

class ListTriggerDecisionsRequest(_message.Message):
    __slots__ = ("spec_name", "model_name", "page_size", "page_token")
    SPEC_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    spec_name: str
    model_name: str
    page_size: int
    page_token: str
    def __init__(self, spec_name: _Optional[str] = ..., model_name: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTriggerDecisionsResponse(_message.Message):
    __slots__ = ("decisions", "next_page_token")
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    decisions: _containers.RepeatedCompositeFieldContainer[TriggerDecision]
    next_page_token: str
    def __init__(self, decisions: _Optional[_Iterable[_Union[TriggerDecision, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
