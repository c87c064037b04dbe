"""A production version serving could not load: what is shown for it, and when to try it again.

A model file that fails to load (ModelLoadError: refused by the trial load or by ONNX Runtime)
fails the same way next time, and every try costs a child process that may run to the memory
limit or the timeout; the reconciler tries such a version again after a backoff that doubles from
RETRY_BASE_S to RETRY_MAX_S. Any other failure (the registry unreachable, a download cut short)
is retried at the reconciler's next pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from flywheel.v1 import common_pb2

RETRY_BASE_S = 60.0
RETRY_MAX_S = 3600.0


@dataclass
class LoadFailure:
    version: int
    role: common_pb2.ServingRole.ValueType
    error: str
    permanent: bool  # the model file's own fault: retried only after the backoff
    attempts: int = 1
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    retry_at: float = 0.0  # time.monotonic()

    def __post_init__(self) -> None:
        self.retry_at = time.monotonic() + self.retry_in_s()

    def retry_in_s(self) -> float:
        if not self.permanent:
            return 0.0
        return min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (self.attempts - 1))

    def due(self, version: int, now: float | None = None) -> bool:
        """Whether loading `version` should be tried now (always, for another version)."""
        return version != self.version or (now if now is not None else time.monotonic()) >= self.retry_at


def record(
    previous: LoadFailure | None, version: int, role: common_pb2.ServingRole.ValueType, error: str, permanent: bool
) -> LoadFailure:
    """The failure after one more failed try (attempts count up for the same version)."""
    attempts = previous.attempts + 1 if previous is not None and previous.version == version else 1
    return LoadFailure(version, role, error, permanent, attempts)
