"""The closed loop with every artifact on S3: `FLYWHEEL_ARTIFACT_ROOT=s3://bucket/prefix` against a
real S3-compatible server process (moto in server mode), credentials from the AWS chain's
environment variables. The core scenario of test_closed_loop.py passes unchanged, the bucket holds
the datasets, their profiles and the models, and nothing is written to a local artifact directory."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from aiobotocore.session import get_session

from tests.s3_server import AWS_ENV

from .stack import UpProcess

# The scenario itself, collected here too and run against this module's stack.
from .test_closed_loop import headers, infer, test_drift_retrains_promotes_and_serves_in_one_trace  # noqa: F401

BUCKET = "flywheel-e2e"
PREFIX = "team-a/artifacts"


@pytest.fixture(scope="module")
def stack(s3, tmp_path_factory):
    s3.create_bucket(BUCKET)
    home = tmp_path_factory.mktemp("closed_loop_s3") / "home"
    env = {**AWS_ENV, "FLYWHEEL_ARTIFACT_ROOT": f"s3://{BUCKET}/{PREFIX}", "FLYWHEEL_S3_ENDPOINT_URL": s3.endpoint}
    up = UpProcess(home, env=env)
    up.start()
    yield up
    up.kill_all()


async def _objects(endpoint: str) -> list[str]:
    async with get_session().create_client("s3", endpoint_url=endpoint) as client:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        return [o["Key"] async for page in pages for o in page.get("Contents", [])]


async def _addresses(dsn: str) -> tuple[set[str], set[str]]:
    """(dataset data and profile addresses, model artifact addresses) as the services recorded them."""
    conn = await asyncpg.connect(dsn)
    try:
        data = await conn.fetch("SELECT data_sha, profile_sha FROM ingestion.dataset_versions")
        models = await conn.fetch("SELECT checksum FROM registry.model_versions")
    finally:
        await conn.close()
    return {r[k] for r in data for k in ("data_sha", "profile_sha")}, {r["checksum"] for r in models}


def test_every_artifact_is_on_s3_and_none_on_local_disk(stack, s3):
    keys = asyncio.run(_objects(s3.endpoint))
    assert keys and all(k.startswith(f"{PREFIX}/") for k in keys), keys
    assert not any("/.uploads/" in k for k in keys), "no staging object is left behind"
    stored = {k.rsplit("/", 1)[1] for k in keys}

    datasets, models = asyncio.run(_addresses(stack.dsn))
    assert datasets and models, "the scenario ingested data and registered models"
    assert datasets <= stored, datasets - stored
    assert models <= stored, models - stored
    assert not (stack.home / "artifacts").exists(), "the local store was not used"
