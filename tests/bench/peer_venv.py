"""The benches' peers (Evidently, NannyML) each live in a venv of their own under .venv/, since they
pin libraries (pandas 2) the project does not use; this creates one from its requirements file, or
recreates it when that file changed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def peer_python(name: str, requirements: Path, override_env: str) -> Path:
    """The interpreter of .venv/<name>, created from `requirements` when missing or stale; the
    environment variable `override_env` names another interpreter instead."""
    override = os.environ.get(override_env)
    if override:
        return Path(override)
    venv = ROOT / ".venv" / name
    python = venv / "bin" / "python"
    stamp = venv / ".requirements"
    wanted = requirements.read_text()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"\ncreating {venv} from {requirements.name} (once) ...", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", str(requirements)],
            check=True,
        )
    except subprocess.CalledProcessError as e:
        pytest.skip(f"bench-only baseline: could not install {requirements.name} into {venv}: {e}")
    stamp.write_text(wanted)
    return python
