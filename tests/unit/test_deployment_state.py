"""The rules of the stored traffic policy (services/serving/traffic_rules.py) and of a replica's
standing against it, and how the model manager applies a stored policy by its generation."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression

from flywheel import clients
from flywheel.config import Settings
from flywheel.errors import FailedPrecondition, InvalidArgument, NotFound
from flywheel.v1 import common_pb2, registry_pb2, serving_pb2
from services.serving import traffic_rules as rules
from services.serving.models import ModelManager
from services.serving.traffic_rules import AppliedView, StoredPolicy, TrafficPolicy

S = serving_pb2
CANARY_8 = TrafficPolicy(S.TRAFFIC_MODE_CANARY, 8, 10.0)
SHADOW_8 = TrafficPolicy(S.TRAFFIC_MODE_SHADOW, 8, 100.0)
STALE_AFTER = rules.stale_after_s(5.0)


def test_a_requested_split_is_checked_field_by_field() -> None:
    assert rules.requested(S.TRAFFIC_MODE_CANARY, 8, 10) == CANARY_8
    for mode, version, percent, field in [
        (S.TRAFFIC_MODE_PRODUCTION_ONLY, 8, 10, "mode"),
        (S.TRAFFIC_MODE_CANARY, 8, 0, "percent"),
        (S.TRAFFIC_MODE_CANARY, 8, 100.5, "percent"),
        (S.TRAFFIC_MODE_CANARY, 8, float("nan"), "percent"),
        (S.TRAFFIC_MODE_SHADOW, 8, float("inf"), "percent"),
        (S.TRAFFIC_MODE_CANARY, 0, 10, "challenger_version"),
        (S.TRAFFIC_MODE_CANARY, 2**31, 10, "challenger_version"),
    ]:
        with pytest.raises(InvalidArgument) as info:
            rules.requested(mode, version, percent)
        assert info.value.field == field
    assert rules.check_reason("x" * rules.MAX_REASON_CHARS) == "x" * rules.MAX_REASON_CHARS
    with pytest.raises(InvalidArgument):
        rules.check_reason("x" * (rules.MAX_REASON_CHARS + 1))
    with pytest.raises(InvalidArgument):
        rules.check_actor("a" * (rules.MAX_ACTOR_CHARS + 1))


def test_policy_roles_and_words() -> None:
    assert CANARY_8.role == common_pb2.SERVING_ROLE_CANARY and SHADOW_8.role == common_pb2.SERVING_ROLE_SHADOW
    assert rules.PRODUCTION_ONLY.role == common_pb2.SERVING_ROLE_UNSPECIFIED and not rules.PRODUCTION_ONLY.split
    assert CANARY_8.describe() == "canary v8 10%" and SHADOW_8.describe() == "shadow v8 100%"
    assert rules.PRODUCTION_ONLY.describe() == "production only"


def test_a_promoted_challenger_ends_the_split_and_nothing_else_does() -> None:
    stored = StoredPolicy("m", CANARY_8, generation=3)
    assert rules.effective(CANARY_8, 7) == CANARY_8
    assert rules.effective(CANARY_8, 8) == rules.PRODUCTION_ONLY  # applied at once, before the store says so
    assert rules.effective(CANARY_8, 0) == CANARY_8  # nothing in production yet: nothing to compare
    assert rules.promoted_end(stored, 8) and rules.promoted_end(StoredPolicy("m", SHADOW_8, 1), 8)
    assert not rules.promoted_end(stored, 7) and not rules.promoted_end(stored, 0)
    assert not rules.promoted_end(StoredPolicy("m", rules.PRODUCTION_ONLY, 4), 8)
    assert "v8" in rules.promotion_reason(8)


def test_replica_in_sync_disagreeing_or_stale() -> None:
    stored = StoredPolicy("m", CANARY_8, generation=3)
    fresh = 1.0
    in_sync = AppliedView("m", 3, CANARY_8, production_version=7)
    assert rules.replica_state(in_sync, stored, fresh, STALE_AFTER) == (S.REPLICA_STATE_IN_SYNC, "applies generation 3")

    behind = AppliedView("m", 2, rules.PRODUCTION_ONLY, production_version=7)
    state, detail = rules.replica_state(behind, stored, fresh, STALE_AFTER)
    assert state == S.REPLICA_STATE_DISAGREES
    assert detail == "applies generation 2 (production only), stored is 3 (canary v8 10%)"

    failed = AppliedView("m", 2, rules.PRODUCTION_ONLY, 7, error="challenger v8: ONNX Runtime cannot load the model")
    state, detail = rules.replica_state(failed, stored, fresh, STALE_AFTER)
    assert state == S.REPLICA_STATE_DISAGREES and detail.startswith("cannot apply generation 3: challenger v8")

    state, detail = rules.replica_state(None, stored, fresh, STALE_AFTER)
    assert state == S.REPLICA_STATE_DISAGREES and "no deployment" in detail

    # Whatever it last said, a replica silent past the bound is stale (stopped, or cut off).
    state, detail = rules.replica_state(in_sync, stored, STALE_AFTER + 1, STALE_AFTER)
    assert state == S.REPLICA_STATE_STALE and "no heartbeat for 16 s" in detail

    # The same generation but other traffic is never expected; it is shown, not hidden.
    odd = AppliedView("m", 3, SHADOW_8, production_version=7)
    assert rules.replica_state(odd, stored, fresh, STALE_AFTER)[0] == S.REPLICA_STATE_DISAGREES

    # A replica that swapped to the promoted challenger applies production only, and is in sync.
    promoted = AppliedView("m", 3, rules.PRODUCTION_ONLY, production_version=8)
    assert rules.replica_state(promoted, stored, fresh, STALE_AFTER)[0] == S.REPLICA_STATE_IN_SYNC

    # Never set (generation 0) and applying nothing: in sync.
    never = StoredPolicy("m")
    assert rules.replica_state(AppliedView("m", 0, rules.PRODUCTION_ONLY, 7), never, fresh, STALE_AFTER)[0] == (
        S.REPLICA_STATE_IN_SYNC
    )


def test_staleness_bound_follows_the_reconcile_period() -> None:
    assert rules.stale_after_s(1.0) == 15.0  # never less: a slow database round must not flag a replica
    assert rules.stale_after_s(30.0) == 90.0  # three missed heartbeats


# -- the model manager applies stored policies by generation -------------------------------------


class _Registry:
    """The two registry calls a load makes (a version's record and its artifact)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.versions: set[int] = set()

    async def model_version(self, settings, name, version=0, alias=""):  # type: ignore[no-untyped-def]
        if version not in self.versions:
            raise NotFound(f"model {name!r} has no version {version}")
        mv = registry_pb2.ModelVersion(
            ref=common_pb2.ModelRef(name=name, version=version), checksum=hashlib.sha256(self.data).hexdigest()
        )
        mv.signature.feature_names.extend(["f0", "f1", "f2", "f3"])
        return mv

    async def download(self, settings, name, version):  # type: ignore[no-untyped-def]
        return self.data, hashlib.sha256(self.data).hexdigest()


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> _Registry:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    clf = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    fake = _Registry(to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}}).SerializeToString())
    monkeypatch.setattr(clients, "model_version", fake.model_version)
    monkeypatch.setattr(clients, "download", fake.download)
    return fake


