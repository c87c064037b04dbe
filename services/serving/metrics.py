"""Serving's instruments (OpenTelemetry; exported by Prometheus and/or OTLP per telemetry setup):
what the bounds refused and what the background loops survived."""

from __future__ import annotations

from flywheel.telemetry import meter

_meter = meter("flywheel.serving")

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
