"""Figures that set the clustering beside other measures of the same features.

:func:`supervised_vs_clustering_figure` puts each model's linear probe beside
its two best clusterings and their chance levels; :func:`variants_figure`
puts full and lung-masked X-rays side by side. Built like those of
:mod:`cxrcluster.figures`: a :class:`matplotlib.figure.Figure` each, titled
with the data note.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cxrcluster.figures import with_data_note
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
