"""The image's conditions, reproduced without a Docker engine, and the closed loop in them.

Every service runs as in its own container: a private mount namespace in which the root filesystem
is read-only, /var/lib/flywheel (FLYWHEEL_HOME) and /tmp (TMPDIR) are the container's own writable
directories, /dev/shm is a fresh tmpfs and the shared artifact volume is mounted (Compose mounts its
volume at /data/artifacts; this host has no /data, so here it is /var/lib/flywheel-artifacts). The
process runs as the image's USER (UID 10001, no supplementary groups, no new privileges) from the
repository's read-only tree, with exactly the environment deploy/Dockerfile sets (read from the file,
with the git sha passed as a build arg would be) plus what a deployment sets (the service, its
database role and token, the addresses). The base image's own variables are stood in for: PATH puts
this virtualenv's bin where the image has /usr/local/bin, and LANG=C.UTF-8.

PostgreSQL (roles from deploy/postgres) and the broker run outside, as their own containers would.
`flywheel migrate` runs as a one-off container with the migration owner's role; the services use
their row-only roles with FLYWHEEL_MIGRATE_ON_START=false. Readiness is the image's HEALTHCHECK,
run inside each container. Then: ingest -> train -> register -> stage -> promote -> serve.
"""

from __future__ import annotations

import asyncio
import grp
import json
import os
import pwd
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
import tritonclient.grpc as triton

from flywheel.bus.topics import all_topics, ensure_topics
from flywheel.config import SERVICES, Settings
from flywheel.db import ensure_database
from flywheel.grpc import sync_channel
from flywheel.stack.broker import EmbeddedBroker
from flywheel.stack.identities import service_identity
from flywheel.stack.postgres import EmbeddedPostgres, _bin
from flywheel.stack.procs import free_port
from flywheel.v1 import registry_pb2, training_pb2
from tests import dockerfile
from tests.integration.identities import mint_many
from tests.polling import wait_until

from .clients import Clients, create_dataset, ingest_requests
from .loop_helpers import concept_csv, production_version, spec, wait_served

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
GIT_SHA = "c0ffee1"  # as `--build-arg FLYWHEEL_GIT_SHA=...` would bake it in
ARTIFACTS_MOUNT = "/var/lib/flywheel-artifacts"
# The base image's variables this host stands in for (python:3.11-slim sets PATH and LANG).
BASE_ENV = {
    "PATH": f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}


def _hidden_behind(path: Path) -> Path | None:
    """The first directory above `path` that others cannot pass through (this host keeps its Python
    under /root, mode 0700; the image has it in /usr/local), or None."""
    for parent in reversed(path.parents):
        if parent != Path("/") and not parent.stat().st_mode & 0o001:
            return parent
    return None


def _container_script(uid: int, gid: int, home: Path, tmp: Path, volume: Path) -> str:
    """Runs in the new mount namespace as root: lays out the container's filesystem, then becomes
    the image's user and executes the command ("$@")."""
    q = shlex.quote
    # The interpreter and the code stay reachable at their own paths (the venv's links and the
    # editable install name them) when a private parent directory, or the container's own /tmp or
    # /dev/shm, would hide them; each is re-mounted there read-only, and nothing else of a private
    # parent shows (an empty read-only tmpfs over it).
    covered = (Path("/tmp"), Path("/dev/shm"))
    exposed = [
        p for p in (Path(sys.base_prefix), REPO) if _hidden_behind(p) or any(p.is_relative_to(c) for c in covered)
    ]
    assert not any(p.is_relative_to("/var/lib") for p in exposed), "this layout needs them outside /var/lib"
    blocked = list(dict.fromkeys(b for p in exposed if (b := _hidden_behind(p)) is not None))
    lines = [
        "set -eu",
        "mount --make-rprivate /",
        # A private /var/lib: room for the mountpoints without touching the host's directories.
        "mount -t tmpfs -o mode=0755,size=1m tmpfs /var/lib",
        f"mkdir /var/lib/flywheel {ARTIFACTS_MOUNT}",
        f"mount --bind {q(str(home))} /var/lib/flywheel",
        f"mount --bind {q(str(volume))} {ARTIFACTS_MOUNT}",
    ]
    for i, path in enumerate(exposed):  # set aside while still reachable
        lines += [f"mkdir /var/lib/.expose-{i}", f"mount --bind {q(str(path))} /var/lib/.expose-{i}"]
    lines += [f"mount -t tmpfs -o mode=0755,size=1m tmpfs {q(str(b))}" for b in blocked]
    lines += [
        f"mount --bind {q(str(tmp))} /tmp",  # after the binds above: their sources may be in the host's /tmp
        "mount -t tmpfs -o mode=1777,size=64m tmpfs /dev/shm",  # Docker's default: private, 64 MiB
    ]
    for i, path in enumerate(exposed):
        lines += [
            f"mkdir -p {q(str(path))}",
            f"mount --move /var/lib/.expose-{i} {q(str(path))}",
            f"mount -o remount,bind,ro {q(str(path))}",
        ]
    lines += [f"mount -o remount,ro {q(str(b))}" for b in blocked]
    lines += [
        "mount -o remount,ro /var/lib",
        "mount -o remount,bind,ro /",
        f'exec setpriv --reuid={uid} --regid={gid} --clear-groups --no-new-privs --pdeathsig=TERM -- "$@"',
    ]
    return "\n".join(lines)


