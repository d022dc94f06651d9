"""The clustering products and their one reader: label CSVs, results tables, statuses, the best run.

Every clustering result that passes from one notebook to the next goes through
this module, so that its name, its columns and its meaning are defined once:

- ``clustering_labels/<Model>_<Algorithm>.csv`` (:func:`label_csv_path`), one
  per model x algorithm run that finished: each image's label, cluster,
  matched class and whether it changed (:func:`write_cluster_labels`,
  :func:`read_label_frame`, :func:`load_label_frames`);
- ``results/<Model>.csv`` (:func:`model_results_path`), one model's rows of the
  results table, and ``clustering_results.csv``, all models' rows gathered in
  the order asked for (:func:`gather_results`, :func:`read_results`);
- a run's ``status`` (:func:`status_kind`, :func:`is_ok`) and a model's best
  algorithm (:func:`best_algorithm`).

Beside each model's results table, ``results/<Model>.label_csvs.txt`` lists
the label CSVs written for it, one file name a line (:func:`label_manifest_path`):
the Makefile reads it, without running Python, to declare them as products of
the clustering rule, so that a deleted label CSV is made again.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxrcluster import atomic, metrics

#: Columns of a label CSV, in order.
LABEL_FRAME_COLUMNS = ["image_name", "label", "cluster", "matched_label", "changed"]

#: Columns of the results table that hold text; every other column is numeric.
TEXT_COLUMNS = ("model", "clustering", "preparation", "params", "status", "source_kind", "follows")

#: The kinds of status a run can have (:func:`status_kind`); ``missing`` is a run with no status.
#: Only ``ok`` runs are results: a ``degenerate`` run finished but did not group the images
#: (:func:`cxrcluster.clustering.degenerate_reason`), and keeps its row, metrics and label CSV.
STATUS_KINDS = ("ok", "degenerate", "failed", "skipped", "missing")


# ---------------------------------------------------------------- names


def combination_key(model: str, algorithm: str) -> str:
    """Name of a model x algorithm combination: ``<Model>_<Algorithm>``.

    Algorithm names hold no underscore (the registry refuses them), so the key
    splits back into its two parts at its last underscore.
    """
    return f"{model}_{algorithm}"


def label_csv_path(labels_dir: str | os.PathLike, model: str, algorithm: str) -> Path:
    """Path of one run's label CSV: ``<labels_dir>/<Model>_<Algorithm>.csv``."""
    return Path(labels_dir) / f"{combination_key(model, algorithm)}.csv"


def model_results_path(results_dir: str | os.PathLike, model: str) -> Path:
    """Path of one model's results table: ``<results_dir>/<Model>.csv``."""
    return Path(results_dir) / f"{model}.csv"


def label_manifest_path(results_dir: str | os.PathLike, model: str) -> Path:
    """Path of the list of one model's label CSVs: ``<results_dir>/<Model>.label_csvs.txt``."""
    return Path(results_dir) / f"{model}.label_csvs.txt"


# ---------------------------------------------------------------- statuses


def status_kind(status) -> str:
    """The kind of a run's status: ``ok``, ``degenerate``, ``failed``, ``skipped``, or ``missing`` when there is none.

    A status is its kind, optionally followed by a colon and a reason, as in
    ``failed: MemoryError: ...``.
    """
    if status is None or (not isinstance(status, str) and pd.isna(status)):
        return "missing"
    return str(status).split(":", 1)[0].strip()


def is_ok(status) -> bool:
    """Whether a run with this status is a result (its kind is ``ok``)."""
    return status_kind(status) == "ok"


def ok_rows(results: pd.DataFrame) -> pd.DataFrame:
    """The rows of a results table whose status is ok, in order."""
    return results[results["status"].map(is_ok)]


def ok_combinations(results: pd.DataFrame) -> list[str]:
    """Keys (:func:`combination_key`) of the runs with status ok, in results order."""
    ok = ok_rows(results)
    return [combination_key(m, a) for m, a in zip(ok["model"], ok["clustering"], strict=True)]


# ---------------------------------------------------------------- label CSVs


