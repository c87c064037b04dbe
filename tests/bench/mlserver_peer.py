"""SeldonIO MLServer as the serving bench's peer: its venv, a model repository for a fitted scikit-learn
estimator, and the `mlserver start` process serving it over the gRPC Open Inference Protocol.

MLServer pins its own web/gRPC stack, so it runs from its own venv, .venv/bench-mlserver, created from
requirements-mlserver.txt (and recreated when that file changes). `make bench` creates it before the
benches run (`python -m tests.bench.mlserver_peer install`); the bench creates it too when missing.

Usage: python -m tests.bench.mlserver_peer install
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import tritonclient.grpc as tgrpc
from tritonclient.utils import InferenceServerException

from flywheel.stack.procs import free_port

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = Path(__file__).with_name("requirements-mlserver.txt")
VENV = ROOT / ".venv" / "bench-mlserver"
# mlserver-sklearn's output names: a request asks for either or both (its default is predict only).
PREDICT = "predict"
PREDICT_PROBA = "predict_proba"


def mlserver_python() -> Path:
    """The MLServer venv's interpreter, created from requirements-mlserver.txt when missing or stale;
    FLYWHEEL_MLSERVER_PYTHON names another one. Raises CalledProcessError when pip cannot install it."""
    override = os.environ.get("FLYWHEEL_MLSERVER_PYTHON")
    if override:
        return Path(override)
    python = VENV / "bin" / "python"
    stamp = VENV / ".requirements"
    wanted = REQUIREMENTS.read_text()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"\ncreating {VENV} from {REQUIREMENTS.name} (once) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", str(REQUIREMENTS)],
        check=True,
    )
    stamp.write_text(wanted)
    return python


def mlserver_version(python: Path) -> str:
    done = subprocess.run(
        [str(python), "-c", "import mlserver; print(mlserver.__version__)"], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


@dataclass(frozen=True)
class MLServerConfig:
    """One way to run MLServer. `settings` go to settings.json (server-wide: parallel_workers, debug, ...),
    `model_settings` to the model's model-settings.json (max_batch_size, max_batch_time, ...); anything
    not named keeps MLServer's default."""

    label: str
    settings: dict[str, Any] = field(default_factory=dict)
    model_settings: dict[str, Any] = field(default_factory=dict)


class MLServerPeer:
    """`mlserver start` serving one joblib-saved estimator as `name`, in its own process group (its
    parallel inference workers are its children). Every port is a free one on 127.0.0.1; the load
    generators use only the gRPC one, the REST and metrics servers stay up as MLServer runs them."""

    def __init__(self, python: Path, estimator: object, name: str, config: MLServerConfig, work: Path) -> None:
        self.name = name
        self.work = work
        self.grpc_port = free_port()
        model_dir = work / "models" / name
        model_dir.mkdir(parents=True)
        joblib.dump(estimator, model_dir / "model.joblib")
        model_settings = {
            "name": name,
            "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": "./model.joblib"},
            **config.model_settings,
        }
        (model_dir / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
        settings = {
            "host": "127.0.0.1",
            "grpc_port": self.grpc_port,
            "http_port": free_port(),
            "metrics_port": free_port(),
            **config.settings,
        }
        (work / "settings.json").write_text(json.dumps(settings, indent=2))
        self.log = work / "mlserver.log"
        # MLSERVER_* variables of this shell would override the files; MLServer's state dirs (.metrics,
        # .envs) go under `work`, its working directory.
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLSERVER")}
        env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(python.parent / "mlserver"), "start", str(work)],
                cwd=work,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def wait_ready(self, timeout_s: float) -> None:
        """Until the model answers is_model_ready over gRPC (all parallel workers have loaded it)."""
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"mlserver exited {self.proc.returncode}:\n{self.tail()}")
            try:
                with tgrpc.InferenceServerClient(self.url) as client:
                    if client.is_model_ready(self.name):
                        return
                    last = "is_model_ready: False"
            except InferenceServerException as exc:
                last = str(exc)
            time.sleep(0.3)
        raise AssertionError(f"mlserver: {self.name} not ready after {timeout_s}s ({last}):\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else "(no log)"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
        try:  # inference workers that outlived the main process go too
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(5)


if __name__ == "__main__":
    if sys.argv[1:] != ["install"]:
        sys.exit(__doc__)
    print(f"{mlserver_python()}: MLServer {mlserver_version(mlserver_python())}")