def _ids() -> tuple[int, int]:
    uid, _, gid = dockerfile.user().partition(":")
    return int(uid), int(gid or uid)


def _ensure_user(uid: int, gid: int) -> None:
    """The image's user and group, made on this host when the ids are free (a system account without
    a home or a login shell), as the image's useradd does."""
    try:
        grp.getgrgid(gid)
    except KeyError:
        subprocess.run(["groupadd", "--system", "--gid", str(gid), f"flywheel-{gid}"], check=True)
    try:
        existing = pwd.getpwuid(uid)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--uid", str(uid), "--gid", str(gid), "--no-create-home",
             "--home-dir", "/var/lib/flywheel", "--shell", "/usr/sbin/nologin", f"flywheel-{uid}"],
            check=True,
        )  # fmt: skip
        return
    assert existing.pw_uid != 0 and existing.pw_gid != 0, f"UID {uid} is taken by a privileged account"


@dataclass
class Container:
    """One container's writable places on the host and how to run a command in its conditions."""

    name: str
    root: Path
    env: dict[str, str]
    uid: int
    gid: int
    volume: Path
    logs: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        for d in (self.home, self.tmp):
            d.mkdir(parents=True)
            os.chown(d, self.uid, self.gid)  # what an emptyDir with fsGroup, or the image's chown, gives
        os.chmod(self.home, 0o700)
        os.chmod(self.tmp, 0o1777)

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    def argv(self, *command: str) -> list[str]:
        return [
            shutil.which("unshare") or "unshare", "--mount", "--propagation", "private",
            "sh", "-c", _container_script(self.uid, self.gid, self.home, self.tmp, self.volume), self.name,
            *command,
        ]  # fmt: skip

    def start(self, *command: str) -> subprocess.Popen[bytes]:
        log = self.root / f"{self.name}.log"
        self.logs.append(log)
        with log.open("ab") as out:
            return subprocess.Popen(self.argv(*command), env=self.env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)

    def run(self, *command: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*command), env=self.env, cwd=REPO, capture_output=True, text=True, timeout=timeout_s
        )


