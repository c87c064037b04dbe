"""Predicted values as counts in bins, one convention for every service that writes or reads a
PredictionHistogram (serving's staging sample, monitoring's canary and guard comparisons): edges are
the reference values' deciles (duplicates dropped), and bin i holds values in [edges[i-1], edges[i])."""

from __future__ import annotations

import numpy as np


def decile_edges(values: np.ndarray) -> np.ndarray:
    """The distinct deciles (10%..90%) of the finite values; empty when there are none."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return np.unique(np.quantile(v, np.linspace(0.1, 0.9, 9))) if len(v) else np.empty(0)


def bin_counts(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Counts of the finite values in the len(edges) + 1 bins the edges make."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return np.bincount(np.searchsorted(edges, v, side="right"), minlength=len(edges) + 1)
