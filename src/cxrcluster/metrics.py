"""How far a clustering is from the labels: matched and raw label change, ARI, NMI, purity.

The headline figure of the study is :func:`matched_label_change`: clusters are
first matched one-to-one to classes so that as many images as possible keep
their label (the Hungarian algorithm on the cluster x class contingency
table), and an image "changes label" when its cluster's class differs from
its own. Cluster ids are arbitrary, so this is the only comparison that does
not depend on which id an algorithm happened to give which group.

:func:`raw_label_change` is the original study's figure, which compares cluster
ids with label codes directly (classes coded in sorted order). A perfect
clustering whose ids come out in another order scores a large raw change; the
figure is kept only so that results can be set beside the original ones.

Noise (cluster id ``-1``, from DBSCAN, OPTICS and HDBSCAN) is never matched to a
class and always counts as a change.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

NOISE = -1
"""Cluster id of points that a density-based algorithm leaves out of every cluster."""

ArrayLike = Sequence | np.ndarray | pd.Series


def encode_labels(labels: ArrayLike) -> tuple[np.ndarray, list[str]]:
    """Code class labels as integers, classes in sorted order.

    Parameters
    ----------
    labels : array-like of str, shape (n,)
        Class label of each image.

    Returns
    -------
    codes : numpy.ndarray of int, shape (n,)
        Index of each image's class in ``classes``.
    classes : list of str
        The distinct classes, sorted (``COVID``, ``NORMAL``, ``PNEUMONIA``
        are coded 0, 1, 2).
    """
    classes, codes = np.unique(np.asarray(labels), return_inverse=True)
    return codes.astype(np.int64).reshape(-1), [str(c) for c in classes]


def match_clusters(labels: ArrayLike, clusters: ArrayLike) -> dict[int, str]:
    """Match clusters to classes one-to-one so that most images keep their label.

    The assignment maximises the number of images whose cluster is matched to
    their own class (``scipy.optimize.linear_sum_assignment`` on the
    cluster x class contingency table). Noise (``-1``) is never matched. When
    there are more clusters than classes the surplus clusters stay unmatched;
    when there are fewer, some classes receive no cluster.

    Parameters
    ----------
    labels : array-like of str, shape (n,)
        Class label of each image.
    clusters : array-like of int, shape (n,)
        Cluster id of each image; ``-1`` is noise.

    Returns
    -------
    dict of int to str
        Matched class of every matched cluster id.
    """
    codes, classes, clusters = _check(labels, clusters)
    ids, table = _contingency(codes, clusters, len(classes))
    if ids.size == 0:
        return {}
    matched_rows, matched_cols = linear_sum_assignment(table, maximize=True)
    return {int(ids[r]): classes[c] for r, c in zip(matched_rows, matched_cols, strict=True)}


def matched_label_change(labels: ArrayLike, clusters: ArrayLike) -> float:
    """Percentage of images whose matched class differs from their label.

    Parameters
    ----------
    labels : array-like of str, shape (n,)
        Class label of each image.
    clusters : array-like of int, shape (n,)
        Cluster id of each image; ``-1`` is noise.

    Returns
    -------
    float
        Between 0 and 100. Noise and images in unmatched clusters count as
        changed. See :func:`match_clusters` for the matching.
    """
    return float(100.0 * _changed(labels, clusters).mean())


def raw_label_change(labels: ArrayLike, clusters: ArrayLike) -> float:
    """Percentage of images whose cluster id differs from their label code (no matching).

    This is the original study's comparison, kept only to compare with it: it
    depends on the arbitrary numbering of clusters.

    Parameters
    ----------
    labels : array-like of str, shape (n,)
        Class label of each image, coded in sorted order (:func:`encode_labels`).
    clusters : array-like of int, shape (n,)
        Cluster id of each image; noise (``-1``) never equals a code.

    Returns
    -------
    float
        Between 0 and 100.
    """
    codes, _, clusters = _check(labels, clusters)
    return float(100.0 * np.mean(clusters != codes))


def label_table(image_names: ArrayLike, labels: ArrayLike, clusters: ArrayLike) -> pd.DataFrame:
    """One row per image: its label, its cluster, the cluster's matched class and whether it changed.

    Parameters
    ----------
    image_names : array-like of str, shape (n,)
        Image file names.
    labels : array-like of str, shape (n,)
        Class label of each image.
    clusters : array-like of int, shape (n,)
        Cluster id of each image; ``-1`` is noise.

    Returns
    -------
    pandas.DataFrame
        Columns ``image_name, label, cluster, matched_label, changed``.
        ``matched_label`` is missing (NaN, an empty field in CSV) for noise and
        unmatched clusters; ``changed`` is boolean, and its mean times 100 is
        :func:`matched_label_change`.
    """
    _, _, clusters_arr = _check(labels, clusters)
    names = np.asarray(image_names)
    if names.shape != clusters_arr.shape:
        raise ValueError(f"{names.size} image names for {clusters_arr.size} cluster ids")
    matched = _matched(labels, clusters_arr)
    return pd.DataFrame(
        {
            "image_name": names,
            "label": np.asarray(labels),
            "cluster": clusters_arr,
            "matched_label": pd.Series(matched, dtype=object),
            "changed": _changed(labels, clusters_arr),
        }
    )


def _contingency(codes: np.ndarray, clusters: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The cluster ids (noise left out) and their cluster x class count table."""
    kept = clusters != NOISE
    ids, rows = np.unique(clusters[kept], return_inverse=True)
    table = np.zeros((ids.size, n_classes), dtype=np.int64)
    np.add.at(table, (rows, codes[kept]), 1)
    return ids, table