async def test_the_manager_applies_the_newest_generation_retries_a_failed_one_and_ends_on_promotion(
    tmp_path: Path, registry: _Registry
) -> None:
    settings = Settings(home=tmp_path, serving_inline_max_us=0, serving_executor_threads=2, serving_load_timeout_s=60)
    manager = ModelManager(settings)
    registry.versions |= {1, 2}
    try:
        assert not await manager.apply_policy(StoredPolicy("m", CANARY_8, 1))  # nothing deployed: later
        await manager.promote("m", 1)
        dep = manager.deployment("m")

        canary_2 = TrafficPolicy(S.TRAFFIC_MODE_CANARY, 2, 50.0)
        assert await manager.apply_policy(StoredPolicy("m", canary_2, 2, updated_by="ana", reason="try"))
        assert dep.policy == canary_2 and dep.challenger is not None and dep.challenger.role == canary_2.role
        assert (dep.generation, dep.updated_by, dep.reason) == (2, "ana", "try")
        served = {(await manager.resolve("m", ""))[0].version for _ in range(200)}
        assert served == {1, 2}

        # An older generation (a late event) or the same one again changes nothing.
        assert not await manager.apply_policy(StoredPolicy("m", rules.PRODUCTION_ONLY, 1))
        assert not await manager.apply_policy(StoredPolicy("m", canary_2, 2))
        assert dep.policy == canary_2

        # A challenger that cannot load: the replica keeps what it applied, says why, and tries again
        # after a backoff that doubles per failure (each try is a trial load), not on every reconcile.
        assert not await manager.apply_policy(StoredPolicy("m", CANARY_8, 3))
        view = dep.view()
        assert view.generation == 2 and view.policy == canary_2 and "challenger v8" in view.error
        stored = StoredPolicy("m", CANARY_8, 3)
        assert rules.replica_state(view, stored, 0.0, STALE_AFTER)[0] == S.REPLICA_STATE_DISAGREES
        assert 4.0 < dep.traffic_retry_at - time.monotonic() <= 5.0
        dep.traffic_retry_at = 0.0  # the backoff has passed: tried again, fails again, waits twice as long
        assert not await manager.apply_policy(stored)
        assert 9.0 < dep.traffic_retry_at - time.monotonic() <= 10.0
        registry.versions.add(8)
        assert not await manager.apply_policy(stored)  # loadable now, but within the backoff: not tried yet
        assert dep.view().generation == 2
        dep.traffic_retry_at = 0.0
        assert await manager.apply_policy(stored)
        assert dep.view() == AppliedView("m", 3, CANARY_8, production_version=1)

        # The challenger promoted: it answers as production, the split ends here at once.
        await manager.promote("m", 8)
        assert dep.policy == rules.PRODUCTION_ONLY and dep.production is not None and dep.production.version == 8
        assert rules.replica_state(dep.view(), stored, 0.0, STALE_AFTER)[0] == S.REPLICA_STATE_IN_SYNC
        assert rules.promoted_end(stored, 8)
    finally:
        await manager.close()


async def test_a_challenger_is_checked_before_anything_loads(tmp_path: Path, registry: _Registry) -> None:
    manager = ModelManager(Settings(home=tmp_path, serving_inline_max_us=0, serving_load_timeout_s=60))
    registry.versions |= {1}
    try:
        with pytest.raises(NotFound, match="not deployed"):
            await manager.load_challenger("m", 1, S.TRAFFIC_MODE_CANARY, 10)
        await manager.promote("m", 1)
        with pytest.raises(FailedPrecondition, match="production already"):
            await manager.load_challenger("m", 1, S.TRAFFIC_MODE_CANARY, 10)
        with pytest.raises(InvalidArgument):
            await manager.load_challenger("m", 2, S.TRAFFIC_MODE_CANARY, 0)
        with pytest.raises(NotFound, match="no version 2"):
            await manager.load_challenger("m", 2, S.TRAFFIC_MODE_SHADOW, 10)
    finally:
        await manager.close()
