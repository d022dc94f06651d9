"""The within-source test: the clustering suite on each known source's images alone.

:func:`eligible_sources` lists the sources that qualify (at least two classes
of at least :data:`MIN_CLASS_IMAGES` images; never a proxy) and
:func:`why_no_source_test` says why none does; :func:`run_within_source` runs
the suite per source, into a table of :data:`WITHIN_COLUMNS`
(:func:`empty_within_results` when there is none), with each source's label
CSVs under :func:`within_source_labels_dir`; :func:`pooled_and_within` sets
each run beside the pooled one, and :func:`headline` is the report's sentence.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from cxrcluster import products, results
from cxrcluster.sources.partition import SourcePartition

#: A class counts towards the within-source test with at least this many images of that source.
MIN_CLASS_IMAGES = 20

#: Columns of ``reports/within_source_results.csv`` (:data:`cxrcluster.products.WITHIN_SOURCE_RESULTS`).
WITHIN_COLUMNS = products.WITHIN_SOURCE_RESULTS.column_names


def eligible_sources(labels, partition: SourcePartition | None, min_images: int = MIN_CLASS_IMAGES
                     ) -> dict[str, list[str]]:
    """The known sources where the fair test can run, and the classes it compares there.

    Parameters
    ----------
    labels : array-like of str, shape (n,)
        Class of each image.
    partition : SourcePartition or None
        Their sources. A proxy gives none: a file signature can merge two
        hospitals or split one, so "within one signature" is not "within one
        hospital".
    min_images : int, default :data:`MIN_CLASS_IMAGES`
        Images a class needs in a source to take part.

    Returns
    -------
    dict of str to list of str
        Source -> its classes with at least ``min_images`` images (sorted), for
        every source where there are at least two; in source order.
    """
    if partition is None or partition.is_proxy:
        return {}
    counts = pd.crosstab(pd.Series(partition.values, name="source"), pd.Series(np.asarray(labels), name="label"))
    eligible = {}
    for source, row in counts.iterrows():
        classes = sorted(str(c) for c in row.index[row >= min_images])
        if len(classes) >= 2:
            eligible[str(source)] = classes
    return eligible


def why_no_source_test(partition: SourcePartition | None, min_images: int = MIN_CLASS_IMAGES) -> str:
    """Why the within-source test has nothing to run on, for a notebook or the report."""
    if partition is None:
        return ("the sources of the images are unknown (no `source` column in the labels) and no audit metadata "
                "gives a proxy")
    if partition.is_proxy:
        return ("the sources are only a proxy (file signatures): the test needs the data to name each image's "
                "source, since a signature can merge two hospitals or split one")
    return f"no source holds two classes with at least {min_images} images each"


def source_folder_name(source: str) -> str:
    """A file-system-safe folder name for a source (letters, digits, ``.``, ``_`` and ``-``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(source)).strip("-.") or "source"


def within_source_labels_dir(labels_dir: str | os.PathLike, source: str) -> Path:
    """Folder of one source's label CSVs: ``<labels_dir>/<source>/`` (:func:`source_folder_name`)."""
    return Path(labels_dir) / source_folder_name(source)


def run_within_source(X: np.ndarray, labels: pd.DataFrame, partition: SourcePartition | None, config: Mapping, *,
                      model: str = "", min_images: int = MIN_CLASS_IMAGES, progress: bool = True,
                      background: bool = True, cluster=None) -> tuple[pd.DataFrame, dict[str, tuple]]:
    """The clustering suite on each eligible source's images alone: the fair test.

    For every source of :func:`eligible_sources`, the images of its eligible
    classes are clustered by :func:`cxrcluster.clustering.run_suite` with the
    same configuration and features (nothing is extracted again). The suite
    gives every algorithm whose cluster count the configuration leaves empty
    as many clusters as the labels it is given hold classes, so here the
    source's number of classes; statuses, the chance line and the reported run
    are the suite's own.

    Parameters
    ----------
    X : numpy.ndarray, shape (n, d)
        Features of the images (no NaN rows), in the order of ``labels``.
    labels : pandas.DataFrame
        Their rows of ``original_labels.csv`` (``image_name``, ``label``).
    partition : SourcePartition or None
        Their sources, in the same order.
    config : mapping
        The clustering configuration (:func:`cxrcluster.clustering.load_config`).
    model : str, default ""
        The model, recorded in the ``model`` column.
    min_images : int, default :data:`MIN_CLASS_IMAGES`
        See :func:`eligible_sources`.
    progress, background, cluster
        Passed to :func:`~cxrcluster.clustering.run_suite`.

    Returns
    -------
    results : pandas.DataFrame
        Columns :data:`WITHIN_COLUMNS`, one row per source and algorithm (none
        when no source is eligible); ``classes`` lists the classes compared,
        separated by ``", "``.
    runs : dict of str to (pandas.DataFrame, dict)
        Source -> its rows of ``labels`` and the cluster ids by algorithm, for
        :func:`cxrcluster.results.write_cluster_labels`.
    """
    from cxrcluster.clustering import run_suite  # here: the report reads this module without clustering

    if len(X) != len(labels):
        raise ValueError(f"{len(X)} feature rows for {len(labels)} labels rows")
    label_values = labels["label"].astype(str).to_numpy()
    tables, runs = [], {}
    for source, classes in eligible_sources(label_values, partition, min_images).items():
        inside = (partition.values == source) & np.isin(label_values, classes)
        subset = labels.loc[inside].reset_index(drop=True)
        table, cluster_ids = run_suite(X[inside], subset["label"].to_numpy(), config, model=model,
                                       progress=progress, background=background, cluster=cluster)
        tables.append(table.assign(source=source, classes=", ".join(classes), n_images=int(inside.sum()))
                      [WITHIN_COLUMNS])
        runs[source] = (subset, cluster_ids)
    if not tables:
        return empty_within_results(), runs
    return pd.concat(tables, ignore_index=True), runs


