"""Figures of the label issues: the planted-noise check's precision-recall curves and the candidates' gallery."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cxrcluster.drift import thumbnail_gallery
from cxrcluster.figures import with_data_note
from cxrcluster.label_issues.check import on_all_images

SIGNAL_NAMES = {"drift": "drift alone", "cleanlab": "cleanlab alone", "combined": "combined rank",
                "random": "random order"}


def noise_check_figure(check: pd.DataFrame, curves: Mapping, data_note: str = "") -> Figure:
    """Precision against recall of the planted flips, one panel per planted share, one curve per signal.

    Parameters
    ----------
    check : pandas.DataFrame
        The table of :func:`noise_check` (each curve's legend gives its ROC AUC and average precision,
        on every image).
    curves : mapping
        The curves of :func:`noise_check`.
    data_note : str, default ""
        Appended to the title.

    Returns
    -------
    matplotlib.figure.Figure
        A dashed line marks the share of flipped images: what a random order scores.
    """
    fractions = [f for f in curves if f != "prevalence"]
    check = on_all_images(check)
    fig = Figure(figsize=(5.2 * max(1, len(fractions)), 4.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, max(1, len(fractions))))
    colours = {"drift": "tab:blue", "cleanlab": "tab:orange", "combined": "black", "random": "0.6"}
    for ax, fraction in zip(axes, fractions, strict=False):
        rows = check[check["fraction"] == fraction].set_index("signal")
        for signal, (precision, recall) in curves[fraction].items():
            r = rows.loc[signal]
            ax.step(recall, precision, where="post", color=colours.get(signal), linewidth=2 if signal == "combined"
                    else 1.3, label=f"{SIGNAL_NAMES.get(signal, signal)}: AUC {r['roc_auc']:.2f}, "
                                    f"AP {r['average_precision']:.2f}")
        ax.axhline(curves["prevalence"][fraction], color="0.6", linestyle="--", linewidth=1)
        n = int(rows["n_flipped"].iloc[0])
        ax.set_title(f"{fraction:.0%} of labels flipped ({n} images)", fontsize="medium")
        ax.set_xlabel("recall: share of the flipped images found")
        ax.set_ylabel("precision: share of the flagged images that were flipped")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize="small", loc="lower left")
    fig.suptitle(with_data_note("Finding planted label errors: each signal's ranking of the flipped images "
                                "(dashed: chance, the share flipped)", data_note))
    return fig


def issues_gallery(table: pd.DataFrame, data_dir, labels_df: pd.DataFrame, per_class: int = 6,
                   data_note: str = "", rank_by: str = "combined_score") -> Figure:
    """The top candidates of each labelled class, with their evidence under each thumbnail.

    Parameters
    ----------
    table : pandas.DataFrame
        ``label_issues.csv`` (:func:`label_issues_table`).
    data_dir : path-like
        The data folder the label table's paths are relative to.
    labels_df : pandas.DataFrame
        ``original_labels.csv``.
    per_class : int, default 6
    data_note : str, default ""
    rank_by : str, default "combined_score"
        ``combined_score``, ``drift_share`` or ``cleanlab_quality`` (ascending for the last):
        the ranking the report headlines (:func:`headline_signal`).

    Returns
    -------
    matplotlib.figure.Figure
    """
    ascending = rank_by == "cleanlab_quality"
    cells = {}
    for label in sorted(labels_df["label"].astype(str).unique()):
        mine = table[table["label"].astype(str) == label]
        mine = mine.sort_values([rank_by, "image_name"], ascending=[ascending, True], na_position="last")
        cells[label] = [(r["image_name"], _evidence_caption(r)) for _, r in mine.head(per_class).iterrows()]
    return thumbnail_gallery(
        cells, data_dir, labels_df, per_class=per_class, empty_text="no image", cell_width=2.8, cell_height=3.1,
        title=with_data_note(f"Label-issue candidates per labelled class, by {rank_by.replace('_', ' ')}: "
                             "drift over the runs, cleanlab's label quality and suggestion, duplicates", data_note))


def _evidence_caption(row: pd.Series) -> str:
    lines = [f"#{int(row['rank'])} {row['image_name']}"]
    if pd.notna(row["drift_share"]):
        target = f" \u2192 {row['drift_target']}" if row["drift_target"] else ""
        lines.append(f"drift {row['drift_share']:.0%} of {int(row['n_runs'])}{target}")
    if pd.notna(row["cleanlab_quality"]):
        flag = "issue" if bool(row["cleanlab_issue"]) else "no issue"
        lines.append(f"cleanlab {row['cleanlab_quality']:.2f} ({flag}) \u2192 {row['cleanlab_suggested']}")
    if isinstance(row["duplicate_conflict"], str) and row["duplicate_conflict"]:
        lines.append("duplicate with another label")
    if pd.notna(row.get("source_explained", pd.NA)) and bool(row["source_explained"]):
        lines.append("suggestion = its source's usual class")
    return "\n".join(lines)
