"""Event reactions of the ingestion service."""

from __future__ import annotations

from flywheel.app import ServiceContext
from flywheel.bus import Handler, Topics
from flywheel.bus.consumer import acknowledge_only


def handlers(ctx: ServiceContext) -> dict[str, Handler]:
    return {
        Topics.INGEST_RECORDS: acknowledge_only("micro-batch into a dataset version (issue 4)"),
        Topics.FEEDBACK: acknowledge_only("append labelled rows to opted-in datasets (issue 6)"),
    }
