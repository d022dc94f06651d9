"""Spherical k-means: k-means by cosine similarity, with centroids kept on the unit sphere.

KMeans run on L2-normalised features assigns each point to the nearest
centroid by Euclidean distance, but its centroids (means of unit vectors) lie
inside the sphere, so the assignment is not by cosine similarity. Spherical
k-means (Dhillon and Modha, 2001) renormalises every centroid after each
update and assigns each point to the centroid of highest cosine similarity; its
objective is the sum over points of ``1 - cos(point, centroid)``.
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import kmeans_plusplus
from sklearn.preprocessing import normalize


def spherical_kmeans(
    X: np.ndarray,
    n_clusters: int,
    *,
    n_init: int = 10,
    max_iter: int = 300,
    random_state: int = 0,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Cluster the directions of ``X`` into ``n_clusters`` groups.

    Parameters
    ----------
    X : numpy.ndarray, shape (n, d)
        Points; each is normalised to unit length (a zero row stays zero and
        joins the first cluster).
    n_clusters : int
        Number of clusters.
    n_init : int, default 10
        Starts (k-means++ seeding on the unit vectors); the one with the lowest
        objective is kept.
    max_iter : int, default 300
        Iterations per start at most; a start stops early when no point moves.
    random_state : int, default 0
        Seed of the starts.

    Returns
    -------
    labels : numpy.ndarray of int, shape (n,)
    centres : numpy.ndarray, shape (n_clusters, d)
        Unit vectors.
    objective : float
        ``sum(1 - cos(x_i, centre of x_i))`` of the kept start.
    """
    U = normalize(np.asarray(X, dtype=np.float64))
    if not 1 <= n_clusters <= U.shape[0]:
        raise ValueError(f"n_clusters={n_clusters} for {U.shape[0]} points")
    rng = np.random.default_rng(random_state)
    best = None
    for _ in range(n_init):
        centres, _ = kmeans_plusplus(U, n_clusters, random_state=int(rng.integers(2**31 - 1)))
        centres = normalize(centres)
        labels = None
        for _ in range(max_iter):
            new = np.argmax(U @ centres.T, axis=1)
            if labels is not None and np.array_equal(new, labels):
                break
            labels = new
            sums = np.zeros_like(centres)
            np.add.at(sums, labels, U)
            empty = ~sums.any(axis=1)
            # an emptied cluster restarts at the point farthest from its centre
            for k in np.flatnonzero(empty):
                sums[k] = U[np.argmin(np.sum(U * centres[labels], axis=1))]
            centres = normalize(sums)
        objective = float(np.sum(1.0 - np.sum(U * centres[labels], axis=1)))
        if best is None or objective < best[2]:
            best = (labels.astype(np.int64), centres, objective)
    return best