def _kept_in_class(codes: np.ndarray, clusters: np.ndarray, n_classes: int) -> int:
    """Images kept in their class by the best one-to-one matching (noise never matched)."""
    ids, table = _contingency(codes, clusters, n_classes)
    if ids.size == 0:
        return 0
    r, c = linear_sum_assignment(table, maximize=True)
    return int(table[r, c].sum())


def chance_label_change(
    labels: ArrayLike, clusters: ArrayLike, *, n_permutations: int = 200, seed: int = 0
) -> tuple[float, float]:
    """The matched label change that clusters of the same sizes score at random, and how often.

    The cluster ids (noise included) are shuffled over the images
    ``n_permutations`` times with a seeded generator, keeping every cluster's
    size, and each shuffle is scored with :func:`matched_label_change`. On
    150 balanced images a random partition into three clusters already keeps
    about 38 % of them in their class, not 33 % (the matching picks the best
    of the class assignments, so chance is 61.5 % change), and one cluster
    holding everything scores 100 % minus the largest class's share whatever
    the shuffle: the chance level depends on the cluster sizes and the
    classes, so every run gets its own.

    Parameters
    ----------
    labels : array-like of str, shape (n,)
        Class label of each image.
    clusters : array-like of int, shape (n,)
        Cluster id of each image; ``-1`` is noise.
    n_permutations : int, default 200
        Shuffles.
    seed : int, default 0
        Seed of the shuffles.

    Returns
    -------
    chance_change : float
        Mean matched label change of the shuffles, in percent.
    p_value : float
        ``(1 + shuffles scoring at most the observed change) / (1 + n_permutations)``:
        how often chance does at least as well; small when the clustering
        beats chance.
    """
    if n_permutations < 1:
        raise ValueError("n_permutations must be at least 1")
    codes, classes, clusters_arr = _check(labels, clusters)
    n = codes.size
    observed = _kept_in_class(codes, clusters_arr, len(classes))
    rng = np.random.default_rng(seed)
    kept = np.array([_kept_in_class(codes, rng.permutation(clusters_arr), len(classes))
                     for _ in range(n_permutations)])
    chance = 100.0 * (1.0 - kept.mean() / n)
    p_value = (1 + int(np.sum(kept >= observed))) / (1 + n_permutations)
    return float(chance), float(p_value)


