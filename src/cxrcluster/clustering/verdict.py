"""Which runs are results: the degeneracy rule, the representative of several seeds, their stability.

A clustering that found one cluster, put most images in noise, or left nearly
every image in one cluster has not grouped the images, and any label change
computed from it measures the class sizes, not the features: with one cluster,
the matching hands it to one class and every image of the others "changes".
:func:`degenerate_reason` names such runs, with thresholds from the
configuration's ``degenerate`` section (:data:`DEGENERACY_DEFAULTS`); the suite
gives them the status ``degenerate: <reason>``, and they are left out of label
drift and of the choice of a best algorithm.

When an algorithm runs once per seed, :func:`choose_representative` picks the
run that is written to ``clustering_labels/`` and headlined without looking at
the labels: the lowest of the algorithm's own objective (inertia, medoid cost,
fuzzy objective, minus the likelihood bound) when it has one and every run
was fitted on the same images, else the run that agrees most with the others
(mean adjusted Rand index). :func:`stability` (mean pairwise ARI between the
seeds' clusterings) says how much the seed matters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations

import numpy as np
from sklearn.metrics import adjusted_rand_score

from cxrcluster.metrics import NOISE

DEGENERACY_DEFAULTS: dict = {
    "min_clusters": 2,
    "max_noise_fraction": 0.5,
    "max_cluster_share": 0.9,
    "fuzzy_uniform_margin": 0.01,
}
"""Thresholds of :func:`degenerate_reason`, overridden by the configuration's ``degenerate`` section."""


def degenerate_reason(
    clusters: np.ndarray, rules: Mapping | None = None, diagnostics: Mapping | None = None
) -> str | None:
    """Why a clustering is not a result, or None when it is one.

    Parameters
    ----------
    clusters : numpy.ndarray of int, shape (n,)
        Cluster id of each image; ``-1`` is noise.
    rules : mapping, optional
        ``min_clusters``: fewer clusters than this (noise excluded) is
        degenerate. ``max_noise_fraction``: more than this share of the images
        in noise. ``max_cluster_share``: one cluster holding more than this
        share of all images. ``fuzzy_uniform_margin``: a fuzzy partition whose
        partition coefficient is within this of its uniform value ``1 / c``
        (every membership equal: the centres have collapsed onto one another
        and the hard labels are rounding noise). Defaults:
        :data:`DEGENERACY_DEFAULTS`.
    diagnostics : mapping, optional
        The fit's own diagnostics (``partition_coefficient`` for fuzzy c-means).

    Returns
    -------
    str or None
        The first rule broken, with the figures, e.g. ``"1 cluster (fewer
        than 2)"``.
    """
    rules = {**DEGENERACY_DEFAULTS, **(rules or {})}
    clusters = np.asarray(clusters)
    n = clusters.size
    kept = clusters[clusters != NOISE]
    ids, sizes = np.unique(kept, return_counts=True)
    noise = 1.0 - kept.size / n if n else 0.0
    if noise > rules["max_noise_fraction"]:
        return f"{noise:.0%} of the images in noise (more than {rules['max_noise_fraction']:.0%})"
    if ids.size < rules["min_clusters"]:
        return f"{ids.size} cluster{'s' if ids.size != 1 else ''} (fewer than {rules['min_clusters']})"
    share = sizes.max() / n
    if share > rules["max_cluster_share"]:
        return (f"one cluster holds {share:.1%} of the images (more than {rules['max_cluster_share']:.0%}; "
                f"sizes {', '.join(str(s) for s in sorted(sizes, reverse=True)[:4])}"
                f"{', ...' if sizes.size > 4 else ''})")
    coefficient = (diagnostics or {}).get("partition_coefficient")
    if coefficient is not None and ids.size:
        c = int((diagnostics or {}).get("n_centres", ids.size))
        uniform = 1.0 / c
        if coefficient - uniform <= rules["fuzzy_uniform_margin"]:
            return (f"fuzzy partition at its uniform value (partition coefficient {coefficient:.4f}, "
                    f"uniform 1/{c} = {uniform:.4f}): the centres collapsed")
    return None


def stability(runs: Sequence[np.ndarray]) -> float:
    """Mean adjusted Rand index between every pair of runs; NaN for a single run.

    1 means every seed gave the same partition; near 0, the partitions agree
    no more than chance.
    """
    pairs = list(combinations(range(len(runs)), 2))
    if not pairs:
        return float("nan")
    return float(np.mean([adjusted_rand_score(runs[i], runs[j]) for i, j in pairs]))


def choose_representative(
    runs: Sequence[np.ndarray], objectives: Sequence[float | None], same_images: bool = True
) -> tuple[int, str]:
    """Index of the run to report, chosen without labels, and how it was chosen.

    Parameters
    ----------
    runs : sequence of numpy.ndarray
        Cluster ids of each run (one per seed), over the same images.
    objectives : sequence of float or None
        Each run's own objective, lower is better (:class:`Fit`), or None.
    same_images : bool, default True
        Whether every run was fitted on the same images. Objectives of runs
        fitted on different subsamples are not comparable.

    Returns
    -------
    index : int
        The first run when there is one; the lowest objective; or the run with
        the highest mean ARI to the others. Ties go to the earlier seed.
    rule : str
        ``"single run"``, ``"objective"`` or ``"agreement"``.
    """
    if len(runs) == 1:
        return 0, "single run"
    if same_images and all(o is not None and np.isfinite(o) for o in objectives):
        return int(np.argmin(np.asarray(objectives, dtype=float))), "objective"
    agreement = np.zeros(len(runs))
    for i, j in combinations(range(len(runs)), 2):
        ari = adjusted_rand_score(runs[i], runs[j])
        agreement[i] += ari
        agreement[j] += ari
    return int(np.argmax(agreement)), "agreement"
