"""Drift check: 1M rows x 20 numeric features, Flywheel vs Evidently's DataDriftPreset.

Data: seeded normals (feature i: mean i, sd 1 + i/4), reference and current 1M rows each; four current
features are shifted (mean and/or scale). No nulls (Evidently's PSI binning cannot take NaN).
- Flywheel: the reference profile is built once by ingestion's build_profile (all rows "train"; not
  timed, ingestion builds it when the dataset version is written); timed: evaluate_window on the 1M
  current rows (PSI on the profile's 10 quantile bins, KS against its 5000-row sample, integrity).
- Evidently: Report([DataDriftPreset(num_method="psi"), DataDriftPreset(num_method="ks")]) on the full
  reference and current DataFrames; timed: Dataset.from_pandas + Report.run. It runs in its own venv
  (tests/bench/requirements-drift.txt says why) as a subprocess that reads the same data from Parquet.
Flywheel is timed best of 3, Evidently once (it takes about a minute); goal: Flywheel >= 10x faster.

What is compared, and why each tolerance holds:
- PSI. Evidently bins a numeric column (> 20 distinct values) into Sturges equal-width bins over
  reference + current; Flywheel uses the reference's quantile bins. (a) Same bins: Evidently's PSI
  stat test run on each row's profile-bin index (a <= 20-valued column, so it takes the per-value path)
  against Flywheel's PSI: the same proportions and formula, so equal to 1e-9. (b) Evidently's own bins:
  the same Sturges counts through flywheel.drift.psi differ from Evidently's PSI only in how tiny shares
  are treated (Flywheel floors every share at 1e-4; Evidently fills only empty bins, with min share / 1e6
  or 1e-4), which matters where a tail bin is nearly empty on one side and not on the other (a scale
  change): the difference is printed, and with Evidently's fill rule in place of the floor the same
  counts must give Evidently's value to 1e-9, so the floor is the whole difference. (c) Flywheel's
  reported PSI against Evidently's reported PSI: different binnings, so only printed, and the features
  over 0.2 must be the same.
- KS. Evidently reports scipy.stats.ks_2samp's p-value on the full reference; drift.ks_2samp on the
  same full data must give the same p-value (1e-9). Flywheel's monitoring KS uses the profile's sample
  S instead of the reference R, so its statistic differs from the full-reference one by at most
  sup|F_S - F_R| (triangle inequality for the sup norm), which is computed and asserted per feature.
Timings are printed, not asserted (machines vary); the asserts are deterministic correctness checks.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from flywheel.v1 import common_pb2, monitoring_pb2
from services.ingestion.profile import bin_index, build_profile
from services.ingestion.versioning import SPLIT_COLUMN, TRAIN
from services.monitoring import drift
from services.monitoring.windows import WindowInput, evaluate_window
from tests.bench.peer_venv import peer_python

ROWS = 1_000_000
FEATURES = 20
NAMES = [f"f{i}" for i in range(FEATURES)]
# feature index -> (mean shift in standard deviations, scale factor) of the current data
SHIFTS = {1: (0.75, 1.0), 6: (0.0, 2.0), 11: (1.0, 1.0), 16: (-0.75, 1.3)}
SHIFTED = {NAMES[i] for i in SHIFTS}
REPEATS = 3
GOAL = 10.0
PSI_FLAG = 0.2
REQUIREMENTS = Path(__file__).with_name("requirements-drift.txt")

_EVIDENTLY_SCRIPT = r"""
import json, sys, time, warnings
import pandas as pd

work = sys.argv[1]
ref = pd.read_parquet(f"{work}/reference.parquet")
cur = pd.read_parquet(f"{work}/current.parquet")
import evidently
from evidently import DataDefinition, Dataset, Report
from evidently.legacy.calculations.stattests import psi_stat_test
from evidently.legacy.core import ColumnType
from evidently.presets import DataDriftPreset

warnings.simplefilter("ignore")
columns = list(ref.columns)
definition = DataDefinition(numerical_columns=columns)
start = time.perf_counter()
reference = Dataset.from_pandas(ref, data_definition=definition)
current = Dataset.from_pandas(cur, data_definition=definition)
snapshot = Report([DataDriftPreset(num_method="psi"), DataDriftPreset(num_method="ks")]).run(current, reference)
seconds = time.perf_counter() - start
values = {"psi": {}, "ks": {}}
for metric in snapshot.dict()["metrics"]:
    config = metric["config"]
    if config.get("type", "").endswith("ValueDrift"):
        values[config["method"]][config["column"]] = float(metric["value"])
