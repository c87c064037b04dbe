"""Drift statistics: PSI, the two-sample Kolmogorov-Smirnov test and chi-square, vectorised in NumPy.

Numeric features are compared with the reference profile (services/ingestion/profile.py) in two ways:
- PSI on the profile's reference-quantile bins (`bin_edges`, `histogram`), with the current values
  binned by the same rule (`profile.bin_index`), so a value lands in the same bin on both sides;
- the two-sample KS test of the current values against the profile's reservoir `sample`.
Categorical (and bool) features: PSI and a chi-square goodness-of-fit test of the current category
counts against the reference `category_frequencies`, with one extra "__other__" bucket for
categories the reference never saw.

Nothing here loops over rows in Python: counting is searchsorted/bincount/hash lookups and the KS
statistic is found from sorted arrays. The sorted-input variants (`ks_2samp_sorted`,
`histogram_sorted`) let a caller sort a column once and reuse it for every statistic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats
from scipy.stats import distributions

from services.ingestion.profile import bin_index

DEFAULT_EPS = 1e-4
OTHER = "__other__"
# scipy.stats.ks_2samp(method="auto") is exact up to this sample size, asymptotic above it.
KS_MAX_EXACT_N = 10000

try:  # scipy's own exact two-sample routine, so small-sample p-values are scipy's to the bit
    from scipy.stats._stats_py import _attempt_exact_2kssamp
except ImportError:  # pragma: no cover - private name moved; fall back to the public function
    _attempt_exact_2kssamp = None


def psi(expected: np.ndarray, actual: np.ndarray, eps: float = DEFAULT_EPS) -> float:
    """Population stability index of two count (or proportion) vectors over the same bins.

    With e_i = max(expected_i / sum(expected), eps) and a_i = max(actual_i / sum(actual), eps):
        PSI = sum_i (a_i - e_i) * ln(a_i / e_i)
    The eps floor keeps an empty bin from giving log(0) (and an infinite PSI); it is applied to the
    proportions and they are not renormalised. NaN when either side has no mass.
    """
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape:
        raise ValueError(f"psi: bins differ ({e.shape} vs {a.shape})")
    e_total, a_total = e.sum(), a.sum()
    if e_total <= 0 or a_total <= 0:
        return math.nan
    e = np.maximum(e / e_total, eps)
    a = np.maximum(a / a_total, eps)
    return float(np.sum((a - e) * np.log(a / e)))


def _present(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    return v[~np.isnan(v)]


def histogram_sorted(bin_edges: Sequence[float] | np.ndarray, ordered: np.ndarray) -> np.ndarray:
    """Counts per profile bin of sorted, NaN-free values: equal to bincount(bin_index(edges, values)).

    Bin i holds e_i <= v < e_{i+1}, so the boundary before inner edge e_i is the number of values
    below it: a handful of binary searches instead of one per value.
    """
    inner = np.asarray(bin_edges, dtype=np.float64)[1:-1]
    below = np.searchsorted(ordered, inner, side="left")
    return np.diff(np.concatenate([[0], below, [len(ordered)]]))


def psi_numeric(
    bin_edges: Sequence[float] | np.ndarray, ref_histogram: Sequence[int] | np.ndarray, values: np.ndarray
) -> float:
    """PSI of `values` against the reference histogram, binned with profile.bin_index; NaN ignored."""
    hist = np.asarray(ref_histogram, dtype=np.float64)
    if len(bin_edges) < 2 or len(hist) == 0:
        return math.nan  # the reference column had no values, so it has no bins
    present = _present(values)
    counts = np.bincount(bin_index(np.asarray(bin_edges, dtype=np.float64), present), minlength=len(hist))
    return psi(hist, counts)


def ks_2samp(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sided two-sample KS test: (statistic, p-value), equal to scipy.stats.ks_2samp(a, b).

    Like scipy, NaN anywhere gives (nan, nan) and an empty sample raises ValueError.
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if min(len(x), len(y)) == 0:
        raise ValueError("Data passed to ks_2samp must not be empty")
    if np.isnan(x).any() or np.isnan(y).any():
        return math.nan, math.nan
    return ks_2samp_sorted(np.sort(x), np.sort(y))


def _ks_statistic_sorted(x: np.ndarray, y: np.ndarray) -> float:
    """sup |F_x - F_y| from sorted samples, evaluated only where it can peak.

    scipy evaluates cdf_x - cdf_y at every point of x and y (2 x (n+m) binary searches). F_x - F_y
    only rises at points of x, so its maximum is at one of x's distinct values; F_y - F_x only rises
    at points of y, and between consecutive distinct x values u_j < u_{j+1} it peaks just below
    u_{j+1}, at #(y < u_{j+1}) / m, which the largest y in [u_j, u_{j+1}) attains (when there is
    none, the value at u_j itself is the same number). So (n_distinct(x) + 1) x 2 searches into y
    suffice, and each candidate is the same float (i/n - k/m) scipy computes: the result is equal.
    The roles are symmetric, so the sample with fewer distinct values plays x.
    """
    ux = x[np.concatenate([x[1:] != x[:-1], [True]])]  # distinct values, the last of each run
    uy_count = np.count_nonzero(y[1:] != y[:-1]) + 1
    if uy_count < len(ux):
        d_plus, d_minus = _ks_extremes(y, x)
        return d_minus if d_minus > d_plus else d_plus
    d_plus, d_minus = _ks_extremes(x, y, ux)
    return d_minus if d_minus > d_plus else d_plus


def _ks_extremes(x: np.ndarray, y: np.ndarray, ux: np.ndarray | None = None) -> tuple[float, float]:
    """(max(F_x - F_y), max(F_y - F_x) clipped at 0) over x u y, for sorted x and y."""
    n, m = len(x), len(y)
    if ux is None:
        ux = x[np.concatenate([x[1:] != x[:-1], [True]])]
    fx = np.searchsorted(x, ux, side="right") / n  # F_x at each distinct x value
    fy_at = np.searchsorted(y, ux, side="right") / m  # F_y at the same points
    d_plus = float(np.max(fx - fy_at))
    # F_y just below each distinct x value, minus F_x on the step before it (0 before the first).
    fy_below = np.searchsorted(y, ux, side="left") / m
    fx_before = np.concatenate([[0.0], fx[:-1]])
    d_minus = float(max(np.max(fy_below - fx_before), 0.0))
    return d_plus, d_minus


def ks_2samp_sorted(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """ks_2samp on samples already sorted ascending and free of NaN (no copy, no re-sort)."""
    n1, n2 = len(x), len(y)
    if min(n1, n2) == 0:
        raise ValueError("Data passed to ks_2samp must not be empty")
    d = _ks_statistic_sorted(x, y)
    # The p-value follows scipy.stats.ks_2samp(method="auto", alternative="two-sided") step by step.
    if max(n1, n2) <= KS_MAX_EXACT_N:
        if _attempt_exact_2kssamp is None:  # pragma: no cover
            result = stats.ks_2samp(x, y)
            return float(result.statistic), float(result.pvalue)
        g = math.gcd(n1, n2)
        success, d_exact, prob = _attempt_exact_2kssamp(n1, n2, g, d, "two-sided")
        if success:
            return float(d_exact), float(np.clip(prob, 0, 1))
        d = float(d_exact)  # scipy keeps the lattice-rounded statistic when it falls back
    m, n = sorted([float(n1), float(n2)], reverse=True)
    en = m * n / (m + n)
    prob = distributions.kstwo.sf(d, np.round(en))
    return float(d), float(np.clip(prob, 0, 1))


def category_codes(categories: Sequence[str], values: np.ndarray) -> np.ndarray:
    """Index of each value in `categories` (hash lookups), len(categories) for any other value.

    `values` must be NaN/None-free strings (see windows.to_category).
    """
    codes = pd.Index(list(categories), dtype=object).get_indexer(np.asarray(values, dtype=object))
    codes[codes < 0] = len(categories)
    return codes


def category_counts(ref_freq: Mapping[str, float], values: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(buckets, observed counts, reference proportions): the reference categories, then OTHER.

    Null values (None/NaN) are ignored. OTHER has reference proportion 0.
    """
    keys = list(ref_freq)
    v = np.asarray(values, dtype=object)
    v = v[~pd.isna(v)]
    counts = np.bincount(category_codes(keys, v), minlength=len(keys) + 1)
    expected = np.array([ref_freq[k] for k in keys] + [0.0], dtype=np.float64)
    return [*keys, OTHER], counts, expected


