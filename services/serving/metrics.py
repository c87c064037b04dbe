"""Serving's instruments (OpenTelemetry; exported by Prometheus and/or OTLP per telemetry setup):
requests answered and their durations, what the bounds refused and what the background loops survived."""

from __future__ import annotations

from collections.abc import Iterator

from opentelemetry.metrics import CallbackOptions, Observation

from flywheel.telemetry import meter

_meter = meter("flywheel.serving")


class RequestCounts:
    """One model version's answered calls, and the attributes its measurements carry (built once).

    Counted with plain ints on the event loop, where every call is recorded, and read when metrics
    are collected: an OpenTelemetry counter.add costs ~5 us a call (attribute checks and hashing),
    ~2-4% of serving's CPU per request. Kept for the process's life, so a version unloaded and loaded
    again (a pin evicted, a swap back) keeps counting up."""

    __slots__ = ("error", "error_attrs", "ok", "ok_attrs")

    def __init__(self, model: str, version: int) -> None:
        self.ok = 0
        self.error = 0
        ok_attrs = {"model": model, "version": str(version), "outcome": "ok"}
        error_attrs = {**ok_attrs, "outcome": "error"}
        self.ok_attrs, self.error_attrs = ok_attrs, error_attrs


_request_counts: dict[tuple[str, int], RequestCounts] = {}


def request_counts(model: str, version: int) -> RequestCounts:
    """The counts of `model` `version` (the same object for every slot of that version)."""
    counts = _request_counts.get((model, version))
    if counts is None:
        counts = _request_counts.setdefault((model, version), RequestCounts(model, version))
    return counts


def _observe_requests(options: CallbackOptions) -> Iterator[Observation]:
    for counts in list(_request_counts.values()):  # a copy: versions are added on the event loop meanwhile
        yield Observation(counts.ok, counts.ok_attrs)
        yield Observation(counts.error, counts.error_attrs)


requests = _meter.create_observable_counter(
    "flywheel.serving.requests",
    callbacks=[_observe_requests],
    unit="{request}",
    description="Inference calls each model version answered (mirrored shadow calls included), by outcome",
)
request_duration = _meter.create_histogram(
    "flywheel.serving.request.duration",
    unit="s",
    description="Time from an inference call reaching its servicer to its answer (queue, run, encoding), by outcome",
    # From a one-row call on the event loop (tens of microseconds) to a run stopped at its time limit.
    explicit_bucket_boundaries_advisory=[
        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
    ],
)  # fmt: skip

load_failures = _meter.create_counter(
    "flywheel.serving.load_failures", unit="{load}", description="Model loads refused by the trial load or ONNX Runtime"
)
reconcile_failures = _meter.create_counter(
    "flywheel.serving.reconcile_failures",
    unit="{model}",
    description="Production versions the reconciler could not load",
)
queue_rejected = _meter.create_counter(
    "flywheel.serving.queue_rejected", unit="{request}", description="Requests refused because a model's queue was full"
)
infer_exhausted = _meter.create_counter(
    "flywheel.serving.infer_exhausted",
    unit="{request}",
    description="Requests refused for needing more than the inference memory cap or a response's size",
)
infer_timeouts = _meter.create_counter(
    "flywheel.serving.infer_timeouts",
    unit="{request}",
    description="Requests whose model run passed serving_infer_timeout_s and was stopped",
)
shadow_skipped = _meter.create_counter(
    "flywheel.serving.shadow_skipped", unit="{request}", description="Mirrors skipped: too many shadow calls in flight"
)
pin_evictions = _meter.create_counter(
    "flywheel.serving.pin_evictions", unit="{slot}", description="Pinned versions unloaded to make room for another"
)
background_failures = _meter.create_counter(
    "flywheel.serving.background_failures",
    unit="{failure}",
    description="Items a background loop (retirement, prediction log flush) failed on and skipped",
)
