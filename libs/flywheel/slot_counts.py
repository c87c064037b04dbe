"""Counting a model version's requests from serving's per-slot counters (each slot counts from its
load; a replica that restarts starts its slots over), for whoever judges an error rate over a period:
the registry's rollout steps and monitoring's post-promotion guard."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

Slots = Mapping[str, tuple[int, int]]  # slot key (replica, pid, load time) -> (requests, errors)


def since_baseline(stored: Any, slots: Slots) -> tuple[dict[str, list[int]], int, int]:
    """(baseline, requests, errors) since the stored baseline (a jsonb column as asyncpg returns it:
    JSON text or a dict): each slot counts from the first time it was seen (a slot seen now for the
    first time joins the baseline at its counts, so a canary's slot that became production's brings
    none of its canary requests); a slot whose counts went back (reloaded under the same key) starts
    over; slots gone (a replica restarted) drop out. A stored baseline that is not one (NULL, another
    format, junk) counts as empty."""
    baseline = json.loads(stored) if isinstance(stored, str | bytes) else stored
    if not isinstance(baseline, Mapping):
        baseline = {}
    new: dict[str, list[int]] = {}
    requests = errors = 0
    for key, (r, e) in slots.items():
        base = baseline.get(key)
        if not (isinstance(base, list) and len(base) == 2 and all(isinstance(v, int) for v in base)):
            base = [r, e]
        if r < base[0] or e < base[1]:
            base = [r, e]
        new[key] = [int(base[0]), int(base[1])]
        requests += r - base[0]
        errors += e - base[1]
    return new, requests, errors
