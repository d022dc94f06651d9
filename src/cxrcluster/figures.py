"""Figures of the clustering study, each returned as a matplotlib Figure.

Every function builds a :class:`matplotlib.figure.Figure` directly rather than
through ``pyplot``: no global figure state, nothing leaks when a notebook draws
dozens of figures, and a notebook shows a returned figure inline exactly once.
Titles say what is shown and on which data: every function takes a
``data_note`` (e.g. ``"synthetic demo data - not evidence"``) that is appended
to its titles, so a figure of demo data cannot pass for a result.
:func:`save_figure` writes a PNG atomically.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from cxrcluster.atomic import atomic_path
from cxrcluster.results import is_ok, status_kind

#: Colour-bar labels, with units, of the metrics in ``clustering_results.csv``.
VALUE_LABELS = {
    "label_percentage_change": "matched label change (% of images)",
    "ari": "adjusted Rand index (1 = classes recovered, 0 = chance)",
    "nmi": "normalised mutual information (0 to 1)",
    "purity": "purity (share of images, 0 to 1)",
    "silhouette": "silhouette coefficient (-1 to 1)",
    "n_clusters": "number of clusters",
    "wall_time_s": "wall time (s)",
}

#: Label of a cluster that is noise (negative cluster id) in the confusion figure.
NOISE_COLUMN = "noise"

_HATCH = "///"
_HATCH_COLOUR = "0.6"
_DEGENERATE_HATCH = "xx"
_DEGENERATE_COLOUR = "firebrick"


def with_data_note(title: str, data_note: str = "") -> str:
    """Return ``title`` with ``data_note`` appended on a second line, if any.

    Parameters
    ----------
    title : str
        What the figure shows.
    data_note : str, default ""
        Which data it shows, e.g. ``"synthetic demo data - not evidence"``.

    Returns
    -------
    str
    """
    return f"{title}\n[{data_note}]" if data_note else title


def class_colours(classes) -> dict:
    """Map each class name to a fixed colour of the ``tab10`` palette, in the given order."""
    cmap = colormaps["tab10"]
    return {label: cmap(i % cmap.N) for i, label in enumerate(classes)}


def heatmap(
    results: pd.DataFrame,
    value: str = "label_percentage_change",
    data_note: str = "",
    label: str | None = None,
    fmt: str | None = None,
    cmap: str = "viridis",
    series: str = "model (feature extractor)",
) -> Figure:
    """Draw one metric as an annotated models x algorithms grid.

    Cells whose run is not ``ok`` (failed, skipped or absent), or whose metric
    is undefined, are left blank and hatched, with the run's status written in
    them and explained in a legend, so a missing value is never mistaken for
    a low one. A degenerate run's cell is hatched in red with its figure
    written, uncoloured: it is shown, not counted. With more than eight
    algorithms and fewer models, algorithms run down the rows, so one model's
    grid stays legible.

    Parameters
    ----------
    results : pandas.DataFrame
        ``clustering_results.csv``: one row per model x algorithm with columns
        ``model``, ``clustering``, ``status`` and ``value``.
    value : str, default "label_percentage_change"
        The metric column to draw.
    data_note : str, default ""
        Appended to the title.
    label : str, optional
        Colour-bar label; defaults to :data:`VALUE_LABELS` or the column name.
    fmt : str, optional
        Format of the annotations; ``"{:.1f}"`` for percentages and seconds,
        ``"{:.2f}"`` otherwise.
    cmap : str, default "viridis"
        Colour map name.
    series : str, default "model (feature extractor)"
        What the ``model`` column holds, for its axis label (for example the
        feature preparations compared by ``09-compare-preparations``).

    Returns
    -------
    matplotlib.figure.Figure
        One axes (the grid) plus its colour bar.
    """
    grid = _heatmap_grid(results, value, fmt)
    fig = Figure(figsize=grid.size, layout="constrained")
    label = label or VALUE_LABELS.get(value, value)
    title = f"{label[:1].upper()}{label[1:]} by {series.split(' (')[0]} and clustering algorithm"
    handles = _draw_heatmap(fig, grid, label, cmap, series, with_data_note(title, data_note))
    if handles:
        fig.legend(handles=handles, loc="outside lower center", fontsize="small", frameon=False)
    return fig


#: What each value's cells carry beside their figure: a column and its format.
_BESIDE = {
    "label_percentage_change": ("chance_label_change", "  (chance {:.0f})"),
    "label_given_source": ("label_given_source_p", "  (p {:.3f})"),
    "source_given_label": ("source_given_label_p", "  (p {:.3f})"),
}


@dataclass(frozen=True)
class _Grid:
    """A heatmap's cells: values, notes for the cells without one, degenerate runs, the figure beside."""

    rows: list
    cols: list
    values: np.ndarray
    notes: np.ndarray
    degenerate: np.ndarray
    beside: np.ndarray
    beside_fmt: str
    fmt: str
    transpose: bool

    @property
    def size(self) -> tuple[float, float]:
        width = (1.6 if self.transpose else 1.3) * len(self.cols) + (5.5 if self.transpose else 3.5)
        return width, (0.45 if self.transpose else 0.6) * len(self.rows) + 2.8


