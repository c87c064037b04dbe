"""Every gRPC method Flywheel serves, read from the generated descriptors (not from the role table,
which is what the tests hold against this list)."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass

from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from tritonclient.grpc import service_pb2 as oip

import flywheel.v1

# The name newer gRPC releases serve reflection under; grpcio-reflection here has only v1alpha, but
# grpcurl and other clients ask for it, so the table keeps an entry ready for it.
REFLECTION_V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
REFLECTION = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"].full_name


@dataclass(frozen=True)
class Method:
    path: str  # "/pkg.Service/Method"
    service: str
    client_streaming: bool
    server_streaming: bool


def _files() -> list[FileDescriptor]:
    files = []
    for info in pkgutil.iter_modules(flywheel.v1.__path__):
        if info.name.endswith("_pb2"):
            files.append(importlib.import_module(f"flywheel.v1.{info.name}").DESCRIPTOR)
    return [*files, oip.DESCRIPTOR, reflection_pb2.DESCRIPTOR, health_pb2.DESCRIPTOR]


def _methods(service: ServiceDescriptor) -> list[Method]:
    return [
        Method(f"/{service.full_name}/{m.name}", service.full_name, m.client_streaming, m.server_streaming)
        for m in service.methods
    ]


def all_methods() -> dict[str, Method]:
    """Every method of every service in Flywheel's protos, the inference protocol, reflection and health."""
    found: dict[str, Method] = {}
    for file in _files():
        for service in file.services_by_name.values():
            for method in _methods(service):
                found[method.path] = method
    return found


def services() -> set[str]:
    return {m.service for m in all_methods().values()}
