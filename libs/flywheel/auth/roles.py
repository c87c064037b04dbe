"""Who may call what: every RPC of every Flywheel service, in one table.

A method is allowed for a principal holding any of its roles. A method missing from the table is
refused (tests/unit/test_auth_roles.py fails when a proto method has no entry), health is open to
all, and reflection needs any valid identity. `admin` may do everything a person may do; the
service identities (`service:<name>`) are what the services themselves call with.
"""

from __future__ import annotations

ADMIN = "admin"  # tokens, policies, aliases, archive, and everything below
DEPLOYER = "deployer"  # approve/reject/rollback, canary, shadow, model load/unload, monitoring policy
TRAINER = "trainer"  # datasets, specs, runs, registering a model by hand
PRODUCER = "producer"  # ingest data and feedback
PREDICTOR = "predictor"  # inference only
VIEWER = "viewer"  # read-only
USER_ROLES = (ADMIN, DEPLOYER, TRAINER, PRODUCER, PREDICTOR, VIEWER)

SERVICE_INGESTION = "service:ingestion"
SERVICE_TRAINING = "service:training"
SERVICE_REGISTRY = "service:registry"
SERVICE_SERVING = "service:serving"
SERVICE_MONITORING = "service:monitoring"
SERVICE_ROLES = (SERVICE_INGESTION, SERVICE_TRAINING, SERVICE_REGISTRY, SERVICE_SERVING, SERVICE_MONITORING)
ALL_ROLES = USER_ROLES + SERVICE_ROLES

ANY_IDENTITY = "*"  # any authenticated principal, whatever its roles

_SERVICES = frozenset(SERVICE_ROLES)
READ = frozenset({VIEWER, DEPLOYER, TRAINER, ADMIN}) | _SERVICES
_ANY = frozenset({ANY_IDENTITY})


def _only(*roles: str) -> frozenset[str]:
    return frozenset(roles)


def _svc(service: str, methods: dict[str, frozenset[str]]) -> dict[str, frozenset[str]]:
    return {f"/{service}/{m}": roles for m, roles in methods.items()}


