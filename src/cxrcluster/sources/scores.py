"""The source figures of each clustering: source ARI / NMI, the conditional figures and ``follows``.

:func:`conditional_information` is I(C; T | G) / H(T | G);
:func:`conditional_chance` adds its chance level and p-value from shuffles of
the cluster ids within each group; :func:`follows` names what a clustering
follows beyond chance (:data:`FOLLOWS_RULE`); :func:`score_sources` gives one
clustering's :data:`SOURCE_COLUMNS` and :func:`add_source_columns` appends them
to a results table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from cxrcluster.sources.partition import SourcePartition

#: A conditional figure counts when its permutation p-value is at most this.
ALPHA = 0.05

#: The rule of the ``follows`` column, as the reports state it.
FOLLOWS_RULE = (
    "each conditional figure counts when its permutation p-value, (1 + shuffles scoring at least as high) / "
    f"(1 + shuffles), is at most {ALPHA}; the cluster ids are shuffled within each source (for "
    "label_given_source) or within each label (for source_given_label), with the chance line's seed and number "
    "of shuffles. follows = 'label' when only label_given_source counts, 'source' when only source_given_label "
    "counts, 'both' when both do, 'neither' when none does"
)

#: Columns :func:`add_source_columns` appends to a results table, in order.
SOURCE_COLUMNS = [
    "source_kind",
    "source_ari",
    "source_nmi",
    "label_given_source",
    "label_given_source_chance",
    "label_given_source_p",
    "source_given_label",
    "source_given_label_chance",
    "source_given_label_p",
    "follows",
]


# ---------------------------------------------------------------- conditional figures


def _codes(values) -> tuple[np.ndarray, int]:
    uniques, codes = np.unique(np.asarray(values), return_inverse=True)
    return codes.reshape(-1).astype(np.int64), int(uniques.size)


def _conditional(c: np.ndarray, nc: int, t: np.ndarray, nt: int, g: np.ndarray, ng: int) -> tuple[float, float]:
    """Plug-in I(C; T | G) and H(T | G), in nats, from integer codes."""
    joint = np.bincount((g * nc + c) * nt + t, minlength=ng * nc * nt).reshape(ng, nc, nt) / c.size
    p_g, p_gc, p_gt = joint.sum(axis=(1, 2)), joint.sum(axis=2), joint.sum(axis=1)
    gi, ci, ti = np.nonzero(joint)  # empty cells add nothing, and their margins may be 0
    p = joint[gi, ci, ti]
    information = float(np.sum(p * np.log(p * p_g[gi] / (p_gc[gi, ci] * p_gt[gi, ti]))))
    gi, ti = np.nonzero(p_gt)
    entropy = float(-np.sum(p_gt[gi, ti] * np.log(p_gt[gi, ti] / p_g[gi])))
    return max(information, 0.0), max(entropy, 0.0)


def conditional_information(clusters, target, given) -> float:
    """What the clusters say about ``target`` within each group of ``given``, from 0 to 1.

    I(C; T | G) / H(T | G), plug-in estimates from the counts. I(C; T | G) is
    the mean, weighted by group size, of the mutual information between the
    clusters and the target inside each group, so it cannot exceed H(T | G),
    the target's remaining uncertainty: the ratio is 1 when the clusters
    determine the target within every group and 0 when they are independent
    of it within every group (or when H(T | G) = 0: nothing left to explain).

    Parameters
    ----------
    clusters : array-like of int, shape (n,)
        Cluster ids; noise (``-1``) is one more group.
    target, given : array-like, shape (n,)
        The partition explained, and the one conditioned on.

    Returns
    -------
    float
        In [0, 1].
    """
    _, information, entropy = _coded_information(clusters, target, given)
    return min(information / entropy, 1.0) if entropy > 1e-12 else 0.0


def _coded_information(clusters, target, given) -> tuple[tuple, float, float]:
    """The three partitions as codes (with their counts), I(C;T|G) and H(T|G)."""
    c, nc = _codes(clusters)
    t, nt = _codes(target)
    g, ng = _codes(given)
    if not c.size == t.size == g.size:
        raise ValueError(f"{c.size} cluster ids, {t.size} targets and {g.size} groups")
    information, entropy = _conditional(c, nc, t, nt, g, ng)
    return (c, nc, t, nt, g, ng), information, entropy


def _within_group_shuffles(c: np.ndarray, g: np.ndarray, n_permutations: int, seed: int):
    """``n_permutations`` seeded shuffles of ``c`` within each group of ``g`` (group sizes and counts kept)."""
    rng = np.random.default_rng(seed)
    grouped = np.argsort(g, kind="stable")
    for _ in range(n_permutations):
        shuffled = np.empty_like(c)
        shuffled[grouped] = c[np.lexsort((rng.random(c.size), g))]
        yield shuffled


def conditional_chance(clusters, target, given, *, n_permutations: int = 200, seed: int = 0
                       ) -> tuple[float, float, float]:
    """:func:`conditional_information`, its chance level and its p-value.

    The cluster ids are shuffled ``n_permutations`` times with a seeded
    generator *within each group of* ``given``: every group keeps its own
    cluster sizes, so the shuffles keep whatever the clusters say about the
    group and destroy only what they say about the target inside it (the
    permutation test of conditional independence). A shuffle over all images
    would also destroy the clusters' tie to the group, and compare with the
    wrong null.

    Parameters
    ----------
    clusters : array-like of int, shape (n,)
        Cluster ids; noise (``-1``) is one more group.
    target, given : array-like, shape (n,)
        As for :func:`conditional_information`.
    n_permutations : int, default 200
        Shuffles (the chance line's ``chance_permutations``).
    seed : int, default 0
        Their seed (the configuration's ``seed``).

    Returns
    -------
    observed : float
        :func:`conditional_information`.
    chance : float
        Mean of the shuffles.
    p_value : float
        ``(1 + shuffles scoring at least the observed figure) / (1 + n_permutations)``.
    """
    if n_permutations < 1:
        raise ValueError("n_permutations must be at least 1")
    (c, nc, t, nt, g, ng), information, entropy = _coded_information(clusters, target, given)
    if entropy <= 1e-12:
        return 0.0, 0.0, 1.0
    observed = min(information / entropy, 1.0)
    shuffled = np.array([min(_conditional(s, nc, t, nt, g, ng)[0] / entropy, 1.0)
                         for s in _within_group_shuffles(c, g, n_permutations, seed)])
    # a shuffle that only reorders equal counts gives the same figure up to rounding: it ties
    p_value = (1 + int(np.sum(shuffled >= observed - 1e-12))) / (1 + n_permutations)
    return observed, float(shuffled.mean()), float(p_value)


def follows(label_p: float, source_p: float, alpha: float = ALPHA) -> str:
    """What a clustering follows beyond chance (:data:`FOLLOWS_RULE`): label, source, both or neither."""
    label, source = label_p <= alpha, source_p <= alpha
    return {(True, True): "both", (True, False): "label", (False, True): "source"}.get((label, source), "neither")


def score_sources(labels, clusters, partition: SourcePartition, *, n_permutations: int = 200,
                  seed: int = 0) -> dict:
    """The source figures of one clustering.

    Parameters
    ----------
    labels : array-like of str, shape (n,)
        Class of each image.
    clusters : array-like of int, shape (n,)
        Cluster id of each image; noise (``-1``) is one more group.
    partition : SourcePartition
        The source of each image, in the same order.
    n_permutations, seed : int
        The shuffles of :func:`conditional_chance` (the chance line's).

    Returns
    -------
    dict
        The columns of :data:`SOURCE_COLUMNS`: ``source_kind``,
        ``source_ari`` and ``source_nmi`` (the clusters against the sources),
        ``label_given_source`` = I(C; Y | S) / H(Y | S) and
        ``source_given_label`` = I(C; S | Y) / H(S | Y), each with its
        ``_chance`` (mean of the within-group shuffles) and ``_p``, and
        ``follows`` (:func:`follows`).
    """
    labels, clusters, sources = np.asarray(labels).astype(str), np.asarray(clusters), partition.values
    if not labels.size == clusters.size == sources.size:
        raise ValueError(f"{labels.size} labels, {clusters.size} cluster ids and {sources.size} sources")
    by_source = conditional_chance(clusters, labels, sources, n_permutations=n_permutations, seed=seed)
    by_label = conditional_chance(clusters, sources, labels, n_permutations=n_permutations, seed=seed)
    return {
        "source_kind": partition.kind,
        "source_ari": float(adjusted_rand_score(sources, clusters)),
        "source_nmi": float(normalized_mutual_info_score(sources, clusters)),
        "label_given_source": by_source[0],
        "label_given_source_chance": by_source[1],
        "label_given_source_p": by_source[2],
        "source_given_label": by_label[0],
        "source_given_label_chance": by_label[1],
        "source_given_label_p": by_label[2],
        "follows": follows(by_source[2], by_label[2]),
    }


def add_source_columns(table: pd.DataFrame, cluster_ids: Mapping[str, np.ndarray], labels,
                       partition: SourcePartition | None, *, n_permutations: int = 200, seed: int = 0
                       ) -> pd.DataFrame:
    """A results table with :data:`SOURCE_COLUMNS` appended to every row, nothing else changed.

    Parameters
    ----------
    table : pandas.DataFrame
        One model's results (:func:`cxrcluster.clustering.run_suite`), one
        row per algorithm (column ``clustering``).
    cluster_ids : mapping of str to numpy.ndarray
        Algorithm -> cluster ids of its reported run (the suite's second return).
    labels : array-like of str, shape (n,)
        Class of each clustered image.
    partition : SourcePartition or None
        Their sources, in the same order; None gives ``source_kind`` ``none``.
    n_permutations, seed : int
        The chance line's shuffles (``chance_permutations`` and ``seed`` of the configuration).

    Returns
    -------
    pandas.DataFrame
        A copy of ``table`` with the new columns last. A row without cluster
        ids (failed, skipped), or with no partition, has empty figures and an
        empty ``follows``.
    """
    added = []
    for name in table["clustering"]:
        row = dict.fromkeys(SOURCE_COLUMNS, math.nan)
        row.update(source_kind=partition.kind if partition is not None else "none", follows="")
        if partition is not None and name in cluster_ids:
            row.update(score_sources(labels, cluster_ids[name], partition, n_permutations=n_permutations, seed=seed))
        added.append(row)
    return pd.concat([table.reset_index(drop=True), pd.DataFrame(added, columns=SOURCE_COLUMNS)], axis=1)
