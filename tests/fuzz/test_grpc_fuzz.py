"""Property-based fuzzing of every gRPC method of every service (read from the generated
descriptors, so methods added later are fuzzed too): generated requests, as the admin, against the
real stack. Every call must end with a status code, OK or an error, within its deadline; never
UNKNOWN or INTERNAL (an unhandled exception in the service); no service may crash or restart;
and good calls still answer afterwards.

Budget: budget.REQUESTS_PER_METHOD generated requests per method (FLYWHEEL_FUZZ_EXAMPLES / 20
under `make fuzz`)."""

from __future__ import annotations

import itertools
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import pytest
from google.protobuf.message import Message
from grpc_reflection.v1alpha import reflection_pb2
from hypothesis import given, seed

from flywheel.config import SERVICES
from tests.e2e.stack import UpProcess
from tests.unit.proto_methods import REFLECTION, Method, all_methods

from . import budget
from .protos import MessageStrategies
from .requests import requests_for, shape
from .survival import Checkpoint

METHODS = all_methods()
UNARY_DEADLINE_S = 15.0
# Server streams that legitimately stay open while there is nothing to send: Health/Watch (until
# the status changes), TrainingService/WatchRun (until the run ends), MonitoringService/WatchAlerts
# (until an alert). For them, DEADLINE_EXCEEDED after WATCH_DEADLINE_S is an answer.
WATCH_DEADLINE_S = 1.0
MAX_RESPONSES = 4  # responses read from a stream before the call is cancelled (it answered)
MAX_HANGS = 3  # deadline overruns after which a method is not called again in this run
FORBIDDEN = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
pytestmark = pytest.mark.timeout(120 + budget.REQUESTS_PER_METHOD * 3)


def _may_stay_open(method: Method) -> bool:
    return method.server_streaming and not method.client_streaming and method.path.rsplit("/", 1)[1].startswith("Watch")


@pytest.fixture(scope="module")
def channels(stack: UpProcess) -> Iterator[dict[str, grpc.Channel]]:
    opened = {name: stack.channel(name) for name in SERVICES}
    yield opened
    for ch in opened.values():
        ch.close()


@pytest.fixture(scope="module")
def served(channels: dict[str, grpc.Channel], started: Checkpoint) -> dict[str, list[str]]:
    """gRPC service full name -> the processes that serve it, as each process's reflection says."""
    found: dict[str, list[str]] = {}
    for process, channel in channels.items():
        call = channel.stream_stream(
            f"/{REFLECTION}/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        # wait_for_ready: a process that crashed and is being restarted is listed once it is back.
        ask = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        for response in call(ask, timeout=60, wait_for_ready=True):
            for service in response.list_services_response.service:
                found.setdefault(service.name, []).append(process)
    return found


@dataclass
class Calls:
    method: Method
    codes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    hangs: int = 0

    def record(self, process: str, requests: list[Message], code: grpc.StatusCode, details: str) -> None:
        self.codes[code.name] += 1
        if code in FORBIDDEN:
            self.failures.append(f"{code.name} from {process}: {details[:300]!r}\n    request: {_show(requests)}")
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED and not _may_stay_open(self.method):
            self.hangs += 1
            self.failures.append(f"no answer within the deadline from {process}\n    request: {_show(requests)}")


def _show(requests: list[Message], limit: int = 700) -> str:
    text = " | ".join(f"{type(r).__name__}({r!s})".replace("\n", " ") for r in requests) or "(no messages)"
    size = sum(r.ByteSize() for r in requests)
    return f"[{size} bytes] " + (text if len(text) <= limit else text[:limit] + "...")


def _call(channel: grpc.Channel, method: Method, requests: list[Message]) -> tuple[grpc.StatusCode, str]:
    """Sends one generated call; its status code and details (OK when a stream answered enough)."""
    kwargs = {"request_serializer": lambda m: m.SerializeToString(), "response_deserializer": None}
    deadline = WATCH_DEADLINE_S if _may_stay_open(method) else UNARY_DEADLINE_S
    try:
        if not method.client_streaming and not method.server_streaming:
            channel.unary_unary(method.path, **kwargs)(requests[0], timeout=deadline)
            return grpc.StatusCode.OK, ""
        if method.client_streaming and not method.server_streaming:
            channel.stream_unary(method.path, **kwargs)(iter(requests), timeout=deadline)
            return grpc.StatusCode.OK, ""
        if method.server_streaming and not method.client_streaming:
            responses = channel.unary_stream(method.path, **kwargs)(requests[0], timeout=deadline)
        else:
            responses = channel.stream_stream(method.path, **kwargs)(iter(requests), timeout=deadline)
        enough = 1 if _may_stay_open(method) else MAX_RESPONSES  # a watch has answered with its first message
        for n, _ in enumerate(responses, 1):
            if n >= enough:
                responses.cancel()  # it answered; a stream need not be read to its end
                break
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""


@pytest.mark.parametrize("path", sorted(METHODS))
def test_every_call_ends_with_a_status_code(path, stack, world, served, channels):
    method = METHODS[path]
    processes = served.get(method.service)
    assert processes, f"no process serves {method.service} (reflection lists {sorted(served)})"
    checkpoint = Checkpoint.now(stack)
    messages = MessageStrategies(world.names, world.ints)
    calls = Calls(method)
    rotation = itertools.count()
    shape(method)  # the request type resolves

    @budget.fuzz_settings(budget.REQUESTS_PER_METHOD)
    @given(requests=requests_for(method, world, messages))
    def call(requests: list[Message]) -> None:
        if calls.hangs >= MAX_HANGS:
            return
        process = processes[next(rotation) % len(processes)]
        calls.record(process, requests, *_call(channels[process], method, requests))

    if budget.SEED is not None:
        call = seed(budget.SEED ^ zlib.crc32(path.encode()))(call)
    call()

    print(f"\n{path}: {dict(calls.codes)}")
    problems = checkpoint.problems()
    assert not calls.failures and not problems, (
        f"{path} ({budget.reproduce_hint()}):\n"
        + "\n".join(calls.failures[:5])
        + (f"\n... and {len(calls.failures) - 5} more" if len(calls.failures) > 5 else "")
        + ("\nservices crashed or restarted:\n" + "\n".join(problems[:5]) if problems else "")
    )
