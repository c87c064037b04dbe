"""`flywheel up` brings up PostgreSQL, the broker and all five services as processes; every
service answers the standard gRPC health protocol with SERVING (no credentials needed) and lists
its API through reflection to the admin whose token `up` left in $FLYWHEEL_HOME/credentials
(readable by its owner only); stopping leaves nothing behind."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from flywheel.config import SERVICES

from .stack import UpProcess

EXPECTED_API = {
    "ingestion": "flywheel.v1.IngestionService",
    "training": "flywheel.v1.TrainingService",
    "registry": "flywheel.v1.RegistryService",
    "serving": "inference.GRPCInferenceService",
    "monitoring": "flywheel.v1.MonitoringService",
}


@pytest.fixture
def stack(tmp_path):
    up = UpProcess(tmp_path / "home")
    up.start()
    yield up
    up.kill_all()


def _health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def _reflected_services(stack: UpProcess, service: str) -> set[str]:
    with stack.channel(service) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        return {s.name for r in responses for s in r.list_services_response.service}


def test_up_serves_all_five_and_down_leaves_nothing(stack):
    assert (stack.home / "credentials").stat().st_mode & 0o777 == 0o600
    for name in SERVICES:
        assert _health(stack.address(name)) == health_pb2.HealthCheckResponse.SERVING, name
        services = _reflected_services(stack, name)
        assert EXPECTED_API[name] in services and "grpc.health.v1.Health" in services, (name, services)

    status = stack.cli("status")
    assert status.returncode == 0, status.stdout + status.stderr
    for component in ("postgres", "kafka", *SERVICES):
        assert component in status.stdout

    running = stack.descendants()
    assert len(running) >= 7, [p.info["cmdline"] for p in running]  # postgres, broker, five services

    down = stack.cli("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert stack.proc.wait(30) == 0
    assert stack.descendants() == [], "processes left behind"
    assert stack.cli("status").returncode == 1  # nothing is running now


def test_ctrl_c_stops_everything_and_a_crashed_service_is_restarted(stack):
    import os
    import signal
    import time

    from flywheel.stack.up import read_state

    state = read_state(stack.home)
    victim = state["services"]["registry"]["pid"]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = read_state(stack.home)
        if state["services"]["registry"]["pid"] != victim:
            try:
                if _health(stack.address("registry")) == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
        time.sleep(0.5)
    else:
        raise AssertionError("the supervisor did not bring the registry back")

    assert stack.interrupt() == 0
    assert stack.descendants() == [], "processes left behind"