def write_cluster_labels(
    labels_dir: str | os.PathLike,
    model: str,
    cluster_ids: Mapping[str, np.ndarray],
    image_names: Sequence[str],
    labels: Sequence[str],
    results_dir: str | os.PathLike | None = None,
) -> list[Path]:
    """Write one label CSV per run of ``model``, remove the model's stale ones and list them.

    Parameters
    ----------
    labels_dir : path-like
        The ``clustering_labels/`` folder.
    model : str
        The model whose runs these are.
    cluster_ids : mapping of str to numpy.ndarray
        Algorithm name -> cluster id of each image (``-1`` noise), as returned
        by :func:`cxrcluster.clustering.run_suite`.
    image_names, labels : sequence of str
        Name and class of each image, in the order of the cluster ids.
    results_dir : path-like, optional
        Where the model's results table goes; the list of the files written
        (:func:`label_manifest_path`) is written there. None writes no list.

    Returns
    -------
    list of pathlib.Path
        The files written. Label CSVs of ``model`` for algorithms not in
        ``cluster_ids`` (no longer configured, or not finished this time) are
        deleted, so that nothing stale survives.
    """
    written = []
    for algorithm, clusters in cluster_ids.items():
        path = label_csv_path(labels_dir, model, algorithm)
        atomic.write_csv(metrics.label_table(image_names, labels, clusters), path)
        written.append(path)
    keep = {p.name for p in written}
    for stale in sorted(Path(labels_dir).glob(f"{combination_key(model, '*')}.csv")):
        if stale.name not in keep and "_" not in stale.stem[len(model) + 1:]:
            stale.unlink()
    if results_dir is not None:
        with atomic.atomic_open(label_manifest_path(results_dir, model), "w", encoding="utf-8") as fh:
            fh.writelines(f"{path.name}\n" for path in written)
    return written


def read_label_manifest(results_dir: str | os.PathLike, model: str) -> list[str]:
    """The file names of the label CSVs last written for ``model`` (empty if none were listed)."""
    path = label_manifest_path(results_dir, model)
    return path.read_text(encoding="utf-8").split() if path.is_file() else []


def parse_bool_column(values: pd.Series) -> pd.Series:
    """Parse a ``changed`` column written as True/False (or 1/0) into booleans."""
    if values.dtype == bool:
        return values
    text = values.astype(str).str.strip().str.lower()
    known = text.isin(["true", "false", "1", "0", "1.0", "0.0"])
    if not known.all():
        raise ValueError(f"'changed' holds values other than True/False: {sorted(set(text[~known]))[:5]}")
    return text.isin(["true", "1", "1.0"])


def read_label_frame(path: str | os.PathLike) -> pd.DataFrame:
    """Read one label CSV with typed columns.

    Parameters
    ----------
    path : path-like
        The CSV file (:func:`label_csv_path`).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`LABEL_FRAME_COLUMNS`; ``matched_label`` is the empty
        string for noise and unmatched clusters and ``changed`` is boolean.
    """
    frame = pd.read_csv(path, dtype={"image_name": str, "label": str, "matched_label": str},
                        keep_default_na=False, na_values={"cluster": [""]})
    missing = [c for c in LABEL_FRAME_COLUMNS if c not in frame.columns]
    if missing:
        raise KeyError(f"{path} lacks column(s) {missing}")
    frame["changed"] = parse_bool_column(frame["changed"])
    return frame


def read_cluster_labels(labels_dir: str | os.PathLike, model: str, algorithm: str) -> pd.DataFrame:
    """Read the label CSV of one model x algorithm run (:func:`read_label_frame`)."""
    return read_label_frame(label_csv_path(labels_dir, model, algorithm))


def clusters_in_order(frame: pd.DataFrame, image_names: Iterable[str]) -> np.ndarray:
    """The cluster of each image of ``image_names``, in that order, from a label frame.

    Images absent from the frame get NaN.
    """
    order = pd.DataFrame({"image_name": list(image_names)})
    return order.merge(frame[["image_name", "cluster"]], how="left")["cluster"].to_numpy()


def load_label_frames(results: pd.DataFrame, labels_dir: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """Load the label CSV of every run with status ok.

    Parameters
    ----------
    results : pandas.DataFrame
        ``clustering_results.csv`` (columns ``model``, ``clustering``, ``status``).
    labels_dir : path-like
        The ``clustering_labels/`` folder.

    Returns
    -------
    dict of str to pandas.DataFrame
        Keyed by :func:`combination_key`, in results order.

    Raises
    ------
    FileNotFoundError
        If an ok run has no label CSV: the results and the labels are out of
        step and anything built on them would silently miss a run.
    """
    frames = {}
    ok = ok_rows(results)
    for model, algorithm in zip(ok["model"], ok["clustering"], strict=True):
        path = label_csv_path(labels_dir, model, algorithm)
        key = combination_key(model, algorithm)
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing although {key} has status ok in the results")
        frames[key] = read_label_frame(path)
    return frames


# ---------------------------------------------------------------- results tables


def read_results(path: str | os.PathLike) -> pd.DataFrame:
    """Read a results table (``results/<Model>.csv`` or ``clustering_results.csv``) with typed columns.

    Text columns (:data:`TEXT_COLUMNS`) are strings; the others are parsed as
    numbers by pandas (an empty field is NaN).
    """
    return pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS})


