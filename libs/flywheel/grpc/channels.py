"""The one place channels to Flywheel's services are made: address and options from settings, an
aio channel for services and a blocking one for the CLI. Credentials and TLS attach here."""

from __future__ import annotations

import grpc

from flywheel.config import Settings


def channel_options(settings: Settings) -> list[tuple[str, int]]:
    size = settings.grpc_max_message_mb * 1024 * 1024
    return [("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)]


def aio_channel(settings: Settings, service: str) -> grpc.aio.Channel:
    """A channel to `service` ("registry", "serving", ...) for asyncio code."""
    return grpc.aio.insecure_channel(settings.addr_for(service), options=channel_options(settings))


def sync_channel(settings: Settings, service: str) -> grpc.Channel:
    """A blocking channel to `service`, for the CLI."""
    return grpc.insecure_channel(settings.addr_for(service), options=channel_options(settings))