def empty_within_results() -> pd.DataFrame:
    """The within-source results with no row: the header alone."""
    return pd.DataFrame({name: pd.Series(dtype=_DTYPES[kind]) for name, kind in products.WITHIN_SOURCE_RESULTS.columns})


_DTYPES = {"str": object, "int": "int64", "float": "float64", "bool": bool}


# ---------------------------------------------------------------- pooled beside within


def pooled_and_within(pooled: pd.DataFrame, within: pd.DataFrame) -> pd.DataFrame:
    """Each within-source run beside the pooled run of the same model and algorithm.

    Parameters
    ----------
    pooled : pandas.DataFrame
        ``clustering_results.csv`` (all classes, all sources).
    within : pandas.DataFrame
        ``reports/within_source_results.csv``.

    Returns
    -------
    pandas.DataFrame
        One row per row of ``within``: ``model``, ``clustering``, ``source``,
        ``classes``, ``pooled change %``, ``pooled chance %``, ``pooled
        status``, ``within change %``, ``within chance %``, ``within p``,
        ``within status`` (status kinds; figures rounded to one decimal, p to
        three). Empty, with those columns, when ``within`` is.
    """
    columns = ["model", "clustering", "source", "classes", "pooled change %", "pooled chance %", "pooled status",
               "within change %", "within chance %", "within p", "within status"]
    rows = []
    indexed = pooled.set_index(["model", "clustering"])
    for row in within.itertuples(index=False):
        key = (row.model, row.clustering)
        base = indexed.loc[key] if key in indexed.index else None
        rows.append({
            "model": row.model, "clustering": row.clustering, "source": row.source, "classes": row.classes,
            "pooled change %": round(float(base["label_percentage_change"]), 1) if base is not None else math.nan,
            "pooled chance %": round(float(base["chance_label_change"]), 1) if base is not None else math.nan,
            "pooled status": results.status_kind(base["status"]) if base is not None else "missing",
            "within change %": round(float(row.label_percentage_change), 1),
            "within chance %": round(float(row.chance_label_change), 1),
            "within p": round(float(row.chance_p), 3),
            "within status": results.status_kind(row.status),
        })
    return pd.DataFrame(rows, columns=columns)


def headline(pooled: pd.DataFrame, within: pd.DataFrame | None = None, reference: str = "KMeans") -> str:
    """The report's headline sentence: the pooled change, and the within-source change when there is one.

    The reference run is ``reference`` (KMeans, as everywhere the project
    names one figure) on the first model whose run of it is ok, else the first
    ok run of the table; the within-source figure is that model and
    algorithm's on each source where it ran ok.

    Parameters
    ----------
    pooled : pandas.DataFrame
        ``clustering_results.csv``.
    within : pandas.DataFrame, optional
        ``reports/within_source_results.csv``.
    reference : str, default "KMeans"
        The algorithm named.

    Returns
    -------
    str
        The sentence, or "" when no run is ok.
    """
    ok = results.ok_rows(pooled)
    if ok.empty:
        return ""
    chosen = ok[ok["clustering"] == reference]
    row = (chosen if len(chosen) else ok).iloc[0]
    chance = pd.to_numeric(row.get("chance_label_change", math.nan), errors="coerce")
    sentence = (f"{row['clustering']} on {row['model']} features: {row['label_percentage_change']:.1f} % of the "
                "images change label pooled over every class and source"
                + (f" (chance {chance:.1f} %)" if pd.notna(chance) else ""))
    parts = []
    if within is not None and len(within):
        same = within[(within["model"] == row["model"]) & (within["clustering"] == row["clustering"])]
        for w in results.ok_rows(same).itertuples(index=False):
            parts.append(f"within the source {w.source} alone ({w.classes}), {w.label_percentage_change:.1f} % "
                         f"(chance {w.chance_label_change:.1f} %)")
    if parts:
        return sentence + "; " + "; ".join(parts) + ". The within-source figure is the fairer test: no hospital " \
                                                     "separates its clusters."
    return sentence + ". No within-source figure: part of it may be the images' source rather than their disease."
