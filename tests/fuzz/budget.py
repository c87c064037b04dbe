"""How much the fuzz does. `make test` runs it small and derandomized (the same examples every run,
so CI is reproducible); `make fuzz` sets FLYWHEEL_FUZZ_EXAMPLES (5000 by default) and runs it long
and random, printing the seed a failure reproduces with (FLYWHEEL_FUZZ_SEED)."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, Phase, settings
from hypothesis.configuration import set_hypothesis_home_dir

_EXAMPLES = os.environ.get("FLYWHEEL_FUZZ_EXAMPLES", "").strip()
LONG = bool(_EXAMPLES)
EXAMPLES = int(_EXAMPLES) if LONG else 0

# Kafka: records produced per topic. gRPC: requests per method (some 75 methods, each call a round
# trip, so a twentieth of the records' count).
RECORDS_PER_TOPIC = max(1, EXAMPLES) if LONG else 300
REQUESTS_PER_METHOD = max(20, EXAMPLES // 20) if LONG else 20

# The seed of a long run: drawn, unless given to reproduce one.
SEED = int(os.environ.get("FLYWHEEL_FUZZ_SEED") or random.SystemRandom().randrange(2**32)) if LONG else None


def reproduce_hint() -> str:
    if SEED is None:
        return "derandomized (make test): every run generates the same input"
    return f"reproduce with FLYWHEEL_FUZZ_EXAMPLES={EXAMPLES} FLYWHEEL_FUZZ_SEED={SEED} make fuzz"


# Hypothesis keeps a cache of constants it found in the code under test; outside the repository.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "flywheel-fuzz-hypothesis")

settings.register_profile(
    "flywheel-fuzz",
    # No example database (nothing written to the repository); calls to a live stack have no
    # meaningful deadline; generated input is large by design, so the size health checks do not apply.
    database=None,
    deadline=None,
    derandomize=not LONG,
    suppress_health_check=list(HealthCheck),
    # Examples are sent, not asserted one by one (the properties are checked on the whole run),
    # so there is nothing to shrink.
    phases=(Phase.explicit, Phase.generate),
    print_blob=False,
)
PROFILE = settings.get_profile("flywheel-fuzz")


def fuzz_settings(max_examples: int) -> settings:
    return settings(PROFILE, max_examples=max_examples)
