"""The role table covers every RPC there is and nothing else, and the Guard enforces it: a method
the table does not know is refused even to admin; the issue's rules for who may do what hold."""

from __future__ import annotations

import pytest

from flywheel.auth import Authenticator, Guard, current, roles
from flywheel.errors import PermissionDenied, Unauthenticated

from .identity import Issuer, bearer
from .proto_methods import HEALTH, REFLECTION_V1, all_methods

METHODS = all_methods()
OPEN = {path for path, m in METHODS.items() if m.service == HEALTH}


def test_every_method_of_every_service_has_an_entry():
    missing = sorted(set(METHODS) - OPEN - set(roles.METHOD_ROLES))
    assert missing == [], f"add these to flywheel.auth.roles.METHOD_ROLES: {missing}"
    # The services this covers, so a proto file the helper stopped finding cannot pass silently.
    assert {m.service for m in METHODS.values()} >= {
        "flywheel.v1.IngestionService",
        "flywheel.v1.TrainingService",
        "flywheel.v1.RegistryService",
        "flywheel.v1.TokenService",
        "flywheel.v1.ServingAdmin",
        "flywheel.v1.MonitoringService",
        "inference.GRPCInferenceService",
        "grpc.reflection.v1alpha.ServerReflection",
    }


def test_no_entry_names_a_method_that_does_not_exist():
    unknown = sorted(set(roles.METHOD_ROLES) - set(METHODS) - {REFLECTION_V1})
    assert unknown == [], f"the role table names methods no service has: {unknown}"


def test_every_entry_names_known_roles_and_health_is_the_only_open_service():
    for method, needed in roles.METHOD_ROLES.items():
        assert needed, f"{method} has an empty role set"
        assert needed <= {*roles.ALL_ROLES, roles.ANY_IDENTITY}, (method, needed)
    assert all(roles.is_public(m) for m in OPEN)
    assert not [m for m in METHODS if roles.is_public(m) and m not in OPEN]
    assert not OPEN & set(roles.METHOD_ROLES)


def _who(method: str) -> set[str]:
    return {r for r in roles.ALL_ROLES if roles.allowed(method, frozenset({r}))}


def test_the_issues_rules_hold_in_the_table():
    registry, serving = "/flywheel.v1.RegistryService", "/inference.GRPCInferenceService"
    assert _who(f"{registry}/ReportStagingChecks") == {roles.SERVICE_SERVING}, "nobody forges staging checks"
    assert _who(f"{registry}/RegisterModel") == {roles.SERVICE_TRAINING, roles.TRAINER, roles.ADMIN}
    for method in ("SetAlias", "DeleteAlias", "ArchiveVersion", "SetPromotionPolicy"):
        assert _who(f"{registry}/{method}") == {roles.ADMIN}, method
    for method in ("ApproveVersion", "RejectVersion"):
        assert _who(f"{registry}/{method}") == {roles.DEPLOYER, roles.ADMIN}, method
    # The post-promotion guard rolls back too; the registry holds it to the version it watched.
    assert _who(f"{registry}/Rollback") == {roles.DEPLOYER, roles.ADMIN, roles.SERVICE_MONITORING}
    assert _who(f"{serving}/RepositoryModelUnload") == {roles.DEPLOYER, roles.ADMIN}
    assert roles.PREDICTOR in _who(f"{serving}/ModelInfer")
    assert _who("/flywheel.v1.TokenService/CreateToken") == {roles.ADMIN}
    # A predictor infers and nothing else: no Flywheel API at all.
    predictor = {m for m in roles.METHOD_ROLES if roles.allowed(m, frozenset({roles.PREDICTOR}))}
    assert not [m for m in predictor if m.startswith("/flywheel.v1.") and not m.endswith("/WhoAmI")], predictor
    # A viewer changes nothing.
    viewer = {m.rsplit("/", 1)[1] for m in roles.METHOD_ROLES if roles.allowed(m, frozenset({roles.VIEWER}))}
    writes = ("Create", "Set", "Delete", "Ingest", "Start", "Register", "Approve", "Reject", "Rollback", "Revoke")
    assert not [m for m in viewer if m.startswith(writes)], viewer


@pytest.fixture
def guard(tmp_path) -> tuple[Guard, Issuer]:
    idp = Issuer()
    g = Guard("required")
    g.authenticator = Authenticator(idp.settings(tmp_path / "idp.pem"), None)
    return g, idp


async def test_a_method_missing_from_the_table_is_refused_even_to_admin(guard, monkeypatch):
    g, idp = guard
    admin = bearer(idp.token("root", ["admin"]))
    with pytest.raises(PermissionDenied, match="not open to any role"):
        await g.check("/flywheel.v1.RegistryService/NewMethodNobodyListed", admin)
    assert (await g.check("/flywheel.v1.RegistryService/SetAlias", admin)).name == "root"
    monkeypatch.delitem(roles.METHOD_ROLES, "/flywheel.v1.RegistryService/SetAlias")
    with pytest.raises(PermissionDenied):
        await g.check("/flywheel.v1.RegistryService/SetAlias", admin)


async def test_the_guard_names_the_role_needed_and_sets_the_principal(guard):
    g, idp = guard
    with pytest.raises(PermissionDenied) as denied:
        await g.check("/flywheel.v1.RegistryService/ApproveVersion", bearer(idp.token("pat", ["viewer"])))
    assert str(denied.value) == (
        "/flywheel.v1.RegistryService/ApproveVersion needs the role admin or deployer; pat has viewer"
    )
    principal = await g.check("/flywheel.v1.RegistryService/ApproveVersion", bearer(idp.token("dee", ["deployer"])))
    assert (principal.name, principal.roles, principal.kind) == ("dee", frozenset({"deployer"}), "jwt")
    assert current() == principal


async def test_credentials_are_required_except_for_health(guard):
    g, idp = guard
    method = "/flywheel.v1.IngestionService/ListDatasets"
    for metadata in (None, [], [("authorization", "Basic dXNlcjpwdw==")], [("authorization", "Bearer ")]):
        with pytest.raises(Unauthenticated):
            await g.check(method, metadata)
    with pytest.raises(Unauthenticated, match="invalid token"):
        await g.check(method, bearer("not-a-token"))
    assert (await g.check(f"/{HEALTH}/Check", None)).kind == "anonymous"
    # Reflection: any identity, whatever its roles, but an identity.
    reflection = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    assert (await g.check(reflection, bearer(idp.token("nobody", [])))).name == "nobody"
    with pytest.raises(Unauthenticated):
        await g.check(reflection, None)