def score_clustering(
    labels: ArrayLike,
    clusters: ArrayLike,
    X: np.ndarray | None = None,
    *,
    silhouette_max_n: int = 5000,
    seed: int = 0,
) -> dict:
    """Every figure the results table reports for one clustering.

    Parameters
    ----------
    labels : array-like of str, shape (n,)
        Class label of each image.
    clusters : array-like of int, shape (n,)
        Cluster id of each image; ``-1`` is noise.
    X : numpy.ndarray, shape (n, d), optional
        The features the algorithm clustered, for the silhouette. Without it
        the silhouette is NaN.
    silhouette_max_n : int, default 5000
        Above this many (non-noise) images the silhouette is computed on a
        seeded random sample of this size: it costs time quadratic in n.
    seed : int, default 0
        Seed of that sample.

    Returns
    -------
    dict
        ``label_percentage_change`` (:func:`matched_label_change`),
        ``raw_label_change`` (:func:`raw_label_change`),
        ``ari`` and ``nmi`` (``sklearn.metrics``; noise is kept as one more
        group with label ``-1``, so that a clustering which puts much in noise
        is not scored on its clustered part alone),
        ``purity`` (share of images that belong to their cluster's majority
        class; noise points count as impure, so all-noise scores 0),
        ``silhouette`` (Euclidean, on ``X``, noise left out; NaN with fewer
        than two clusters),
        ``n_clusters`` (noise excluded) and ``noise_fraction``.
    """
    codes, _, clusters_arr = _check(labels, clusters)
    kept = clusters_arr != NOISE
    n_clusters = int(np.unique(clusters_arr[kept]).size)
    purity = 0.0
    if kept.any():
        table = pd.crosstab(clusters_arr[kept], codes[kept]).to_numpy()
        purity = float(table.max(axis=1).sum() / clusters_arr.size)
    return {
        "label_percentage_change": matched_label_change(labels, clusters_arr),
        "raw_label_change": raw_label_change(labels, clusters_arr),
        "ari": float(adjusted_rand_score(codes, clusters_arr)),
        "nmi": float(normalized_mutual_info_score(codes, clusters_arr)),
        "purity": purity,
        "silhouette": _silhouette(X, clusters_arr, silhouette_max_n, seed),
        "n_clusters": n_clusters,
        "noise_fraction": float(np.mean(~kept)),
    }


def comparable_silhouette(X: np.ndarray, clusters: ArrayLike, *, max_n: int = 5000, seed: int = 0) -> float:
    """A silhouette that ranks runs of different algorithms fairly: one space, noise not left out.

    The ``silhouette`` of :func:`score_clustering` is computed on each
    algorithm's own features and leaves noise out, so a run on a UMAP
    embedding, or one that calls half the images noise, scores high for
    reasons that are not better clusters. Here every run is scored on the
    same features ``X`` (the suite's shared preparation) and a noise point
    counts as 0, the silhouette of a point that fits no cluster better than
    another: the mean silhouette of the clustered points times their share.

    Parameters
    ----------
    X : numpy.ndarray, shape (n, d)
        The features every run is compared on.
    clusters : array-like of int, shape (n,)
        Cluster id of each image; ``-1`` is noise.
    max_n : int, default 5000
        Above this many clustered images, a seeded sample of this size.
    seed : int, default 0
        Seed of that sample.

    Returns
    -------
    float
        In [-1, 1]; NaN with fewer than two clusters.
    """
    clusters_arr = np.asarray(clusters).astype(np.int64)
    kept = float(np.mean(clusters_arr != NOISE))
    return _silhouette(X, clusters_arr, max_n, seed) * kept


def _check(labels: ArrayLike, clusters: ArrayLike) -> tuple[np.ndarray, list[str], np.ndarray]:
    codes, classes = encode_labels(labels)
    clusters_arr = np.asarray(clusters)
    if clusters_arr.ndim != 1 or clusters_arr.size != codes.size:
        raise ValueError(f"{codes.size} labels for {clusters_arr.size} cluster ids")
    if codes.size == 0:
        raise ValueError("no images to score")
    if not np.issubdtype(clusters_arr.dtype, np.integer):
        as_int = clusters_arr.astype(np.int64)
        if not np.array_equal(as_int, clusters_arr):
            raise ValueError("cluster ids must be integers")
        clusters_arr = as_int
    return codes, classes, clusters_arr.astype(np.int64, copy=False)


def _matched(labels: ArrayLike, clusters: np.ndarray) -> list[str | None]:
    mapping = match_clusters(labels, clusters)
    return [mapping.get(int(c)) for c in clusters]


def _changed(labels: ArrayLike, clusters: ArrayLike) -> np.ndarray:
    _, _, clusters_arr = _check(labels, clusters)
    matched = _matched(labels, clusters_arr)
    return np.array([m is None or m != str(lab) for m, lab in zip(matched, np.asarray(labels), strict=True)])


def _silhouette(X: np.ndarray | None, clusters: np.ndarray, max_n: int, seed: int) -> float:
    if X is None:
        return float("nan")
    X = np.asarray(X)
    if X.shape[0] != clusters.size:
        raise ValueError(f"{X.shape[0]} feature rows for {clusters.size} cluster ids")
    idx = np.flatnonzero(clusters != NOISE)
    if idx.size > max_n:
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=max_n, replace=False))
    n_found = np.unique(clusters[idx]).size
    # silhouette is defined for 2 <= clusters <= points - 1
    if n_found < 2 or n_found >= idx.size:
        return float("nan")
    return float(silhouette_score(X[idx], clusters[idx]))