# Untimed: Evidently's PSI test on the rows' profile-bin indices (Flywheel's binning).
ref_bins = pd.read_parquet(f"{work}/reference_bins.parquet")
cur_bins = pd.read_parquet(f"{work}/current_bins.parquet")
on_profile_bins = {
    c: float(psi_stat_test(ref_bins[c], cur_bins[c], ColumnType.Categorical, 0.1).drift_score) for c in columns
}
json.dump(
    {"version": evidently.__version__, "seconds": seconds, "psi": values["psi"], "ks_p": values["ks"],
     "psi_profile_bins": on_profile_bins},
    open(f"{work}/evidently.json", "w"),
)
"""


def _columns(seed: int, shifted: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    cols = {}
    for i, name in enumerate(NAMES):
        scale = 1 + i / 4
        shift, factor = SHIFTS.get(i, (0.0, 1.0)) if shifted else (0.0, 1.0)
        cols[name] = rng.normal(loc=i + shift * scale, scale=scale * factor, size=ROWS)
    return cols


def _schema() -> common_pb2.Schema:
    return common_pb2.Schema(fields=[common_pb2.Field(name=n, type=common_pb2.FIELD_TYPE_FLOAT) for n in NAMES])


def _evidently_python() -> Path:
    return peer_python("bench-evidently", REQUIREMENTS, "FLYWHEEL_EVIDENTLY_PYTHON")


def _run_evidently(python: Path, work: Path) -> dict:
    env = dict(os.environ, DO_NOT_TRACK="1")  # Evidently's usage telemetry stays off
    done = subprocess.run(
        [str(python), "-c", _EVIDENTLY_SCRIPT, str(work)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((work / "evidently.json").read_text())


def _evidently_fill(shares: np.ndarray) -> np.ndarray:
    """Evidently's treatment of empty bins (stattests/utils.py get_binned_data), for comparison only."""
    smallest = shares[shares > 0].min()
    return np.where(shares == 0, smallest / 10**6 if smallest <= 0.0001 else 0.0001, shares)


def _sturges_psi(ref: np.ndarray, cur: np.ndarray) -> tuple[float, float]:
    """PSI on Evidently's numeric binning (Sturges edges over reference + current): flywheel.drift.psi,
    and the same formula with Evidently's empty-bin fill instead of Flywheel's eps floor."""
    edges = np.histogram_bin_edges(np.concatenate([ref, cur]), bins="sturges")
    e, a = np.histogram(ref, edges)[0], np.histogram(cur, edges)[0]
    pe, pa_ = _evidently_fill(e / len(ref)), _evidently_fill(a / len(cur))
    return drift.psi(e, a), float(np.sum((pe - pa_) * np.log(pe / pa_)))