def write_model_results(results: pd.DataFrame, results_dir: str | os.PathLike, model: str) -> Path:
    """Write one model's results table atomically to :func:`model_results_path`; return the path."""
    path = model_results_path(results_dir, model)
    atomic.write_csv(results, path)
    return path


def gather_results(results_dir: str | os.PathLike, models: Sequence[str]) -> pd.DataFrame:
    """Gather the models' results tables into one, in the order of ``models``.

    Raises
    ------
    FileNotFoundError
        Naming every model whose results table is missing.
    """
    missing = [m for m in models if not model_results_path(results_dir, m).is_file()]
    if missing:
        raise FileNotFoundError(f"no clustering results for {missing} in {results_dir}; "
                                "run 03-cluster for them first")
    return pd.concat([read_results(model_results_path(results_dir, m)) for m in models], ignore_index=True)


# ---------------------------------------------------------------- the best run


#: The two ways of naming a model's best algorithm (:func:`best_algorithm`), as the reports say them.
BEST_RULES = {
    "labels": "lowest matched label change (chosen with the labels: optimistic)",
    "silhouette": "highest silhouette on shared features (chosen without the labels)",
}


def best_algorithm(results: pd.DataFrame, model: str, by: str = "labels") -> str:
    """Name a model's best algorithm, with the labels or without them.

    Only runs with status ok compete (degenerate, failed and skipped runs
    never do).

    - ``by="labels"``: the lowest matched label change; ties go to the higher
      ARI, then to the alphabetically first name. The labels choose, so the
      winner's figure is optimistic: it is the best of many tries.
    - ``by="silhouette"``: the highest ``comparable_silhouette``, computed
      for every run on the same features (the shared preparation) with noise
      counted as 0, no label used; ties go to the higher stability over
      seeds, then to the name. What a researcher without labels would pick.
      (Each algorithm's own ``silhouette`` is not comparable: a UMAP
      embedding, or leaving half the images out as noise, inflates it.)

    Parameters
    ----------
    results : pandas.DataFrame
        ``clustering_results.csv``.
    model : str
        The model name.
    by : {"labels", "silhouette"}, default "labels"
        The rule (:data:`BEST_RULES`).

    Returns
    -------
    str
        The ``clustering`` value of the best run.

    Raises
    ------
    ValueError
        If the model has no ok run with a finite figure to rank by, or on an unknown rule.
    """
    if by not in BEST_RULES:
        raise ValueError(f"by must be one of {list(BEST_RULES)}, not {by!r}")
    rows = results[(results["model"] == model) & results["status"].map(is_ok)].copy()

    def number(column: str) -> pd.Series:
        return pd.to_numeric(rows[column], errors="coerce") if column in rows else pd.Series(np.nan, rows.index)

    if by == "labels":
        rows["_key"], rows["_tie"] = number("label_percentage_change"), -number("ari")
    else:
        rows["_key"], rows["_tie"] = -number("comparable_silhouette"), -number("stability")
    rows = rows[np.isfinite(rows["_key"])]
    if rows.empty:
        figure = "label change" if by == "labels" else "silhouette"
        raise ValueError(f"model {model!r} has no clustering run with status ok and a finite {figure}")
    rows = rows.sort_values(["_key", "_tie", "clustering"], na_position="last")
    return str(rows["clustering"].iloc[0])


def run_row(results: pd.DataFrame, model: str, algorithm: str) -> pd.Series:
    """The results row of one model x algorithm run (KeyError if there is none)."""
    rows = results[(results["model"] == model) & (results["clustering"] == algorithm)]
    if rows.empty:
        raise KeyError(f"no results row for {combination_key(model, algorithm)}")
    return rows.iloc[0]


def readable_table(results: pd.DataFrame) -> pd.DataFrame:
    """The results table as a reader takes it in: status at a glance, rounded figures beside their chance.

    Parameters
    ----------
    results : pandas.DataFrame
        ``clustering_results.csv`` (or one model's table).

    Returns
    -------
    pandas.DataFrame
        Columns ``model``, ``clustering``, ``status`` (the kind), ``change %``
        (matched label change, one decimal), ``chance %`` (the same cluster
        sizes at random), ``p`` (how often chance does as well), ``ARI``,
        ``NMI``, ``clusters``, ``noise %``, ``stability``, ``fitted`` (images
        the run was fitted on, of all) and ``why`` (the reason of a status
        other than ok, shortened). Figures are blank for failed and skipped runs.
    """
    def column(name: str) -> pd.Series:
        return pd.to_numeric(results[name], errors="coerce") if name in results else pd.Series(np.nan, results.index)

    reason = results["status"].astype(str).str.partition(":")[2].str.strip()
    fitted = [f"{int(f):,}/{int(n):,}" if pd.notna(f) and f and f < n else "all"
              for f, n in zip(column("n_fitted"), column("n_images"), strict=True)]
    return pd.DataFrame({
        "model": results["model"],
        "clustering": results["clustering"],
        "status": results["status"].map(status_kind),
        "change %": column("label_percentage_change").round(1),
        "chance %": column("chance_label_change").round(1),
        "p": column("chance_p").round(3),
        "ARI": column("ari").round(3),
        "NMI": column("nmi").round(3),
        "clusters": column("n_clusters").astype("Int64"),
        "noise %": (100 * column("noise_fraction")).round(1),
        "stability": column("stability").round(2),
        "fitted": fitted,
        "why": reason.where(reason.str.len() <= 90, reason.str.slice(0, 87) + "..."),
    })