def _heatmap_grid(results: pd.DataFrame, value: str, fmt: str | None) -> _Grid:
    """The cells of :func:`heatmap` (models x algorithms, or transposed when there are many algorithms)."""
    for column in ("model", "clustering", "status", value):
        if column not in results.columns:
            raise KeyError(f"results lacks column {column!r}")
    if fmt is None:
        fmt = "{:.1f}" if value in ("label_percentage_change", "wall_time_s") else "{:.2f}"
    models = list(dict.fromkeys(results["model"]))
    algorithms = list(dict.fromkeys(results["clustering"]))
    indexed = results.set_index(["model", "clustering"])
    if not indexed.index.is_unique:
        raise ValueError("results has more than one row for a model x algorithm combination")

    grid = np.full((len(models), len(algorithms)), np.nan)
    notes = np.full(grid.shape, "missing", dtype=object)
    degenerate = np.zeros(grid.shape, dtype=bool)
    # the label change is read beside its own chance level, a conditional figure beside its p-value
    beside_column, beside_fmt = _BESIDE.get(value, (None, ""))
    if beside_column not in results:
        beside_column = None
    beside = np.full(grid.shape, np.nan)
    for i, model in enumerate(models):
        for j, algorithm in enumerate(algorithms):
            if (model, algorithm) not in indexed.index:
                continue
            row = indexed.loc[(model, algorithm)]
            kind = status_kind(row["status"])
            number = pd.to_numeric(row[value], errors="coerce")
            if beside_column:
                beside[i, j] = pd.to_numeric(row[beside_column], errors="coerce")
            if kind == "ok" and pd.notna(number):
                grid[i, j] = float(number)
                notes[i, j] = ""
            elif kind == "degenerate":
                # its figure is shown, but uncoloured and hatched: it is not a result
                degenerate[i, j] = True
                notes[i, j] = "degenerate" + (f"\n{fmt.format(float(number))}" if pd.notna(number) else "")
            else:
                notes[i, j] = kind if kind != "ok" else "n/a"

    # Many algorithms and few models make a long strip: algorithms then go down the rows.
    transpose = len(algorithms) > 8 and len(algorithms) > len(models)
    if transpose:
        return _Grid(algorithms, models, grid.T, notes.T, degenerate.T, beside.T, beside_fmt, fmt, True)
    return _Grid(models, algorithms, grid, notes, degenerate, beside, beside_fmt, fmt, False)