def test_drift_check_vs_evidently(tmp_path: Path) -> None:
    python = _evidently_python()
    reference = _columns(seed=1, shifted=False)
    current = _columns(seed=2, shifted=True)
    schema = _schema()
    table = pa.table({**reference, SPLIT_COLUMN: pa.array([TRAIN] * ROWS)})
    profile = build_profile(table, schema)  # ingestion's job, not timed
    del table

    policy = monitoring_pb2.MonitoringPolicy()
    window = WindowInput(features=current, outputs={}, latency_ms=np.empty(0), field_counts=dict.fromkeys(NAMES, ROWS))
    times = []
    report = None
    for _ in range(REPEATS):
        gc.collect()
        start = time.perf_counter()
        report = evaluate_window(profile, schema, policy, window, task=common_pb2.TASK_CLASSIFICATION, label_field="")
        times.append(time.perf_counter() - start)
    assert report is not None
    flywheel_s = min(times)
    ours = {(s.feature, s.statistic): s for s in report.feature_scores}

    # The same data for Evidently, plus each row's profile-bin index for the same-bins PSI comparison.
    pq.write_table(pa.table(reference), tmp_path / "reference.parquet", compression="none")
    pq.write_table(pa.table(current), tmp_path / "current.parquet", compression="none")
    for name, cols in (("reference_bins", reference), ("current_bins", current)):
        bins = {n: bin_index(profile["features"][n]["bin_edges"], cols[n]).astype(np.int8) for n in NAMES}
        pq.write_table(pa.table(bins), tmp_path / f"{name}.parquet")
    gc.collect()
    evidently = _run_evidently(python, tmp_path)
    evidently_s = evidently["seconds"]

    rows = []
    diffs = dict.fromkeys(
        ["psi_same_bins", "psi_sturges", "psi_sturges_fill", "psi_reported", "ks_p_full", "ks_stat"], 0.0
    )
    for name in NAMES:
        psi_fw = ours[(name, "psi")].score
        ks_fw = ours[(name, "ks")]
        sample = np.sort(np.asarray(profile["features"][name]["sample"]))
        full_stat, full_p = drift.ks_2samp(reference[name], current[name])
        sample_vs_ref, _ = drift.ks_2samp_sorted(sample, np.sort(reference[name]))
        psi_sturges, psi_sturges_fill = _sturges_psi(reference[name], current[name])
        d = {
            "psi_same_bins": abs(evidently["psi_profile_bins"][name] - psi_fw),
            "psi_sturges": abs(evidently["psi"][name] - psi_sturges),
            "psi_sturges_fill": abs(evidently["psi"][name] - psi_sturges_fill),
            "psi_reported": abs(evidently["psi"][name] - psi_fw),
            "ks_p_full": abs(evidently["ks_p"][name] - full_p),
            "ks_stat": abs(ks_fw.score - full_stat),
        }
        for key, value in d.items():
            diffs[key] = max(diffs[key], value)
        # The sample's statistic is within sup|F_S - F_R| of the full reference's (exact, not probabilistic).
        assert d["ks_stat"] <= sample_vs_ref + 1e-12, (name, d["ks_stat"], sample_vs_ref)
        rows.append(
            f"{name:>4} {'*' if name in SHIFTED else ' '} psi fw={psi_fw:8.4f} ev={evidently['psi'][name]:8.4f}"
            f" ev@profile-bins={evidently['psi_profile_bins'][name]:8.4f} | ks fw D={ks_fw.score:.4f}"
            f" p={ks_fw.p_value:.2e}  full-ref D={full_stat:.4f} p={full_p:.2e} ev p={evidently['ks_p'][name]:.2e}"
        )

    ratio = evidently_s / flywheel_s
    print(f"\nDrift check, {ROWS:,} rows x {FEATURES} numeric features (* = shifted), Evidently {evidently['version']}")
    print("\n".join(rows))
    print(
        f"Flywheel evaluate_window: {flywheel_s:.3f} s (best of {REPEATS}; runs {', '.join(f'{t:.3f}' for t in times)})"
    )
    print(f"Evidently DataDriftPreset psi+ks: {evidently_s:.2f} s (one run)")
    print(f"ratio: Flywheel {ratio:.1f}x faster; goal >= {GOAL:.0f}x: {'met' if ratio >= GOAL else 'NOT met'}")
    print(
        "max |diff| vs Evidently: PSI on the profile's bins {psi_same_bins:.1e}; PSI on Evidently's Sturges bins"
        " {psi_sturges:.3f} (eps floor; with Evidently's empty-bin fill {psi_sturges_fill:.1e}); PSI as reported"
        " (quantile vs Sturges bins) {psi_reported:.3f}; KS p-value on the full reference {ks_p_full:.1e};"
        " KS statistic, profile sample vs full reference {ks_stat:.4f}".format(**diffs)
    )

    breached = {s.feature for s in report.feature_scores if s.breached}
    assert breached == SHIFTED
    assert {n for n in NAMES if evidently["psi"][n] >= PSI_FLAG} == SHIFTED
    assert {n for n in NAMES if ours[(n, "psi")].score >= PSI_FLAG} == SHIFTED
    assert all(evidently["ks_p"][n] < 1e-6 for n in SHIFTED)
    assert diffs["psi_same_bins"] <= 1e-9
    assert diffs["psi_sturges_fill"] <= 1e-9
    assert diffs["ks_p_full"] <= 1e-9