def summarise_variant(results: pd.DataFrame, classification: pd.DataFrame,
                      reference_algorithm: str = "KMeans", within_source: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per model of a pipeline variant: its best clustering, one reference clustering and its probe.

    Parameters
    ----------
    results : pandas.DataFrame
        The variant's ``clustering_results.csv``.
    classification : pandas.DataFrame
        The variant's ``classification_results.csv`` (``model``, ``accuracy_mean``).
    reference_algorithm : str, default "KMeans"
        The algorithm whose ARI, and within-source change, is reported for every model.
    within_source : pandas.DataFrame, optional
        The variant's ``reports/within_source_results.csv``: the fair test,
        each source's images clustered on their own.

    Returns
    -------
    pandas.DataFrame
        Indexed by model (the models of ``classification``), with columns
        ``best_label_change`` (% of :func:`best_algorithm`, NaN if none ran),
        ``best_algorithm`` ("" if none ran), both chosen with the labels
        (:func:`best_algorithm`), ``label_free_label_change`` and
        ``label_free_algorithm`` (the best chosen without them, by silhouette),
        ``kmeans_ari`` (the reference algorithm's ARI when it ran ok, else
        NaN) and ``probe_accuracy``; then the source's side: ``source_probe_accuracy``
        (the probe's balanced accuracy at telling the sources apart) and
        ``within_source_probe_accuracy`` (at telling the classes apart within one
        source), NaN without a source; ``within_source_change`` and
        ``within_source_chance``: the reference algorithm's label change, and its
        chance level, within one source (over the sources tested, weighted by
        their images; NaN where none was tested or it did not run ok).
    """
    probes = classification.set_index("model")
    rows = []
    for model in probes.index:
        chosen = {}
        for by in BEST_RULES:
            try:
                best = best_algorithm(results, model, by=by)
                chosen[by] = (best, float(run_row(results, model, best)["label_percentage_change"]))
            except ValueError:
                chosen[by] = ("", float("nan"))
        try:
            reference = run_row(results, model, reference_algorithm)
            ari = float(reference["ari"]) if is_ok(reference["status"]) else float("nan")
        except KeyError:
            ari = float("nan")
        within = _within_source_figures(within_source, model, reference_algorithm)
        rows.append({"model": model, "best_label_change": chosen["labels"][1], "best_algorithm": chosen["labels"][0],
                     "label_free_label_change": chosen["silhouette"][1],
                     "label_free_algorithm": chosen["silhouette"][0], "kmeans_ari": ari,
                     "probe_accuracy": float(probes.loc[model, "accuracy_mean"]),
                     "source_probe_accuracy": _number(probes.loc[model], "source_balanced_accuracy"),
                     "within_source_probe_accuracy": _number(probes.loc[model], "within_source_balanced_accuracy"),
                     **within})
    return pd.DataFrame(rows, columns=["model", "best_label_change", "best_algorithm", "label_free_label_change",
                                       "label_free_algorithm", "kmeans_ari", "probe_accuracy", "source_probe_accuracy",
                                       "within_source_probe_accuracy", "within_source_change",
                                       "within_source_chance"]).set_index("model")


def _number(row: pd.Series, column: str) -> float:
    return float(row[column]) if column in row.index and pd.notna(row[column]) else float("nan")


def _within_source_figures(within_source: pd.DataFrame | None, model: str, algorithm: str) -> dict:
    """The algorithm's within-source change and chance, over the sources where it ran ok, weighted by images."""
    empty = {"within_source_change": float("nan"), "within_source_chance": float("nan")}
    if within_source is None or within_source.empty:
        return empty
    rows = within_source[(within_source["model"] == model) & (within_source["clustering"] == algorithm)]
    rows = rows[[is_ok(status) for status in rows["status"]]]
    if rows.empty:
        return empty
    weights = rows["n_images"].astype(float)
    return {"within_source_change": float((rows["label_percentage_change"] * weights).sum() / weights.sum()),
            "within_source_chance": float((rows["chance_label_change"] * weights).sum() / weights.sum())}
