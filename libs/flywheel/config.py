"""Settings from the environment (`FLYWHEEL_*`), with defaults for the embedded stack.

Standard `OTEL_*` variables are read by the OpenTelemetry SDK itself; we only surface the
ones our code branches on.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from flywheel.addresses import parse as parse_target

SERVICES: tuple[str, ...] = ("ingestion", "training", "registry", "serving", "monitoring")
DEFAULT_PORTS: dict[str, int] = {
    "ingestion": 50051,
    "training": 50052,
    "registry": 50053,
    "serving": 50054,
    "monitoring": 50055,
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_", extra="ignore")

    home: Path = Path("./var")
    database_url: str = "postgresql://postgres@127.0.0.1:55432/flywheel"
    migrate_on_start: bool = True  # false: apply no DDL at start, only check (run `flywheel migrate` first)
    db_pool_min: int = 1
    db_pool_max: int = 10
    connect_timeout_s: float = 5.0

    kafka_bootstrap: str = "127.0.0.1:19092"
    kafka_enable_idempotence: bool = False  # the embedded broker (tansu) lacks it
    # tansu auto-creates a topic it is asked about with 4 partitions; matching that keeps partition
    # counts stable when its memory storage is wiped by a restart (clients assume they never shrink).
    kafka_partitions: int = 4
    kafka_replication_factor: int = 1
    consumer_max_attempts: int = 5
    consumer_backoff_s: float = 0.1
    consumer_backoff_max_s: float = 2.0
    outbox_poll_s: float = 0.5
    outbox_max_attempts: int = 10  # an event the broker refuses this many times moves to dead_letters
    # One retry policy for calls to other services and for loops that wait out a dependency
    # (flywheel.retry): the first delay, doubling up to the cap.
    retry_base_s: float = 0.1
    retry_max_s: float = 5.0
    # Group timings: tansu holds a join for the rebalance timeout, so keep it short for fast starts.
    consumer_session_timeout_ms: int = 6000
    consumer_heartbeat_ms: int = 1000
    consumer_rebalance_timeout_ms: int = 3000

    # Kafka client security (producers, consumers and admin clients alike).
    kafka_security_protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    kafka_sasl_mechanism: str | None = None  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None  # client certificate, for brokers that require one
    kafka_ssl_keyfile: Path | None = None

    # Authentication: every RPC but health carries `authorization: Bearer <token>`.
    auth_mode: str = "required"  # required | off (off: every caller is trusted; never in production)
    auth_token: str | None = None  # this process's own credential (a service identity, or the CLI's user)
    auth_cache_s: float = 5.0  # a validated token is trusted this long: revocation takes effect within it
    oidc_issuer: str | None = None  # JWTs from an identity provider are accepted when this is set
    oidc_audience: str | None = None
    oidc_jwks_url: str | None = None  # keys from the provider's JWKS endpoint ...
    oidc_key_file: Path | None = None  # ... or from a PEM public key or JWKS file
    oidc_roles_claim: str = "roles"  # dotted path to a list of role names (e.g. realm_access.roles)
    oidc_name_claim: str = "sub"
    oidc_algorithms: list[str] = ["RS256", "ES256"]

    # gRPC TLS. A server with a certificate serves TLS only; clients verify it with tls_ca_file.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None
    tls_require_client_auth: bool = False  # mTLS: clients must present a certificate from tls_ca_file
    tls_client_cert_file: Path | None = None
    tls_client_key_file: Path | None = None

    grpc_host: str = "127.0.0.1"
    grpc_port: int | None = None  # overrides this process's own port (containers, test harnesses)
    grpc_max_message_mb: int = 64
    grpc_grace_s: float = 10.0
    grpc_max_concurrent_streams: int = 256  # per client connection
    # A client connection is closed gracefully (GOAWAY, calls in flight finish) after this long, so a
    # client balancing over a DNS name re-resolves it and finds replicas added since (0: never).
    grpc_max_connection_age_s: float = Field(default=300.0, ge=0)
    ingestion_port: int = DEFAULT_PORTS["ingestion"]
    training_port: int = DEFAULT_PORTS["training"]
    registry_port: int = DEFAULT_PORTS["registry"]
    serving_port: int = DEFAULT_PORTS["serving"]
    monitoring_port: int = DEFAULT_PORTS["monitoring"]
    # `flywheel up --replicas`: replica i of a service listens on its port + i x this (replica 0 keeps
    # the port itself; serving's second replica: 50154).
    replica_port_step: int = Field(default=100, ge=1)
    # How clients reach each service: HOST:PORT, a comma-separated list of IP:PORT (replicas, spread
    # round-robin), or a gRPC target URI such as dns:///serving:50054 (flywheel.addresses).
    ingestion_addr: str | None = None
    training_addr: str | None = None
    registry_addr: str | None = None
    serving_addr: str | None = None
    monitoring_addr: str | None = None

    # Serving.
    # Serving processes sharing serving's port (SO_REUSEPORT), each with its own event loop and ONNX
    # Runtime sessions; 0: one per usable core (CPU affinity and the cgroup's CPU quota). 1: the
    # service runs in one process, as every other service does.
    serving_workers: int = Field(default=0, ge=0, le=256)
    # Set by the worker pool in each worker it starts (0-based); not a user setting.
    worker_index: int | None = Field(default=None, ge=0)
    serving_provider: str = "auto"  # auto | cuda | cpu; decided once per process
    serving_intra_op_threads: int = 0  # 0: ONNX Runtime's default
    serving_inter_op_threads: int = 0
    # ONNX Runtime's pool threads spin between runs (lower latency back to back, a core burnt while
    # idle); off by default in serving, where runs come between requests.
    serving_ort_spinning: bool = False
    serving_max_batch_size: int = 32  # 1 turns dynamic batching off
    serving_max_queue_delay_us: int = 500
    # A model whose full batch runs in at most this many microseconds runs on the event loop: handing
    # it to a thread would cost more than the run. 0 sends every run to the executor.
    serving_inline_max_us: int = 100
    serving_log_sample_rate: float = 1.0  # fraction of requests logged to flywheel.predictions.logged
    serving_log_buffer: int = 10_000  # records held for the logger; beyond that they are dropped and counted
    serving_staging_sample_rows: int = 5_000
    serving_staging_latency_calls: int = 200
    serving_staging_tolerance: float = 0.02  # |sample metric - recorded test metric| allowed
    serving_reconcile_s: float = 5.0  # how often serving re-reads production from the registry
    serving_log_flush_s: float = 0.5  # the prediction logger publishes at least this often
    serving_executor_threads: int = 4  # threads that run ONNX Runtime sessions off the event loop
    serving_load_memory_mb: int = 4096  # a model whose trial load needs more (address space) fails to load
    serving_load_timeout_s: float = 120.0  # a model whose trial load takes longer fails to load
    serving_infer_memory_mb: int = 4096  # memory ONNX Runtime may allocate for inference, all sessions (0: no cap)
    serving_infer_timeout_s: float = 60.0  # one model run longer than this is stopped: DEADLINE_EXCEEDED (0: none)
    serving_pinned_max: int = 8  # model_version pins held loaded at once (least recently used evicted)
    serving_queue_max: int = 4096  # requests waiting per model in the batcher (RESOURCE_EXHAUSTED beyond)
    serving_shadow_max_inflight: int = 64  # mirrored calls in flight; beyond that mirroring skips (counted)

    # Ingestion.
    # Local directories IngestFromUri may read (comma-separated); none by default: files come by upload.
    ingest_roots: Annotated[list[Path], NoDecode] = []
    ingestion_max_upload_mb: int = 512  # an IngestDataset stream past this is refused (RESOURCE_EXHAUSTED)
    ingestion_max_rows: int = 50_000_000  # rows one ingest may decode (RESOURCE_EXHAUSTED beyond)
    ingestion_max_decoded_mb: int = 4096  # decoded (uncompressed) size one ingest may reach: bombs stop here
    ingestion_max_cell_chars: int = 1024 * 1024  # longest text cell (INVALID_ARGUMENT beyond)

    # Registry.
    registry_max_artifact_mb: int = 1024  # a larger model upload is refused (RESOURCE_EXHAUSTED)
    registry_rollout_tick_s: float = 1.0  # how often progressive rollouts are judged (and serving told)

    # Training.
    training_lease_s: float = 15.0  # a run whose worker stops heartbeating is reclaimed after this
    training_heartbeat_s: float = 1.0
    training_max_attempts: int = 3  # a run reclaimed this many times fails
    training_run_timeout_s: float = 3600.0  # a run still training after this is stopped and failed (0: none)
    training_memory_mb: int = 8192  # address-space limit of a run's training process (0: none)
    training_backend: str = "local"  # local | ray
    training_ray_address: str = ""  # ray://host:10001, host:port or auto; empty: a local head started by ray.init
    training_ray_trial_cpus: float = 1.0  # CPUs one trial task asks Ray for
    training_ray_trial_memory_mb: int = 2048  # memory one trial task asks Ray for, and its address-space cap

    # Monitoring.
    monitoring_tick_s: float = 1.0  # how often time-based windows are checked for closing

    artifact_root: str | None = None  # a directory, or s3://bucket/prefix (default: <home>/artifacts)
    s3_endpoint_url: str | None = None  # an S3-compatible store (MinIO, Ceph...): path-style addressing then
    s3_region: str | None = None  # else the AWS chain's (AWS_REGION, ~/.aws/config)
    s3_path_style: bool | None = None  # force path-style (true) or virtual-host (false) addressing
    spans_file: Path | None = None
    trace_inference: bool = False  # one span per ModelInfer call: opt-in, it costs throughput
    metrics_port: int = 0  # 0: no Prometheus endpoint
    log_level: str = "INFO"

    # Embedded stack only.
    pg_port: int = 55432
    broker_port: int = 19092

    otel_exporter_otlp_endpoint: str | None = Field(default=None, validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT")

    @field_validator("ingestion_addr", "training_addr", "registry_addr", "serving_addr", "monitoring_addr")
    @classmethod
    def _valid_target(cls, value: str | None) -> str | None:
        if value is not None and value.strip():
            parse_target(value)  # a bad list fails at start, naming the setting, not at the first call
        return value

    @field_validator("ingest_roots", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [Path(p.strip()) for p in value.split(",") if p.strip()]
        return value

    def port_for(self, service: str) -> int:
        return int(getattr(self, f"{service}_port"))

    def addr_for(self, service: str) -> str:
        addr = getattr(self, f"{service}_addr")
        return addr or f"127.0.0.1:{self.port_for(service)}"

    def replica_port(self, service: str, replica: int) -> int:
        """The port replica `replica` (0-based) of `service` listens on in the embedded stack."""
        return self.port_for(service) + replica * self.replica_port_step

    @property
    def credentials_file(self) -> Path:
        """Where `flywheel up` leaves the admin credential (and TLS files) for the CLI and the tests."""
        return self.home / "credentials"

    @field_validator("artifact_root", mode="before")
    @classmethod
    def _artifact_root_text(cls, value: object) -> object:
        return str(value) if isinstance(value, Path) else value

    @property
    def artifacts_on_s3(self) -> bool:
        return bool(self.artifact_root and self.artifact_root.startswith("s3://"))

    @property
    def artifacts_dir(self) -> Path:
        """The local store's directory (not meaningful when artifacts live on S3)."""
        if self.artifacts_on_s3:
            raise ValueError("artifacts live on S3 (FLYWHEEL_ARTIFACT_ROOT); there is no local artifact directory")
        return Path(self.artifact_root) if self.artifact_root else self.home / "artifacts"

    @property
    def artifact_location(self) -> str:
        """Where artifacts live, as FLYWHEEL_ARTIFACT_ROOT would say it: an s3:// URI or an absolute path."""
        return self.artifact_root if self.artifact_root and self.artifacts_on_s3 else str(self.artifacts_dir.resolve())


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