def psi_categorical(ref_freq: Mapping[str, float], values: np.ndarray, eps: float = DEFAULT_EPS) -> float:
    """PSI over the reference categories plus OTHER (unseen categories); nulls ignored."""
    _, counts, expected = category_counts(ref_freq, values)
    return psi(expected, counts, eps)


def chi2_expected(observed: np.ndarray, expected: np.ndarray, eps: float = DEFAULT_EPS) -> np.ndarray:
    """Expected counts for the chi-square test: reference proportions floored at eps, renormalised, x n.

    The floor only matters for OTHER (reference proportion 0), whose expected count would otherwise
    be 0 and the statistic infinite; with the floor, unseen categories give a large, finite statistic.
    """
    p = np.maximum(np.asarray(expected, dtype=np.float64), eps)
    return p / p.sum() * np.asarray(observed).sum()


def chi2_counts(observed: np.ndarray, expected: np.ndarray, eps: float = DEFAULT_EPS) -> tuple[float, float]:
    """Chi-square goodness of fit of category counts (last bucket OTHER) against reference proportions.

    OTHER takes part only when something landed in it, so with no unseen category this is the test
    against the reference frequencies exactly. (statistic, p-value) = scipy.stats.chisquare(observed,
    chi2_expected(observed, expected)); (0, 1) with fewer than two buckets or no observations.
    """
    obs = np.asarray(observed, dtype=np.float64)
    exp = np.asarray(expected, dtype=np.float64)
    if obs[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    if len(obs) < 2 or obs.sum() == 0:
        return 0.0, 1.0
    result = stats.chisquare(obs, chi2_expected(obs, exp, eps))
    return float(result.statistic), float(result.pvalue)


def chi2_categorical(ref_freq: Mapping[str, float], values: np.ndarray) -> tuple[float, float]:
    """Chi-square goodness of fit of the values' category counts against the reference frequencies."""
    _, counts, expected = category_counts(ref_freq, values)
    return chi2_counts(counts, expected)
