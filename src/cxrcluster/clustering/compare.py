"""Comparing feature preparations: every algorithm of the suite on each, to choose defaults by evidence.

:func:`compare_preparations` runs the whole suite once per candidate
preparation, every algorithm on the same one, and stacks the results; the
``preparation_name`` column says which. :func:`preparation_summary` reduces
that to one row per algorithm x preparation (matched change, its chance level,
ARI, clusters found, status kind), and :data:`CANDIDATES` are the preparations
the shipped defaults were chosen among (``notebooks/09-compare-preparations``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np
import pandas as pd

from cxrcluster.clustering.config import validate_config
from cxrcluster.clustering.suite import run_suite
from cxrcluster.results import status_kind

CANDIDATES: dict[str, dict] = {
    "none": {},
    "pca50": {"pca": 50},
    "standardize+pca50": {"standardize": True, "pca": 50},
    "l2+pca50": {"l2_first": True, "pca": 50},
    "pca50+umap10": {"pca": 50, "umap": {"n_components": 10}},
}
"""Candidate preparations: ``l2+pca50`` normalises the features to unit length before the PCA
(cosine geometry); ``pca50+umap10`` embeds the PCA's output in 10 dimensions with UMAP."""


def compare_preparations(
    X: np.ndarray,
    labels,
    config: Mapping,
    candidates: Mapping[str, Mapping] | None = None,
    *,
    model: str = "",
    progress: bool = False,
) -> pd.DataFrame:
    """Run the suite of ``config`` once per preparation, every algorithm on that preparation.

    Parameters
    ----------
    X : numpy.ndarray, shape (n, d)
        Features, no NaN rows.
    labels : array-like of str, shape (n,)
        Class of each image (for scoring only).
    config : mapping
        The clustering configuration; its own per-algorithm preparations are
        replaced by the candidate under test.
    candidates : mapping of str to mapping, optional
        Name -> preparation; :data:`CANDIDATES` by default.
    model : str, default ""
        Recorded in the ``model`` column.
    progress : bool, default False
        Progress bars of the suite.

    Returns
    -------
    pandas.DataFrame
        The suites' results tables stacked, with a first column
        ``preparation_name``.
    """
    cfg = validate_config(config)
    candidates = CANDIDATES if candidates is None else candidates
    tables = []
    for name, preparation in candidates.items():
        trial = copy.deepcopy(cfg)
        trial["preparation"] = dict(preparation)
        for spec in trial["algorithms"].values():
            spec.pop("preparation", None)
        table, _ = run_suite(X, labels, trial, model=model, progress=progress)
        tables.append(table.assign(preparation_name=name))
    frame = pd.concat(tables, ignore_index=True)
    return frame[["preparation_name", *[c for c in frame.columns if c != "preparation_name"]]]


def preparation_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per algorithm x preparation: change, chance, ARI, clusters, status kind.

    Parameters
    ----------
    frame : pandas.DataFrame
        Output of :func:`compare_preparations`.

    Returns
    -------
    pandas.DataFrame
        Columns ``clustering``, ``preparation_name``, ``label_percentage_change``,
        ``chance_label_change``, ``ari``, ``n_clusters``, ``status`` (the kind:
        ``ok``, ``degenerate``, ``failed`` or ``skipped``), ``reason``.
    """
    out = frame[["clustering", "preparation_name", "label_percentage_change", "chance_label_change", "ari",
                 "n_clusters"]].copy()
    out["status"] = frame["status"].map(status_kind)
    out["reason"] = frame["status"].astype(str).str.partition(":")[2].str.strip()
    return out