@dataclass
class Deployment:
    """What the test talks to: the services' addresses and the admin token, like Compose's host ports."""

    ports: dict[str, int]
    admin: str
    containers: dict[str, Container]
    procs: dict[str, subprocess.Popen[bytes]]
    started_s: float

    def address(self, service: str) -> str:
        return f"127.0.0.1:{self.ports[service]}"

    def channel(self, service: str) -> grpc.Channel:
        addrs = {f"{n}_addr": self.address(n) for n in SERVICES}
        return sync_channel(Settings(auth_token=self.admin, tls_ca_file=None, **addrs), service)  # type: ignore[arg-type]

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.admin}"}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    if os.geteuid() != 0:
        pytest.fail(
            "the container-conditions test needs root: it creates the image's user (UID 10001) and a mount"
            " namespace per service (run the suite as root, as CI does)"
        )
    t0 = time.monotonic()
    uid, gid = _ids()
    _ensure_user(uid, gid)
    base = tmp_path_factory.mktemp("containers")
    volume = base / "artifacts-volume"
    volume.mkdir()
    os.chown(volume, uid, gid)  # a fresh named volume takes the ownership of the image's mountpoint

    pg = EmbeddedPostgres(base / "postgres", free_port(), base / "postgres.log")
    broker = EmbeddedBroker(free_port(), base / "broker.log")
    procs: dict[str, subprocess.Popen[bytes]] = {}
    containers: dict[str, Container] = {}
    try:
        pg.start()
        broker.start()
        asyncio.run(ensure_database(pg.dsn()))
        _create_roles(pg)
        asyncio.run(ensure_topics(broker.bootstrap, all_topics(), partitions=4, replication_factor=1))

        ports = {s: free_port() for s in SERVICES}
        image_env = {**BASE_ENV, **dockerfile.environment(build_args={"FLYWHEEL_GIT_SHA": GIT_SHA})}
        shared = {
            "FLYWHEEL_KAFKA_BOOTSTRAP": broker.bootstrap,
            "FLYWHEEL_ARTIFACT_ROOT": ARTIFACTS_MOUNT,
            **{f"FLYWHEEL_{s.upper()}_ADDR": f"127.0.0.1:{p}" for s, p in ports.items()},
        }

        def dsn(role: str) -> str:
            return f"postgresql://flywheel_{role}@127.0.0.1:{pg.port}/flywheel"

        # The migration job: a one-off container with the migration owner's role.
        job = Container(
            "migrate", base / "migrate", {**image_env, **shared, "FLYWHEEL_DATABASE_URL": dsn("migrator")},
            uid, gid, volume,
        )  # fmt: skip
        migrated = job.run("flywheel", "migrate")
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr

        tokens = asyncio.run(
            mint_many(pg.dsn(), {"admin": ("containers-admin", "admin"), **{s: service_identity(s) for s in SERVICES}})
        )
        for service in SERVICES:
            env = {
                **image_env,
                **shared,
                "FLYWHEEL_SERVICE": service,
                "FLYWHEEL_GRPC_PORT": str(ports[service]),
                "FLYWHEEL_DATABASE_URL": dsn(service),
                "FLYWHEEL_MIGRATE_ON_START": "false",
                "FLYWHEEL_AUTH_TOKEN": tokens[service],
            }
            containers[service] = Container(service, base / service, env, uid, gid, volume)
            procs[service] = containers[service].start("python", "-m", f"services.{service}")
        yield Deployment(ports, tokens["admin"], containers, procs, t0)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        broker.stop()
        pg.stop()


