"""What monitoring accepts from callers and producers: every number it stores or computes with,
and every string or list it keeps or puts in an event, is checked here (README "Limits").

Plain Python. A refusal is InvalidArgument naming the field and the rule, never the value.
"""

from __future__ import annotations

import math

from google.protobuf.duration_pb2 import Duration
from google.protobuf.struct_pb2 import Value
from google.protobuf.timestamp_pb2 import Timestamp

from flywheel.errors import InvalidArgument
from flywheel.v1 import common_pb2, monitoring_pb2

M = monitoring_pb2

MAX_NAME_CHARS = 256  # model names, request ids, window ids, feature, output and segment field names
MAX_METRIC_CHARS = 64
MAX_LABEL_CHARS = 1_024  # one text label (feedback)
MAX_TEXT_CHARS = 65_536  # one text value in logged inputs or outputs
MAX_WINDOW_ROWS = 100_000  # window size_rows/min_rows, quality min_labelled_rows, segment min_rows
MAX_DURATION_S = 366 * 86_400  # window duration, alert cooldown
MAX_CONSECUTIVE = 1_000
MAX_THRESHOLD_FEATURES = 10_000  # entries in feature_thresholds
MAX_SEGMENTS = 32
MAX_BUCKET_EDGES = 1_000
MAX_SCORE = 1e6  # psi, max_drop, max_gap, |min_value|, |bucket edge|
MAX_WINDOW_COUNT = 500  # GetDriftReport.window_count (as paging.MAX_PAGE_SIZE)
MAX_COMPARISON_ROWS = 100_000  # GetShadowComparison.max_rows (comparison.MAX_ROWS)
MAX_FEEDBACK_LABELS = 10_000  # labels in one RecordFeedback call
MAX_WATCH_KINDS = 16
_TIMESTAMP_MIN_S, _TIMESTAMP_MAX_S = -62_135_596_800, 253_402_300_799  # 0001-01-01 .. 9999-12-31 UTC
_DRIFT_KINDS = frozenset(common_pb2.DriftKind.values())


def text(value: str, field: str, max_chars: int = MAX_NAME_CHARS, *, required: bool = False) -> None:
    """A string that is stored or sent on: bounded, and free of NUL (PostgreSQL text cannot hold it)."""
    if required and not value:
        raise InvalidArgument("required", field=field)
    if len(value) > max_chars:
        raise InvalidArgument(f"at most {max_chars} characters", field=field)
    if "\x00" in value:
        raise InvalidArgument("must not contain NUL characters", field=field)


def number(value: float, field: str, lo: float, hi: float) -> None:
    if not (math.isfinite(value) and lo <= value <= hi):
        raise InvalidArgument(f"must be a finite number in [{lo:g}, {hi:g}]", field=field)


def count(value: int, field: str, hi: int, lo: int = 0) -> None:
    if not lo <= value <= hi:
        raise InvalidArgument(f"must be in [{lo}, {hi}]", field=field)


def duration(d: Duration, field: str, max_s: int = MAX_DURATION_S) -> None:
    if d.seconds < 0 or d.nanos < 0 or d.nanos >= 1_000_000_000 or d.seconds > max_s:
        raise InvalidArgument(f"must be between 0 and {max_s} seconds", field=field)


def timestamp(ts: Timestamp, field: str) -> None:
    if not (_TIMESTAMP_MIN_S <= ts.seconds <= _TIMESTAMP_MAX_S and 0 <= ts.nanos < 1_000_000_000):
        raise InvalidArgument("not a valid timestamp", field=field)


def drift_kind(kind: int, field: str) -> None:
    if kind not in _DRIFT_KINDS:
        raise InvalidArgument("not a DriftKind", field=field)


def label(value: Value, field: str) -> None:
    """A ground-truth label: a finite number, a bool or a short text (what a class or target can be)."""
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        if not math.isfinite(value.number_value):
            raise InvalidArgument("a number label must be finite", field=field)
    elif kind == "string_value":
        text(value.string_value, field, MAX_LABEL_CHARS, required=True)
    elif kind != "bool_value":
        raise InvalidArgument("must be a number, a bool or a text", field=field)


def feedback(request_id: str, row_index: int, value: Value, where: str) -> None:
    """One label as RecordFeedback or flywheel.feedback carries it; `where` prefixes the field names."""
    text(request_id, f"{where}request_id", required=True)
    count(row_index, f"{where}row_index", 2**31 - 1)
    label(value, f"{where}label")


def drift_report_request(request: M.GetDriftReportRequest) -> None:
    text(request.model_name, "model_name", required=True)
    count(request.model_version, "model_version", 2**31 - 1)  # versions are int4 in PostgreSQL
    text(request.window_id, "window_id")
    count(request.window_count, "window_count", MAX_WINDOW_COUNT)


def alerts_request(request: M.ListAlertsRequest) -> None:
    text(request.model_name, "model_name")
    drift_kind(request.kind, "kind")
    if request.HasField("since"):
        timestamp(request.since, "since")
    text(request.page_token, "page_token")


def segment_report_request(request: M.GetSegmentReportRequest) -> None:
    text(request.model_name, "model_name", required=True)
    count(request.model_version, "model_version", 2**31 - 1)  # versions are int4 in PostgreSQL
    text(request.window_id, "window_id")
    text(request.field, "field")


def shadow_comparison_request(request: M.GetShadowComparisonRequest) -> None:
    text(request.model_name, "model_name", required=True)
    count(request.challenger_version, "challenger_version", 2**63 - 1)
    count(request.max_rows, "max_rows", MAX_COMPARISON_ROWS)


def canary_report_request(request: M.GetCanaryReportRequest) -> None:
    text(request.model_name, "model_name", required=True)
    count(request.canary_version, "canary_version", 2**63 - 1)
    if not request.canary_version:
        raise InvalidArgument("name the canary's version", field="canary_version")
    if not request.HasField("since"):
        raise InvalidArgument("required", field="since")
    timestamp(request.since, "since")
    if request.HasField("labels_since"):
        timestamp(request.labels_since, "labels_since")


def feedback_request(request: M.RecordFeedbackRequest) -> None:
    text(request.model_name, "model_name", required=True)
    if len(request.labels) > MAX_FEEDBACK_LABELS:
        raise InvalidArgument(f"at most {MAX_FEEDBACK_LABELS} labels per call", field="labels")
    for i, item in enumerate(request.labels):
        feedback(item.request_id, item.row_index, item.label, f"labels[{i}].")


def watch_request(request: M.WatchAlertsRequest) -> None:
    text(request.model_name, "model_name")
    if len(request.kinds) > MAX_WATCH_KINDS:
        raise InvalidArgument(f"at most {MAX_WATCH_KINDS} kinds", field="kinds")
    for i, kind in enumerate(request.kinds):
        drift_kind(kind, f"kinds[{i}]")
