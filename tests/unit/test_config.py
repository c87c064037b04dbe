from __future__ import annotations

from pathlib import Path

from flywheel.config import SERVICES, Settings


def test_environment_overrides_defaults(monkeypatch):
    monkeypatch.setenv("FLYWHEEL_KAFKA_BOOTSTRAP", "kafka:9092")
    monkeypatch.setenv("FLYWHEEL_KAFKA_ENABLE_IDEMPOTENCE", "true")
    monkeypatch.setenv("FLYWHEEL_REGISTRY_PORT", "6000")
    monkeypatch.setenv("FLYWHEEL_SERVING_ADDR", "serving.svc:50054")
    monkeypatch.setenv("FLYWHEEL_HOME", "/srv/flywheel")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
    s = Settings()
    assert s.kafka_bootstrap == "kafka:9092" and s.kafka_enable_idempotence is True
    assert s.port_for("registry") == 6000 and s.addr_for("registry") == "127.0.0.1:6000"
    assert s.addr_for("serving") == "serving.svc:50054"
    assert s.artifacts_dir == Path("/srv/flywheel/artifacts")
    assert s.otel_exporter_otlp_endpoint == "http://collector:4317"


def test_defaults_give_each_service_its_own_port(monkeypatch):
    for name in SERVICES:
        monkeypatch.delenv(f"FLYWHEEL_{name.upper()}_PORT", raising=False)
    ports = [Settings().port_for(n) for n in SERVICES]
    assert len(set(ports)) == 5
    assert Settings().kafka_enable_idempotence is False  # the embedded broker has no idempotent producer
