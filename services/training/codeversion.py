"""The code version recorded on runs and models: package version, plus the git sha when known."""

from __future__ import annotations

import os
import subprocess
from functools import lru_cache
from pathlib import Path

import flywheel


@lru_cache(maxsize=1)
def code_version() -> str:
    sha = os.environ.get("FLYWHEEL_GIT_SHA", "")
    if not sha:
        try:
            sha = subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                cwd=Path(__file__).resolve().parent,
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            sha = ""
    return f"{flywheel.__version__}+g{sha}" if sha else flywheel.__version__
