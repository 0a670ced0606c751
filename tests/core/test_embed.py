"""t-SNE panels and cluster quality on tiny synthetic features."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import LeaveOneOut, cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from peru_core import embed
from peru_core.errors import PeruError


def _blobs(n_per=15, classes=3, d=16, spread=0.1, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n_per)
    centres = np.eye(d)[:classes] * 5.0
    return centres[y] + spread * rng.normal(size=(len(y), d)), y


def test_sample_per_class_takes_exactly_per_class():
    y = np.array([0] * 30 + [1] * 5 + [2] * 25)
    idx = embed.sample_per_class(y, per_class=20, seed=1)
    assert np.all(np.diff(idx) > 0)
    assert np.bincount(y[idx]).tolist() == [20, 5, 20]
    assert np.array_equal(idx, embed.sample_per_class(y, per_class=20, seed=1))


def test_tsne_is_deterministic_and_keeps_separated_clusters_apart():
    x, y = _blobs()
    a = embed.tsne(x, perplexity=10, seed=3)
    assert a.shape == (len(y), 2)
    assert np.array_equal(a, embed.tsne(x, perplexity=10, seed=3))
    assert embed.cluster_quality(a, y)["knn_accuracy"] == 1.0


def test_perplexity_is_clamped_to_sample_count():
    assert embed.effective_perplexity(31, 30.0) == 10.0
    assert embed.effective_perplexity(1000, 30.0) == 30.0


def test_cluster_quality_matches_sklearn_leave_one_out():
    x, y = _blobs(n_per=20, classes=2, spread=4.0, seed=2)  # overlapping: accuracy strictly between 0.5 and 1
    q = embed.cluster_quality(x, y, k=5)  # two classes, odd k: no ties, so the vote equals scikit-learn's
    ref = cross_val_score(KNeighborsClassifier(5, metric="cosine"), x, y, cv=LeaveOneOut()).mean()
    assert q["knn_accuracy"] == pytest.approx(ref)
    assert 0.5 < q["knn_accuracy"] < 1.0
    tight = embed.cluster_quality(*_blobs(spread=0.01))
    assert tight["silhouette"] > 0.95 and tight["knn_accuracy"] == 1.0


def test_embed_panels_share_samples_and_reject_bad_input():
    x, y = _blobs(n_per=8)
    points, quality = embed.embed_panels({"A": x, "B": x * 2.0}, y, ["c0", "c1", "c2"], perplexity=5, seed=0)
    assert list(quality["panel"]) == ["A", "B"]
    assert set(points["class"]) == {"c0", "c1", "c2"} and len(points) == 2 * len(y)
    with pytest.raises(PeruError):
        embed.embed_panels({"A": x[:-1]}, y, ["c0", "c1", "c2"])
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(PeruError):
        embed.tsne(bad)
