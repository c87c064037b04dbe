"""The CLI against real services: a user's path from a CSV file to a downloaded model."""

from __future__ import annotations

import hashlib
import json

from .clients import make_csv, schema
from .stack import UpProcess


def _ok(stack: UpProcess, *args: str) -> str:
    result = stack.cli(*args, timeout_s=180)
    assert result.returncode == 0, f"flywheel {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_cli_from_csv_to_downloaded_model(stack, tmp_path):
    from google.protobuf import json_format

    (tmp_path / "schema.json").write_text(json_format.MessageToJson(schema()))
    (tmp_path / "data.csv").write_bytes(make_csv(5_000, seed=11))
    spec = {
        "name": "cli-lr",
        "dataset": "cli-data",
        "modelName": "cli-model",
        "task": "TASK_CLASSIFICATION",
        "estimator": "ESTIMATOR_LOGISTIC_REGRESSION",
        "metric": "accuracy",
        "searchSpace": {"strategy": "SEARCH_STRATEGY_GRID", "params": {"C": {"choices": [0.5, 1.0]}}},
        "triggers": {"onDataVersioned": True},
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))

    _ok(stack, "datasets", "create", "cli-data", "--schema", str(tmp_path / "schema.json"))
    _ok(stack, "specs", "create", "--file", str(tmp_path / "spec.json"))
    ingest = json.loads(_ok(stack, "datasets", "ingest", "cli-data", str(tmp_path / "data.csv"), "--json"))
    assert ingest["version"]["row_count"] == "5000" and ingest["created"] is True

    shown = json.loads(_ok(stack, "datasets", "show", "cli-data", "--version", "1", "--json"))
    assert shown["ref"]["version"] == "1" and shown["row_count"] == "5000"

    # The data.versioned run, then a manual one: watch both to the end, compare them.
    runs = []
    for _ in range(100):
        runs = json.loads(_ok(stack, "runs", "list", "--spec", "cli-lr", "--json"))["runs"]
        if runs:
            break
    first = runs[0]["run_id"]
    _ok(stack, "runs", "watch", first)
    started = json.loads(_ok(stack, "runs", "start", "cli-lr", "--seed", "5", "--json"))
    second = started["run"]["run_id"]
    _ok(stack, "runs", "watch", second)
    compared = json.loads(_ok(stack, "runs", "compare", first, second, "--json"))
    assert {row["name"] for row in compared["metrics"]} >= {"accuracy", "f1"}

    run = json.loads(_ok(stack, "runs", "show", first, "--json"))
    assert run["status"] == "RUN_STATUS_SUCCEEDED"
    lineage = json.loads(_ok(stack, "models", "lineage", "cli-model:1", "--json"))
    assert lineage["lineage"]["run_id"] == first
    listed = json.loads(_ok(stack, "models", "list", "--json"))
    assert [m["name"] for m in listed["models"]] == ["cli-model"]

    out = tmp_path / "model.onnx"
    _ok(stack, "models", "download", "cli-model:1", "--out", str(out))
    shown_model = json.loads(_ok(stack, "models", "show", "cli-model:1", "--json"))
    assert hashlib.sha256(out.read_bytes()).hexdigest() == shown_model["checksum"]

    missing = stack.cli("models", "show", "no-such-model")
    assert missing.returncode == 1 and missing.stderr.strip().startswith("error: NOT_FOUND:"), missing.stderr