def _draw_heatmap(fig, grid: _Grid, label: str, cmap: str, series: str, title: str,
                  limits: tuple[float, float] | None = None) -> list[Patch]:
    """Draw a :class:`_Grid` with its colour bar on ``fig`` (a figure or a subfigure); return its legend's handles."""
    ax = fig.subplots()
    colour_map = colormaps[cmap]
    values = grid.values
    finite = values[np.isfinite(values)]
    vmin, vmax = limits or ((finite.min(), finite.max()) if finite.size else (0.0, 1.0))
    if vmin == vmax:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    image = ax.imshow(np.ma.masked_invalid(values), cmap=colour_map, vmin=vmin, vmax=vmax, aspect="auto")
    fig.colorbar(image, ax=ax, label=label)

    n_blank = n_degenerate = 0
    for i in range(len(grid.rows)):
        for j in range(len(grid.cols)):
            if np.isfinite(values[i, j]):
                r, g, b, _ = colour_map((values[i, j] - vmin) / (vmax - vmin))
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                text = grid.fmt.format(values[i, j])
                if np.isfinite(grid.beside[i, j]):
                    text += grid.beside_fmt.format(grid.beside[i, j])
                ax.text(j, i, text, ha="center", va="center", color="white" if dark else "black", fontsize="small")
                continue
            if grid.degenerate[i, j]:
                n_degenerate += 1
                hatch, colour = _DEGENERATE_HATCH, _DEGENERATE_COLOUR
            else:
                n_blank += 1
                hatch, colour = _HATCH, _HATCH_COLOUR
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch=hatch, edgecolor=colour,
                                   linewidth=0))
            ax.text(j, i, grid.notes[i, j], ha="center", va="center", color="0.3", fontsize="x-small",
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
    ax.set_xticks(range(len(grid.cols)), grid.cols, rotation=35, ha="right")
    ax.set_yticks(range(len(grid.rows)), grid.rows)
    ax.set_xlabel(series if grid.transpose else "clustering algorithm")
    ax.set_ylabel("clustering algorithm" if grid.transpose else series)
    ax.set_title(title)
    handles = []
    if n_blank:
        handles.append(Patch(facecolor="white", hatch=_HATCH, edgecolor=_HATCH_COLOUR,
                             label="no value: run failed, skipped or missing, or metric undefined (n/a)"))
    if n_degenerate:
        handles.append(Patch(facecolor="white", hatch=_DEGENERATE_HATCH, edgecolor=_DEGENERATE_COLOUR,
                             label="degenerate: the run did not group the images (one cluster, mostly noise, "
                                   "or nearly all in one cluster); its figure is shown, not counted"))
    return handles


def _cluster_ids(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values, errors="raise").astype("int64")


def confusion_figure(
    label_frame: pd.DataFrame,
    model: str = "",
    algorithm: str = "",
    data_note: str = "",
) -> Figure:
    """Draw labelled class x matched cluster counts of one clustering.

    Columns are the clusters matched to a class (``cluster 3 -> COVID``, in
    class order, so kept images lie on the diagonal), then all unmatched
    clusters pooled into one column, then noise (negative cluster ids). Cells
    are annotated with counts and coloured by their share of the row's class.

    Parameters
    ----------
    label_frame : pandas.DataFrame
        One ``clustering_labels/<Model>_<Algo>.csv``: columns ``image_name,
        label, cluster, matched_label, changed``.
    model, algorithm : str, default ""
        Named in the title.
    data_note : str, default ""
        Appended to the title.

    Returns
    -------
    matplotlib.figure.Figure
        One axes (the matrix) plus its colour bar.
    """
    frame = label_frame.copy()
    frame["label"] = frame["label"].astype(str)
    frame["cluster"] = _cluster_ids(frame["cluster"])
    matched = frame["matched_label"].where(frame["matched_label"].notna(), "").astype(str)
    classes = sorted(frame["label"].unique())

    # Optimal matching is one-to-one, but nothing here relies on it: every matched cluster
    # gets its own column, grouped by the class it is matched to.
    target_of_cluster: dict[int, str] = {}
    for cluster, target in zip(frame["cluster"], matched, strict=True):
        if target and cluster >= 0:
            target_of_cluster.setdefault(int(cluster), target)
    rank = {c: k for k, c in enumerate(classes)}
    matched_ids = sorted(target_of_cluster, key=lambda c: (rank.get(target_of_cluster[c], len(rank)), c))
    other_ids = sorted(set(frame.loc[frame["cluster"] >= 0, "cluster"].tolist()) - set(matched_ids))
    other_column = f"unmatched\n({len(other_ids)} cluster{'s' if len(other_ids) != 1 else ''})"
    names = {c: f"cluster {c}\n\u2192 {target_of_cluster[c]}" for c in matched_ids}
    names.update({c: other_column for c in other_ids})

    def column_of(cluster: int) -> str:
        return NOISE_COLUMN if cluster < 0 else names[cluster]

    columns = [names[c] for c in matched_ids]
    if other_ids:
        columns.append(other_column)
    if (frame["cluster"] < 0).any():
        columns.append(NOISE_COLUMN)
    frame["column"] = frame["cluster"].map(column_of)
    counts = pd.crosstab(frame["label"], frame["column"]).reindex(index=classes, columns=columns, fill_value=0)
    shares = counts.div(counts.sum(axis=1).replace(0, 1), axis=0) * 100

    fig = Figure(figsize=(1.4 * len(columns) + 3.5, 0.7 * len(classes) + 2.6), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(shares.to_numpy(), cmap="Blues", vmin=0, vmax=100, aspect="auto")
    fig.colorbar(image, ax=ax, label="share of the labelled class (%)")
    for i in range(len(classes)):
        for j in range(len(columns)):
            ax.text(j, i, str(int(counts.iat[i, j])), ha="center", va="center",
                    color="white" if shares.iat[i, j] > 60 else "black")
    ax.set_xticks(range(len(columns)), columns, fontsize="small")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("cluster (the class it is matched to)")
    ax.set_ylabel("labelled class")
    changed = frame["changed"].astype(str).str.lower().isin(["true", "1"]).mean() * 100
    what = " + ".join(part for part in (model, algorithm) if part) or "clustering"
    ax.set_title(with_data_note(
        f"Labelled class \u00d7 matched cluster (image counts): {what}, {changed:.1f}% of images change label",
        data_note,
    ))
    return fig


def _finite_rows(features: np.ndarray, *columns) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """Drop non-finite feature rows; each column may be aligned with all rows or the kept ones."""
    features = np.asarray(features, dtype=np.float64)
    keep = np.isfinite(features).all(axis=1)
    aligned = []
    for column in columns:
        if column is None:
            aligned.append(None)
            continue
        column = np.asarray(column)
        if len(column) == len(features):
            aligned.append(column[keep])
        elif len(column) == keep.sum():
            aligned.append(column)
        else:
            raise ValueError(
                f"a column of length {len(column)} matches neither the {len(features)} feature rows "
                f"nor the {keep.sum()} finite ones"
            )
    return features[keep], aligned


def embed_2d(features: np.ndarray, method: str = "pca", seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Project finite feature rows to two dimensions.

    Parameters
    ----------
    features : numpy.ndarray
        ``n x d`` features without non-finite rows.
    method : {"pca", "tsne"}, default "pca"
        PCA, or t-SNE (on the first 50 principal components, PCA-initialised).
    seed : int, default 0
        Seeds the t-SNE optimisation (and the randomised PCA solver).

    Returns
    -------
    tuple of (numpy.ndarray, list of str)
        The ``n x 2`` coordinates and the two axis labels.
    """
    if method == "pca":
        pca = PCA(n_components=2, random_state=seed)
        coords = pca.fit_transform(features)
        ratio = pca.explained_variance_ratio_ * 100
        return coords, [f"PC {k + 1} ({ratio[k]:.1f}% of variance)" for k in range(2)]
    if method == "tsne":
        n_components = min(50, features.shape[0], features.shape[1])
        reduced = PCA(n_components=n_components, random_state=seed).fit_transform(features)
        perplexity = float(min(30.0, max(2.0, (features.shape[0] - 1) / 3)))
        coords = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(reduced)
        return coords, ["t-SNE 1", "t-SNE 2"]
    raise ValueError(f"method must be 'pca' or 'tsne', not {method!r}")


def embedding_figure(
    features: np.ndarray,
    labels,
    clusters=None,
    method: str = "pca",
    seed: int = 0,
    model: str = "",
    algorithm: str = "",
    data_note: str = "",
) -> Figure:
    """Draw a 2-D map of features coloured by label and, beside it, by cluster.

    Rows with a non-finite value (an unreadable image's all-NaN row) are
    dropped. ``labels`` and ``clusters`` may be aligned with all feature rows
    or with the finite ones only.

    Parameters
    ----------
    features : numpy.ndarray
        ``features/<Model>.npy``, ``n_images x d``.
    labels : array-like
        Class of each row.
    clusters : array-like, optional
        Cluster id of each row (negative = noise). Without it only the label
        panel is drawn.
    method : {"pca", "tsne"}, default "pca"
        Projection; see :func:`embed_2d`.
    seed : int, default 0
        Seed of the projection.
    model, algorithm : str, default ""
        Named in the titles.
    data_note : str, default ""
        Appended to the titles.

    Returns
    -------
    matplotlib.figure.Figure
        One axes per colouring (label, then cluster), sharing the same map.
    """
    kept, (labels, clusters) = _finite_rows(features, labels, clusters)
    if len(kept) < 3:
        raise ValueError(f"need at least 3 finite feature rows for a 2-D map, got {len(kept)}")
    coords, axis_labels = embed_2d(kept, method=method, seed=seed)
    labels = labels.astype(str)
    method_name = {"pca": "PCA", "tsne": "t-SNE"}[method]
    subject = f"{model} features" if model else "features"

    n_panels = 1 if clusters is None else 2
    fig = Figure(figsize=(6.5 * n_panels, 5.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, n_panels, sharex=True, sharey=True))

    colours = class_colours(sorted(np.unique(labels)))
    for label, colour in colours.items():
        at = labels == label
        axes[0].scatter(coords[at, 0], coords[at, 1], s=8, alpha=0.7, color=colour,
                        label=f"{label} (n={at.sum()})")
    axes[0].legend(fontsize="small", markerscale=2, title="labelled class")
    axes[0].set_title(with_data_note(f"{method_name} map of {subject} ({len(kept)} images), by label", data_note))

    if clusters is not None:
        clusters = clusters.astype(np.int64)
        ids = sorted(set(clusters.tolist()))
        real = [c for c in ids if c >= 0]
        # tab20 pairs similar shades, so it is only used when ten colours are not enough.
        cluster_cmap = colormaps["tab10" if len(real) <= 10 else "tab20"]
        for cluster in ids:
            at = clusters == cluster
            colour = to_rgba("0.75") if cluster < 0 else cluster_cmap(real.index(cluster) % cluster_cmap.N)
            name = "noise" if cluster < 0 else f"cluster {cluster}"
            axes[1].scatter(coords[at, 0], coords[at, 1], s=8, alpha=0.7, color=colour,
                            label=f"{name} (n={at.sum()})", zorder=1 if cluster < 0 else 2)
        if len(ids) <= 20:
            axes[1].legend(fontsize="small", markerscale=2, title="cluster")
        by = f"by {algorithm} cluster" if algorithm else "by cluster"
        axes[1].set_title(with_data_note(
            f"{method_name} map of {subject}, {by} ({len(real)} clusters)", data_note))
    for ax in axes:
        ax.set_xlabel(axis_labels[0])
        ax.set_ylabel(axis_labels[1])
    return fig


def walltime_figure(results: pd.DataFrame, data_note: str = "") -> Figure:
    """Draw the wall time of each clustering algorithm, one bar per model, on a log scale.

    Only runs with status ``ok`` and a finite wall time are drawn (a failed
    run's time measures its failure). Algorithms are ordered by median time.

    Parameters
    ----------
    results : pandas.DataFrame
        ``clustering_results.csv`` with ``model``, ``clustering``, ``status``
        and ``wall_time_s``.
    data_note : str, default ""
        Appended to the title.

    Returns
    -------
    matplotlib.figure.Figure
        One axes with a logarithmic y axis in seconds.
    """
    rows = results[results["status"].map(is_ok)].copy()
    rows["wall_time_s"] = pd.to_numeric(rows["wall_time_s"], errors="coerce")
    rows = rows[np.isfinite(rows["wall_time_s"])]
    order = rows.groupby("clustering")["wall_time_s"].median().sort_values().index.tolist()
    models = list(dict.fromkeys(rows["model"]))
    width = 0.8 / max(1, len(models))

    fig = Figure(figsize=(max(6.0, 1.1 * len(order) + 3), 4.8), layout="constrained")
    ax = fig.subplots()
    # Log scale cannot show 0 s: a run faster than the timer's resolution is drawn at 1 ms.
    floor = 1e-3
    for k, model in enumerate(models):
        times = rows[rows["model"] == model].set_index("clustering")["wall_time_s"].reindex(order)
        ax.bar(np.arange(len(order)) + (k - (len(models) - 1) / 2) * width,
               times.clip(lower=floor).to_numpy(), width=width, label=model)
    ax.set_yscale("log")
    ax.set_xticks(range(len(order)), order, rotation=35, ha="right")
    ax.set_xlabel("clustering algorithm (ordered by median wall time)")
    ax.set_ylabel("wall time (s, log scale)")
    ax.set_title(with_data_note("Wall time per clustering algorithm and model (runs with status ok)", data_note))
    if models:
        ax.legend(fontsize="small", title="model", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", which="major", alpha=0.3)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> None:
    """Write ``fig`` as a PNG atomically (temporary file, then rename).

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The figure.
    path : path-like
        Destination ``.png``; its folder is created if needed.
    dpi : int, default 120
        Resolution.
    """
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")


def show(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> None:
    """Save ``fig`` (:func:`save_figure`) and display it in the running notebook.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The figure.
    path : path-like
        Destination ``.png``.
    dpi : int, default 120
        Resolution of the file.
    """
    from IPython.display import display  # only notebooks display; importing it elsewhere costs time

    save_figure(fig, path, dpi=dpi)
    display(fig)


def matrix_figure(matrix: pd.DataFrame, title: str, data_note: str = "", value_label: str = "images") -> Figure:
    """Draw a labelled count matrix (e.g. true × predicted class), coloured by row share.

    Parameters
    ----------
    matrix : pandas.DataFrame
        Counts; the index and columns name the rows and columns (their
        ``name`` attributes become the axis labels).
    title : str
        What is shown.
    data_note : str, default ""
        Appended to the title.
    value_label : str, default "images"
        What the counts count.

    Returns
    -------
    matplotlib.figure.Figure
    """
    counts = matrix.to_numpy(dtype=float)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig = Figure(figsize=(1.3 * counts.shape[1] + 3, 1.0 * counts.shape[0] + 2), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(counts):
        ax.text(j, i, f"{int(v)}", ha="center", va="center", color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(range(counts.shape[1]), [str(c) for c in matrix.columns], rotation=30, ha="right")
    ax.set_yticks(range(counts.shape[0]), [str(c) for c in matrix.index])
    ax.set_xlabel(matrix.columns.name or "")
    ax.set_ylabel(matrix.index.name or "")
    ax.set_title(with_data_note(title, data_note))
    fig.colorbar(im, ax=ax, label=f"share of the row's {value_label}")
    return fig
