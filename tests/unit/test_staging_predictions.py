"""The staging sample's prediction histogram serving reports with its checks (services/serving/staging.py),
which the post-promotion guard compares live windows with."""

from __future__ import annotations

import numpy as np

from services.serving.staging import class_histogram, value_histogram


def test_class_counts_follow_the_signature_order_and_skip_indices_outside_it() -> None:
    h = class_histogram(np.array([1, 1, 0, 2, 2, 2, 7, -1]), ["a", "b", "c"])
    assert list(h.classes) == ["a", "b", "c"] and list(h.counts) == [1, 2, 3]
    assert list(class_histogram(np.array([], dtype=np.int64), ["a", "b"]).counts) == [0, 0]


def test_regression_bins_are_between_the_deciles_and_hold_every_finite_value_once() -> None:
    values = np.concatenate([np.arange(1000, dtype=np.float64), [np.nan, np.inf]])
    h = value_histogram(values)
    assert len(h.edges) == 9 and list(h.edges) == sorted(h.edges)
    assert len(h.counts) == 10 and sum(h.counts) == 1000
    assert max(h.counts) - min(h.counts) <= 2, "deciles split the values evenly"
    # bin i holds [edges[i-1], edges[i]): the value equal to an edge lands above it
    edges = np.asarray(h.edges)
    assert np.array_equal(np.bincount(np.searchsorted(edges, np.arange(1000.0), side="right"), minlength=10), h.counts)
    constant = value_histogram(np.full(50, 3.0))
    assert list(constant.edges) == [3.0] and list(constant.counts) == [0, 50]
    assert not value_histogram(np.array([np.nan])).counts