METHOD_ROLES: dict[str, frozenset[str]] = {
    **_svc(
        "flywheel.v1.IngestionService",
        {
            "CreateDataset": _only(TRAINER, ADMIN),
            "GetDataset": READ,
            "ListDatasets": READ,
            "IngestDataset": _only(PRODUCER, TRAINER, ADMIN),
            "IngestFromUri": _only(PRODUCER, TRAINER, ADMIN),
            "GetDatasetVersion": READ,
            "ListDatasetVersions": READ,
            "ReadDatasetVersion": READ,
        },
    ),
    **_svc(
        "flywheel.v1.TrainingService",
        {
            "CreateSpec": _only(TRAINER, ADMIN),
            "GetSpec": READ,
            "ListSpecs": READ,
            "StartRun": _only(TRAINER, ADMIN),
            "GetRun": READ,
            "ListRuns": READ,
            "CompareRuns": READ,
            "WatchRun": READ,
            "ListTriggerDecisions": READ,
            "CancelRun": _only(TRAINER, ADMIN),
        },
    ),
    **_svc(
        "flywheel.v1.RegistryService",
        {
            # Only training registers models, unless a person with `trainer` does it by hand.
            "RegisterModel": _only(SERVICE_TRAINING, TRAINER, ADMIN),
            "ListModels": READ,
            "GetModelVersion": READ,
            "ListModelVersions": READ,
            "SearchModelVersions": READ,
            "DownloadArtifact": READ,
            "SetAlias": _only(ADMIN),
            "DeleteAlias": _only(ADMIN),
            "GetAlias": READ,
            "SetTags": _only(TRAINER, DEPLOYER, ADMIN),
            "ArchiveVersion": _only(ADMIN),
            "GetLineage": READ,
            "ListAuditEvents": READ,
            "SetPromotionPolicy": _only(ADMIN),
            "GetPromotionPolicy": READ,
            # Staging checks are serving's to report: nobody else, admin included, can forge them.
            "ReportStagingChecks": _only(SERVICE_SERVING),
            "ApproveVersion": _only(DEPLOYER, ADMIN),
            "RejectVersion": _only(DEPLOYER, ADMIN),
            # Monitoring's post-promotion guard rolls back the version it watched (registry checks that).
            "Rollback": _only(DEPLOYER, ADMIN, SERVICE_MONITORING),
        },
    ),
    **_svc(
        "flywheel.v1.TokenService",
        {
            "CreateToken": _only(ADMIN),
            "ListTokens": _only(ADMIN),
            "RevokeToken": _only(ADMIN),
            "WhoAmI": _ANY,
        },
    ),
    **_svc(
        "flywheel.v1.ServingAdmin",
        {
            "ListDeployments": READ,
            "GetDeployment": READ,
            # The registry's progressive rollouts set and end canaries (and a shadow step).
            "SetCanary": _only(DEPLOYER, ADMIN, SERVICE_REGISTRY),
            "SetShadow": _only(DEPLOYER, ADMIN, SERVICE_REGISTRY),
            "ClearTraffic": _only(DEPLOYER, ADMIN, SERVICE_REGISTRY),
            "ListTrafficChanges": READ,
        },
    ),
    **_svc(
        "inference.GRPCInferenceService",
        {
            "ServerLive": READ | {PREDICTOR},
            "ServerReady": READ | {PREDICTOR},
            "ModelReady": READ | {PREDICTOR},
            "ServerMetadata": READ | {PREDICTOR},
            "ModelMetadata": READ | {PREDICTOR},
            "ModelConfig": READ | {PREDICTOR},
            "ModelInfer": _only(PREDICTOR, DEPLOYER, ADMIN),
            "ModelStreamInfer": _only(PREDICTOR, DEPLOYER, ADMIN),
            "ModelStatistics": READ,
            "RepositoryIndex": READ,
            "RepositoryModelLoad": _only(DEPLOYER, ADMIN),
            "RepositoryModelUnload": _only(DEPLOYER, ADMIN),
            "SystemSharedMemoryStatus": _only(ADMIN),
            "SystemSharedMemoryRegister": _only(ADMIN),
            "SystemSharedMemoryUnregister": _only(ADMIN),
            "CudaSharedMemoryStatus": _only(ADMIN),
            "CudaSharedMemoryRegister": _only(ADMIN),
            "CudaSharedMemoryUnregister": _only(ADMIN),
            "TraceSetting": _only(ADMIN),
            "LogSettings": _only(ADMIN),
        },
    ),
    **_svc(
        "flywheel.v1.MonitoringService",
        {
            "GetDriftReport": READ,
            "ListAlerts": READ,
            "GetSegmentReport": READ,
            "SetMonitoringPolicy": _only(DEPLOYER, ADMIN),
            "GetMonitoringPolicy": READ,
            "RecordFeedback": _only(PRODUCER, ADMIN),
            "WatchAlerts": READ,
            "GetShadowComparison": READ,
            "GetCanaryReport": READ,
        },
    ),
    # Reflection (grpcurl list/describe) shows the API to anyone who has an identity.
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": _ANY,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": _ANY,
}

# Open to every caller: load balancers and orchestrators probe these without credentials.
PUBLIC_PREFIXES = ("/grpc.health.v1.Health/",)


def is_public(method: str) -> bool:
    return method.startswith(PUBLIC_PREFIXES)


def roles_for(method: str) -> frozenset[str] | None:
    """The roles that may call `method`; None for a method the table does not know (refused)."""
    return METHOD_ROLES.get(method)


def allowed(method: str, roles: frozenset[str]) -> bool:
    needed = METHOD_ROLES.get(method)
    if needed is None:
        return False
    return ANY_IDENTITY in needed or not needed.isdisjoint(roles)


def describe(needed: frozenset[str]) -> str:
    """`admin or deployer`, for the PERMISSION_DENIED message."""
    return " or ".join(sorted(needed))


def register(method: str, roles: frozenset[str]) -> None:
    """Adds a method outside Flywheel's protos (an extension or a test service) to the table."""
    METHOD_ROLES[method] = roles
