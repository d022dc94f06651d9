"""Disease or hospital? The linear probe asked to predict the source, and the label within each source.

Public COVID / Pneumonia / Normal sets take each class from other hospitals,
so a probe that separates the classes may be separating the hospitals.
:func:`source_probe` reads the label probe against the source of the images
(:func:`cxrcluster.data.image_sources`) with the same probe and the same
patient-grouped folds as :func:`~cxrcluster.probe.linear.linear_probe_cv`:

- **the source from the features**: balanced accuracy near 1 says the
  features know the hospital; its chance is 1 / the number of sources (and
  the majority rate is what always answering the largest source scores);
- **the label within each source**: in every source that holds at least two
  classes of :data:`MIN_CLASS_IMAGES` images or more, the probe is fitted and
  scored on that source's images alone, where the hospital cannot help.
  Balanced accuracy near its chance (1 / the classes probed there) while the
  label probe scores high overall says the label probe was reading the hospital.

Balanced accuracy is scikit-learn's ``balanced_accuracy_score`` of the pooled
out-of-fold predictions (every image predicted once, by a probe that never saw
it), so a fold that happens to lack a class does not distort it.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import balanced_accuracy_score

from cxrcluster.probe.linear import linear_probe_cv

#: Fewest images a class needs in a source to be probed there.
MIN_CLASS_IMAGES = 20

#: The columns :func:`source_probe` always returns, in order (per-source columns follow).
SOURCE_COLUMNS = ("n_sources", "source_balanced_accuracy", "source_chance", "source_majority",
                  "n_within_sources", "within_source_balanced_accuracy", "within_source_chance")


def _balanced_accuracy(predictions) -> float:
    used = predictions["fold"] >= 0
    return float(balanced_accuracy_score(predictions.loc[used, "label"].astype(str),
                                         predictions.loc[used, "predicted"].astype(str)))


def _units(values: np.ndarray, groups: np.ndarray | None) -> int:
    """Images, or patients when grouped: what a fold split counts."""
    return int(values.sum()) if groups is None else int(np.unique(groups[values]).size)


def source_probe(X: np.ndarray, labels, sources, groups=None, n_splits: int = 5, seed: int = 0,
                 C: float = 1.0, min_class_images: int = MIN_CLASS_IMAGES) -> dict:
    """Predict the source from the features, and the label within each source.

    Parameters
    ----------
    X : numpy.ndarray, shape (n, d)
        Features; non-finite rows (unreadable images) are left out of everything.
    labels : array-like of str, shape (n,)
        Class of each image.
    sources : array-like of str, shape (n,), or None
        Source (hospital) of each image; None when it is not known.
    groups : array-like, shape (n,), optional
        Patient of each image: folds keep a patient's images together.
    n_splits, seed, C
        As for :func:`~cxrcluster.probe.linear.linear_probe_cv`.
    min_class_images : int, default :data:`MIN_CLASS_IMAGES`
        Fewest images a class needs in a source to be probed there.

    Returns
    -------
    dict
        :data:`SOURCE_COLUMNS`, then ``within_source_balanced_accuracy_<source>``
        and ``within_source_chance_<source>`` for every source probed:

        - ``n_sources``: sources the source probe tells apart (those with at
          least ``n_splits`` patients, or images when ungrouped; a smaller one
          cannot be split into folds and is left out);
        - ``source_balanced_accuracy``, ``source_chance`` (1 / ``n_sources``),
          ``source_majority`` (the largest source's share of those images);
          NaN with fewer than two sources;
        - ``n_within_sources``: sources where the label is probed: those with
          at least two classes of ``min_class_images`` images (and
          ``n_splits`` patients) or more, only those classes taking part;
        - ``within_source_balanced_accuracy`` and ``within_source_chance``:
          their means over those sources, weighted by the images probed; NaN
          when there is none.

        Every value is NaN (None) when ``sources`` is None.
    """
    out: dict = dict.fromkeys(SOURCE_COLUMNS, math.nan)
    if sources is None:
        return out
    # unreadable images (non-finite rows) count nowhere: not in who is probed, not in the scores
    X = np.asarray(X, dtype=np.float64)
    finite = np.isfinite(X).all(axis=1)
    X, labels, sources = X[finite], np.asarray(labels).astype(str)[finite], np.asarray(sources).astype(str)[finite]
    groups = None if groups is None else np.asarray(groups).astype(str)[finite]

    probed = [s for s in sorted(set(sources)) if _units(sources == s, groups) >= n_splits]
    out["n_sources"] = len(probed)
    if len(probed) >= 2:
        keep = np.isin(sources, probed)
        cv = linear_probe_cv(X[keep], sources[keep], groups=None if groups is None else groups[keep],
                             n_splits=n_splits, seed=seed, C=C)
        used = cv.predictions["label"][cv.predictions["fold"] >= 0]
        out["source_balanced_accuracy"] = _balanced_accuracy(cv.predictions)
        out["source_chance"] = 1 / len(probed)
        out["source_majority"] = float(used.value_counts(normalize=True).max())

    per_source, weights = {}, {}
    for source in sorted(set(sources)):
        mine = sources == source
        classes = [c for c in sorted(set(labels[mine])) if (mine & (labels == c)).sum() >= min_class_images
                   and _units(mine & (labels == c), groups) >= n_splits]
        if len(classes) < 2:
            continue
        rows = mine & np.isin(labels, classes)
        cv = linear_probe_cv(X[rows], labels[rows], groups=None if groups is None else groups[rows],
                             n_splits=n_splits, seed=seed, C=C)
        per_source[source] = (_balanced_accuracy(cv.predictions), 1 / len(classes))
        weights[source] = cv.summary["n_images"]
    out["n_within_sources"] = len(per_source)
    if per_source:
        total = sum(weights.values())
        out["within_source_balanced_accuracy"] = sum(per_source[s][0] * weights[s] for s in per_source) / total
        out["within_source_chance"] = sum(per_source[s][1] * weights[s] for s in per_source) / total
    for source, (score, chance) in per_source.items():
        out[f"within_source_balanced_accuracy_{source}"] = score
        out[f"within_source_chance_{source}"] = chance
    return out
