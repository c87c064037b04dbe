"""Flywheel shared library: config, logging, telemetry, db, bus, artifacts, grpc, stack, cli."""

__version__ = "0.1.0"
