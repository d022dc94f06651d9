"""The planted-noise check: how well each signal finds labels known to be wrong.

:func:`noise_check` flips a seeded, stratified share of labels
(:func:`plant_flips`), recomputes every signal from the flipped labels (the
cluster assignments are reused, the probe refitted: :mod:`~cxrcluster.label_issues.signals`)
and scores each ranking of :data:`SIGNALS` (:func:`signal_scores`) of the
flipped images (:func:`ranking_scores`), on every image and, when a source is
known, also without the images whose flag the source explains
(:data:`SUBSETS`). :func:`on_all_images` and :func:`headline_signal` read the
result back for the reports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from cxrcluster import products
from cxrcluster.label_issues.signals import (
    cleanlab_evidence,
    combined_score,
    drift_evidence,
    mean_probabilities,
    out_of_fold_probabilities,
    source_explained,
)

SIGNALS = ("drift", "cleanlab", "combined", "random")
"""The rankings the noise check scores: each signal alone, the two combined, and a seeded random order."""

CHECK_COLUMNS = products.LABEL_NOISE_CHECK.column_names
"""Columns of ``reports/label_noise_check.csv``: one row per planted share, signal and subset."""

SUBSETS = ("all", "not_source_explained")
"""The images the noise check scores on: all of them, and (when a source is known) those whose flag
:func:`source_explained` does not put down to their source."""

# ---------------------------------------------------------------- the planted-noise check


def plant_flips(labels: Sequence[str], fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Flip a seeded, class-stratified share of labels to another class.

    In each class (sorted), ``fraction * n_class`` images (halves rounded up) are drawn
    without replacement and each gets one of the other classes, drawn
    uniformly.

    Parameters
    ----------
    labels : sequence of str
    fraction : float
        Share of each class to flip, in (0, 1).
    seed : int, default 0

    Returns
    -------
    flipped_labels : numpy.ndarray of str
    is_flipped : numpy.ndarray of bool
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), not {fraction}")
    labels = np.asarray(labels).astype(str)
    classes = sorted(np.unique(labels).tolist())
    if len(classes) < 2:
        raise ValueError(f"flipping labels needs two classes or more; found {classes}")
    rng = np.random.default_rng(seed)
    flipped, is_flipped = labels.copy(), np.zeros(labels.size, dtype=bool)
    for c in classes:
        members = np.flatnonzero(labels == c)
        chosen = rng.choice(members, size=int(np.floor(fraction * members.size + 0.5)), replace=False)
        others = [o for o in classes if o != c]
        flipped[chosen] = np.asarray(others)[rng.integers(len(others), size=chosen.size)]
        is_flipped[chosen] = True
    return flipped, is_flipped


def ranking_scores(is_flipped: np.ndarray, score: np.ndarray) -> dict:
    """How well ``score`` (higher = more suspect) ranks the flipped images first.

    Returns ``roc_auc``, ``average_precision`` and ``precision_at_k``: the
    share of flipped images among the ``k`` highest scores, ``k`` the number
    flipped (ties broken by position, which is seeded upstream). An image
    without a score counts as the least suspect.
    """
    truth = np.asarray(is_flipped, dtype=bool)
    s = _least_suspect_when_missing(score)
    k = int(truth.sum())
    top = np.argsort(-s, kind="stable")[:k]
    return {"roc_auc": float(roc_auc_score(truth, s)), "average_precision": float(average_precision_score(truth, s)),
            "precision_at_k": float(truth[top].mean()) if k else float("nan")}


def _least_suspect_when_missing(score) -> np.ndarray:
    s = np.asarray(score, dtype=float)
    finite = np.isfinite(s)
    return np.where(finite, s, (s[finite].min() - 1) if finite.any() else 0.0)


def signal_scores(drift: pd.DataFrame, clean: pd.DataFrame, seed: int) -> dict[str, np.ndarray]:
    """Each ranking of :data:`SIGNALS` as a score, higher = more suspect."""
    drift_share = drift["drift_share"].to_numpy(dtype=float)
    quality = clean["quality"].to_numpy(dtype=float)
    return {"drift": drift_share, "cleanlab": -quality, "combined": combined_score(drift_share, quality),
            "random": np.random.default_rng(seed).random(drift_share.size)}


def noise_check(
    image_names: Sequence[str],
    labels: Sequence[str],
    cluster_frames: Mapping[str, pd.DataFrame],
    features: Mapping[str, np.ndarray],
    groups=None,
    *,
    sources=None,
    fractions: Sequence[float] = (0.05, 0.10),
    n_splits: int = 5,
    seed: int = 0,
    progress=None,
) -> tuple[pd.DataFrame, dict]:
    """Plant label errors, recompute every signal, and score how well each finds them.

    For each share in ``fractions``: :func:`plant_flips` with ``seed``; the
    drift of every image under the flipped labels (the same cluster
    assignments, matched again: no clustering is refitted); the probe's
    out-of-fold probabilities refitted on the flipped labels and cleanlab's
    quality from their mean over models; the combined score; and a seeded
    random order as the floor. Each is scored by :func:`ranking_scores`, on
    every image (subset ``all``) and, when ``sources`` are given, again
    without the images whose flag is :func:`source_explained` (the models'
    suggestion under the flipped labels is not the flipped label and is the
    most frequent class of the image's source under the given labels; subset
    ``not_source_explained``, rows after all the ``all`` rows; none for a
    share that flips no image).

    Parameters
    ----------
    image_names, labels : sequence of str
        The images and their given labels (taken as correct).
    cluster_frames : mapping of str to pandas.DataFrame
        The non-degenerate runs' label frames.
    features : mapping of str to numpy.ndarray
        Each model's features, rows aligned with ``image_names``.
    groups : array-like, optional
        Patients, for the probe's folds.
    sources : array-like, optional
        The source of each image.
    fractions : sequence of float
    n_splits, seed : int
    progress : callable, optional
        Called with a line of text as each share finishes.

    Returns
    -------
    table : pandas.DataFrame
        Columns :data:`CHECK_COLUMNS`.
    curves : dict
        ``{fraction: {signal: (precision, recall)}}`` (all images) for the
        figure, and ``{fraction: prevalence}`` under key ``"prevalence"``.
    """
    names = np.asarray(image_names).astype(str)
    rows, subset_rows, curves = [], [], {"prevalence": {}}
    for fraction in fractions:
        flipped, truth = plant_flips(labels, fraction, seed=seed)
        if not truth.any():  # too few images per class for this share: nothing to find
            rows += [{"fraction": fraction, "n_flipped": 0, "n_images": int(truth.size), "signal": signal,
                      "roc_auc": np.nan, "average_precision": np.nan, "precision_at_k": np.nan,
                      "prevalence": 0.0, "seed": seed, "subset": "all"} for signal in SIGNALS]
            if progress is not None:
                progress(f"{fraction:.0%} flips no image: every class is too small for it")
            continue
        drift = drift_evidence(cluster_frames, names, flipped)
        probabilities, classes = out_of_fold_probabilities(features, flipped, groups, n_splits=n_splits, seed=seed)
        clean = cleanlab_evidence(flipped, mean_probabilities(probabilities), classes)
        curves[fraction] = {}
        curves["prevalence"][fraction] = float(truth.mean())
        kept = None
        if sources is not None:
            kept = ~source_explained(clean["suggested"], flipped, sources,
                                     majority_labels=labels).fillna(False).to_numpy(dtype=bool)
        for signal, score in signal_scores(drift, clean, seed).items():
            scored = ranking_scores(truth, score)
            rows.append({"fraction": fraction, "n_flipped": int(truth.sum()), "n_images": int(truth.size),
                         "signal": signal, **scored, "prevalence": float(truth.mean()), "seed": seed, "subset": "all"})
            precision, recall, _ = precision_recall_curve(truth, _least_suspect_when_missing(score))
            curves[fraction][signal] = (precision, recall)
            if kept is not None:
                found = truth[kept]
                scored = (ranking_scores(found, np.asarray(score, dtype=float)[kept]) if 0 < found.sum() < found.size
                          else {"roc_auc": np.nan, "average_precision": np.nan, "precision_at_k": np.nan})
                subset_rows.append({"fraction": fraction, "n_flipped": int(found.sum()), "n_images": int(found.size),
                                    "signal": signal, **scored, "prevalence": float(found.mean()) if found.size else np.nan,
                                    "seed": seed, "subset": "not_source_explained"})
        if progress is not None:
            best = max((r for r in rows if r["fraction"] == fraction), key=lambda r: r["roc_auc"])
            progress(f"{fraction:.0%} flipped ({int(truth.sum())} images): best ROC AUC {best['roc_auc']:.3f} "
                     f"({best['signal']})")
    return pd.DataFrame(rows + subset_rows, columns=CHECK_COLUMNS), curves


def on_all_images(check: pd.DataFrame) -> pd.DataFrame:
    """The rows of the noise check scored on every image (subset ``all``): one per planted share and signal."""
    return check[check["subset"] == "all"] if "subset" in check.columns else check


def headline_signal(check: pd.DataFrame, fraction: float) -> tuple[str, str]:
    """The ranking to headline at ``fraction``: the combined one unless a single signal beats its ROC AUC.

    Judged on every image (:func:`on_all_images`). Returns the signal and a
    sentence saying why (the combined rank, unjudged, when the check flipped
    no image at that share).
    """
    check = on_all_images(check)
    at = check[check["fraction"] == fraction].set_index("signal")["roc_auc"]
    if at.isna().all():
        return "combined", f"no image was flipped at {fraction:.0%} (too few images per class): the combined rank, unchecked"
    best_single = max(("drift", "cleanlab"), key=lambda s: at[s])
    if at["combined"] >= at[best_single]:
        return "combined", (f"the combined rank (ROC AUC {at['combined']:.3f}) is at least as good as either signal "
                            f"alone (drift {at['drift']:.3f}, cleanlab {at['cleanlab']:.3f})")
    return best_single, (f"{best_single} alone (ROC AUC {at[best_single]:.3f}) beats the combined rank "
                         f"({at['combined']:.3f}): the list should be read by {best_single}")
