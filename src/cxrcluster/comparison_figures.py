"""Figures that set the clustering beside other measures of the same features.

:func:`supervised_vs_clustering_figure` puts each model's linear probe beside
its two best clusterings and their chance levels; :func:`variants_figure`
puts full and lung-masked X-rays side by side; :func:`source_heatmaps` sets
the label change beside what the clusters say about the label within each
source and the source within each label, and :func:`within_source_figure`
the pooled change beside the change within one source (the fair test). Built like those of
:mod:`cxrcluster.figures`: a :class:`matplotlib.figure.Figure` each, titled
with the data note.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from cxrcluster.figures import VALUE_LABELS, _draw_heatmap, _heatmap_grid, with_data_note
from cxrcluster.results import BEST_RULES, best_algorithm


def supervised_vs_clustering_figure(classification: pd.DataFrame, results: pd.DataFrame,
                                    data_note: str = "") -> Figure:
    """Per model: the linear probe's accuracy beside two best clusterings' matched accuracy, and chance.

    The probe's cross-validated accuracy says how much label structure a
    feature space holds; a clustering's matched accuracy (100 % minus its
    matched label change) says how much of it clustering recovers without
    labels. Two clusterings are drawn per model, each named in its bar: the
    best chosen with the labels (lowest change: optimistic) and the best
    chosen without them (highest silhouette), see
    :func:`cxrcluster.results.best_algorithm`. Over each clustering bar a black
    tick marks its chance level: the matched accuracy of its own cluster sizes
    shuffled at random (``100 - chance_label_change``), which is not 1 / k.

    Parameters
    ----------
    classification : pandas.DataFrame
        ``classification_results.csv`` (``model``, ``accuracy_mean``, ``accuracy_std``).
    results : pandas.DataFrame
        ``clustering_results.csv``.
    data_note : str, default ""
        Appended to the title.

    Returns
    -------
    matplotlib.figure.Figure
    """
    models = list(dict.fromkeys(classification["model"]))
    probe = classification.set_index("model").reindex(models)
    x = np.arange(len(models))
    fig = Figure(figsize=(max(7.0, 1.8 * len(models) + 4), 5.0), layout="constrained")
    ax = fig.subplots()
    ax.bar(x - 0.27, 100 * probe["accuracy_mean"].to_numpy(float), 0.27,
           yerr=100 * probe["accuracy_std"].to_numpy(float), capsize=4, label="linear probe (supervised, cross-validated)")
    for offset, by, colour in ((0.0, "labels", "tab:orange"), (0.27, "silhouette", "tab:green")):
        accuracy, chance, names = [], [], []
        for m in models:
            try:
                algo = best_algorithm(results, m, by=by)
            except ValueError:
                accuracy.append(np.nan)
                chance.append(np.nan)
                names.append("no ok run")
                continue
            row = results[(results["model"] == m) & (results["clustering"] == algo)].iloc[0]
            accuracy.append(100.0 - float(row["label_percentage_change"]))
            chance.append(100.0 - float(row["chance_label_change"]) if "chance_label_change" in row else np.nan)
            names.append(algo)
        ax.bar(x + offset, accuracy, 0.27, color=colour, label=f"best clustering, {BEST_RULES[by]}")
        ax.hlines(chance, x + offset - 0.13, x + offset + 0.13, colors="black", linewidth=2.5)
        for xi, name in zip(x, names, strict=True):  # the algorithm's name inside its bar
            ax.text(xi + offset, 2, name, ha="center", va="bottom", fontsize="x-small", rotation=90)
    ax.plot([], [], color="black", linewidth=2.5, label="chance: the same cluster sizes shuffled at random")
    ax.set_xticks(x, models, rotation=30, ha="right")
    ax.set_ylim(0, 115)
    ax.set_ylabel("accuracy after matching clusters to classes (% of images)")
    ax.set_xlabel("model (feature extractor)")
    ax.set_title(with_data_note("Label structure in each feature space: supervised probe vs clustering", data_note))
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def variants_figure(comparison: pd.DataFrame, data_note: str = "") -> Figure:
    """Full versus lung-masked images, side by side, for each model.

    Parameters
    ----------
    comparison : pandas.DataFrame
        One row per model with ``<metric>_full`` and ``<metric>_masked``
        columns for ``best_label_change`` (% of the best chosen with the
        labels), optionally ``label_free_label_change`` (% of the best chosen
        without them), ``kmeans_ari`` and ``probe_accuracy`` (0-1), as written
        by ``08-compare-variants``.
    data_note : str, default ""
        Appended to the title.

    Returns
    -------
    matplotlib.figure.Figure
        One panel per measure: best matched label change (with labels, and
        without them when given), KMeans ARI, probe accuracy.
    """
    panels = [("best_label_change", "matched label change (%) of the best\nchosen with the labels"),
              ("label_free_label_change", "matched label change (%) of the best\nchosen without the labels"),
              ("kmeans_ari", "KMeans ARI"), ("probe_accuracy", "linear-probe accuracy")]
    panels = [(m, label) for m, label in panels if f"{m}_full" in comparison]
    fig = Figure(figsize=(4.4 * len(panels), 4.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    x = np.arange(len(comparison))
    for ax, (metric, label) in zip(axes, panels, strict=True):
        ax.bar(x - 0.2, comparison[f"{metric}_full"].to_numpy(float), 0.4, label="full image")
        ax.bar(x + 0.2, comparison[f"{metric}_masked"].to_numpy(float), 0.4, label="lungs only (masked)")
        ax.set_xticks(x, comparison["model"], rotation=30, ha="right")
        ax.set_ylabel(label.replace("\n", " "))
        ax.set_title(label, fontsize="medium")
    axes[0].legend(fontsize="small")
    fig.suptitle(with_data_note("Full versus lung-masked X-rays", data_note))
    return fig


def source_heatmaps(results: pd.DataFrame, data_note: str = "", notes: list[str] | None = None) -> Figure:
    """The label change beside what the clusters say about the label within a source, and the reverse.

    Three models x algorithms grids drawn as :func:`heatmap` draws one: the
    matched label change (with its chance level), ``label_given_source``
    = I(C; Y | S) / H(Y | S) and ``source_given_label`` = I(C; S | Y) / H(S | Y)
    (:mod:`cxrcluster.sources`), each with its permutation p-value, on a
    fixed 0 to 1 scale.

    Parameters
    ----------
    results : pandas.DataFrame
        ``clustering_results.csv`` with the source columns
        (:data:`cxrcluster.sources.SOURCE_COLUMNS`).
    data_note : str, default ""
        Appended to the titles.
    notes : list of str, optional
        Lines written under the figure's title: that the sources are a proxy,
        or that every class comes from one source (so that the third grid is
        0 by construction).

    Returns
    -------
    matplotlib.figure.Figure
        Three subfigures, each one grid and its colour bar.
    """
    panels = [("label_percentage_change", "Matched label change (%, chance beside)", None, "viridis"),
              ("label_given_source", "The label within each source:\nI(C;Y|S) / H(Y|S), p beside", (0.0, 1.0), "magma"),
              ("source_given_label", "The source within each label:\nI(C;S|Y) / H(S|Y), p beside", (0.0, 1.0), "magma")]
    grids = [_heatmap_grid(results, value, None) for value, *_ in panels]
    width = sum(g.size[0] for g in grids)
    height = max(g.size[1] for g in grids) + 0.4 * len(notes or []) + 0.5
    fig = Figure(figsize=(width, height), layout="constrained")
    title = with_data_note("Does the clustering follow the label or the source?", data_note)
    fig.suptitle("\n".join([title, *(notes or [])]), fontsize="medium")
    legend = {}
    for sub, grid, (value, title, limits, cmap) in zip(fig.subfigures(1, 3), grids, panels, strict=True):
        label = VALUE_LABELS.get(value, value) if value == "label_percentage_change" else "0 to 1"
        for handle in _draw_heatmap(sub, grid, label, cmap, "model (feature extractor)", title, limits):
            legend[handle.get_label()] = handle
    if legend:
        fig.legend(handles=list(legend.values()), loc="outside lower center", fontsize="small", frameon=False)
    return fig


def within_source_figure(side_by_side: pd.DataFrame, data_note: str = "") -> Figure:
    """Each algorithm's matched label change pooled, beside its change within one source, with chance ticks.

    Parameters
    ----------
    side_by_side : pandas.DataFrame
        :func:`cxrcluster.sources.pooled_and_within`.
    data_note : str, default ""
        Appended to the titles.

    Returns
    -------
    matplotlib.figure.Figure
        One axes per model: horizontal bars per algorithm (the pooled run,
        then one per source), a black tick at each bar's chance level; a run
        that is not ok has no bar and its status written instead.
    """
    models = list(dict.fromkeys(side_by_side["model"])) or [""]
    algorithms = list(dict.fromkeys(side_by_side["clustering"]))
    source_names = list(dict.fromkeys(side_by_side["source"]))
    series = [("pooled: every class and source", None)] + [(f"within {s}", s) for s in source_names]
    colours = ["0.6"] + [colormaps["tab10"](i % 10) for i in range(len(source_names))]
    height = 0.22 * max(1, len(algorithms)) * len(series) + 1.8
    fig = Figure(figsize=(7.0 * len(models), height), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(models), squeeze=False)[0])
    bar = 0.8 / len(series)
    for ax, model in zip(axes, models, strict=True):
        rows = side_by_side[side_by_side["model"] == model]
        for k, ((name, source), colour) in enumerate(zip(series, colours, strict=True)):
            for i, algorithm in enumerate(algorithms):
                picked = rows[rows["clustering"] == algorithm]
                if source is not None:
                    picked = picked[picked["source"] == source]
                if picked.empty:
                    continue
                first = picked.iloc[0]
                prefix = "pooled" if source is None else "within"
                y = i + (k - (len(series) - 1) / 2) * bar
                if first[f"{prefix} status"] != "ok":
                    ax.text(1, y, first[f"{prefix} status"], va="center", fontsize="x-small", color="0.3")
                    continue
                ax.barh(y, first[f"{prefix} change %"], height=bar, color=colour,
                        label=name if i == 0 or name not in ax.get_legend_handles_labels()[1] else None)
                ax.plot([first[f"{prefix} chance %"]] * 2, [y - bar / 2, y + bar / 2], color="black", linewidth=2)
        ax.set_yticks(range(len(algorithms)), algorithms)
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_xlabel("matched label change (% of images); black tick: chance level")
        ax.set_title(with_data_note(f"{model}: pooled and within one source", data_note), fontsize="medium")
    legend = {}
    for ax in axes:
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(name, handle)
    if legend:
        fig.legend(legend.values(), legend.keys(), loc="outside lower center", ncols=min(3, len(legend)),
                   fontsize="small", frameon=False)
    return fig
