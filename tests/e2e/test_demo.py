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
        "serving v2 again",
    ):
        assert step in out, (step, out)
