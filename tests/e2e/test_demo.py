"""`make run` runs `flywheel up --demo`: the demo must walk the whole loop on a fresh stack."""

from __future__ import annotations

from .stack import UpProcess


def test_demo_walks_the_whole_loop(tmp_path):
    stack = UpProcess(tmp_path / "home")
    stack.start()
    try:
        demo = stack.cli("demo", timeout_s=300)
    finally:
        stack.kill_all()
    out = " ".join(demo.stdout.split())
    assert demo.returncode == 0, demo.stdout + demo.stderr
    for step in (
        "ingested dataset",
        "serving v1",
        "reference traffic: 2 windows, breached: nothing",
        "drift detected",
        "waiting_for_data",
        "retrained on dataset v2",
        "registry: better",
        "one trace links alert, run, registration, checks, promotion and swap",
        # act two: a bad snapshot's model is promoted, live labels show it wrong, the guard rolls it back
        "dataset v3 arrives with every label inverted",
        "serving v3",
        "rolled back by guard: v3 breached in window",
        "rolled back to v2",
        "(guard_rollback)",
        "serving v2 again",
        # act three: a progressive policy stops the next bad snapshot at its first canary step
        "promotion policy: progressive",
        "a canary for 25% of requests",
        "rollout of v4 aborted (rollout): canary at 25% aborted: quality_drop",
        "(rollout_aborted)",
        "v2 keeps production",
        ", 0 failed",
    ):
        assert step in out, (step, out)