def _create_roles(pg: EmbeddedPostgres) -> None:
    """deploy/postgres/init-roles.sh, as the postgres image runs it on a new volume."""
    env = {
        **os.environ,
        "PATH": f"{Path(_bin('psql')).parent}:{os.environ['PATH']}",
        "PGHOST": "127.0.0.1",
        "PGPORT": str(pg.port),
        "POSTGRES_USER": "postgres",
        "POSTGRES_DB": "flywheel",
        "FLYWHEEL_ROLES_SQL": str(REPO / "deploy" / "postgres" / "roles.sql"),
        **{f"FLYWHEEL_DB_PASSWORD_{r.upper()}": uuid.uuid4().hex for r in ("migrator", *SERVICES)},
    }
    done = subprocess.run(
        ["sh", str(REPO / "deploy" / "postgres" / "init-roles.sh")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


# Tries to create a file in each place a container might write to; prints {place: "ok" | errno name}.
WRITE_PROBE = """
import errno, json, os, sys, tempfile
places = {"$FLYWHEEL_HOME": os.environ["FLYWHEEL_HOME"], "$TMPDIR": tempfile.gettempdir(), "/dev/shm": "/dev/shm",
          os.environ["FLYWHEEL_ARTIFACT_ROOT"]: os.environ["FLYWHEEL_ARTIFACT_ROOT"], sys.argv[1]: sys.argv[1],
          "/var/tmp": "/var/tmp", "/var/lib": "/var/lib"}
found = {}
for name, where in places.items():
    try:
        os.unlink(tempfile.mkstemp(dir=where)[1])
        found[name] = "ok"
    except OSError as exc:
        found[name] = errno.errorcode[exc.errno]
print(json.dumps(found))
"""


def _complaints(d: Deployment) -> str:
    """Warnings and errors from every container's log, for a failure message."""
    lines = []
    for container in d.containers.values():
        for log in container.logs:
            for line in log.read_text(errors="replace").splitlines():
                try:
                    level = json.loads(line).get("level")
                except ValueError:
                    level = "error"  # not a log record: a traceback or a crash
                if level not in ("debug", "info"):
                    lines.append(f"{container.name}: {line[:400]}")
    return "\n".join(lines[-40:]) or "(nothing)"


def _healthcheck(container: Container) -> subprocess.CompletedProcess[str]:
    """The image's HEALTHCHECK command, inside the container's conditions."""
    (check,) = dockerfile.chain()[0].all("HEALTHCHECK")

    return container.run(*json.loads(check.args.split(" CMD ", 1)[1]), timeout_s=30)


def test_closed_loop_in_the_images_conditions(deployment: Deployment) -> None:
    d = deployment
    for service, proc in d.procs.items():
        wait_until(
            lambda s=service, p=proc: p.poll() is None and _healthcheck(d.containers[s]).returncode == 0,  # type: ignore[misc]
            90,
            f"{service} healthy (its log: {d.containers[service].logs[0]})",
            interval_s=1.0,
        )
    ready_s = time.monotonic() - d.started_s

    # Only the container's own places take writes; the code and everything else are read-only.
    probe = d.containers["monitoring"].run("python", "-c", WRITE_PROBE, str(REPO), timeout_s=60)
    assert json.loads(probe.stdout) == {
        "$FLYWHEEL_HOME": "ok",
        "$TMPDIR": "ok",
        "/dev/shm": "ok",
        ARTIFACTS_MOUNT: "ok",
        str(REPO): "EROFS",
        "/var/tmp": "EROFS",
        "/var/lib": "EROFS",
    }, probe.stderr

    # The processes are the image's user, not root.
    uid, _ = _ids()
    for proc in d.procs.values():
        ids = psutil.Process(proc.pid).uids()
        assert (ids.real, ids.effective) == (uid, uid)

    api = Clients(d)  # type: ignore[arg-type]
    client = triton.InferenceServerClient(d.address("serving"))
    try:
        create_dataset(api, "containers")
        api.ingestion.IngestDataset(ingest_requests("containers", concept_csv(2000, seed=1, start_id=0)))
        lr = spec("containers-lr", "containers", "containers-model", on_data=True, margin=0.0)
        api.training.CreateSpec(training_pb2.CreateSpecRequest(spec=lr))
        try:
            wait_until(lambda: production_version(api, "containers-model") == 1, 120, "v1 trained, staged, promoted")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; what the services complained of:\n{_complaints(d)}") from None
        wait_served(client, "containers-model", 1, d.headers)
        x = np.random.default_rng(5).normal(size=(3, 4)).astype(np.float32)
        inp = triton.InferInput("input", [3, 4], "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("containers-model", [inp], headers=d.headers)
        assert result.get_response().model_version == "1"
        assert {o.name for o in result.get_response().outputs}  # a prediction came back

        version = api.registry.GetModelVersion(
            registry_pb2.GetModelVersionRequest(name="containers-model", version=1)
        ).version
        assert version.lineage.code_version.endswith(f"+g{GIT_SHA}"), "the build arg is the code version"
    finally:
        client.close()
        api.close()

    # What they wrote is where the image lets them write: serving's model cache and training's
    # scratch in their own homes, the artifacts on the shared volume, owned by the image's user.
    assert any((d.containers["serving"].home / "serving-cache").iterdir())
    assert (d.containers["training"].home / "tmp").is_dir()
    objects = [p for p in d.containers["ingestion"].volume.rglob("*") if p.is_file()]
    assert objects and all(p.stat().st_uid == uid for p in objects)
    for service, proc in d.procs.items():
        assert proc.poll() is None, f"{service} exited: see {d.containers[service].logs[0]}"
    print(f"\ncontainer conditions: all healthy {ready_s:.1f}s after the start, loop done at "
          f"{time.monotonic() - d.started_s:.1f}s")  # fmt: skip
