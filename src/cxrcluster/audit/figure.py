"""The audit figure: per-class image sizes, file sizes and format / bit-depth composition."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from cxrcluster.audit.metadata import METADATA_COLUMNS, _require_columns, _with_dicom_columns
from cxrcluster.figures import class_colours, with_data_note


def plot_audit(meta: pd.DataFrame, data_note: str = "") -> Figure:
    """Draw per-class image sizes, file sizes and format / bit-depth composition.

    Parameters
    ----------
    meta : pandas.DataFrame
        Output of :func:`image_metadata`; unreadable images are left out.
    data_note : str, default ""
        Appended to every title, e.g. ``"synthetic demo data - not evidence"``.

    Returns
    -------
    matplotlib.figure.Figure
        Three panels: width x height per image coloured by class; file size
        per class (box plot, log scale); share of each format / bit depth per
        class (stacked bars).
    """
    meta = _with_dicom_columns(meta)
    _require_columns(meta, METADATA_COLUMNS, "meta")
    ok = meta[meta["error"].fillna("") == ""]
    classes = sorted(ok["label"].astype(str).unique())
    fig = Figure(figsize=(15, 4.8), layout="constrained")
    ax_size, ax_file, ax_comp = fig.subplots(1, 3)
    colours = class_colours(classes)

    # Sources often share one exact size, so points of different classes coincide: draw one
    # hollow marker per class and size (area growing with its image count), a different shape
    # per class, so coinciding classes stay visible.
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    for k, label in enumerate(classes):
        group = ok[ok["label"].astype(str) == label]
        sizes = group.groupby(["width", "height"]).size().reset_index(name="n")
        ax_size.scatter(
            sizes["width"].astype(float), sizes["height"].astype(float), s=20 + 180 * np.sqrt(sizes["n"] / len(group)),
            marker=markers[k % len(markers)], facecolors="none", edgecolors=colours[label], linewidths=1.4,
            label=f"{label} (n={len(group)}, {len(sizes)} distinct size{'s' if len(sizes) != 1 else ''})",
        )
    ax_size.set_xlabel("width (pixels)")
    ax_size.set_ylabel("height (pixels)")
    ax_size.set_title(with_data_note("Image size per class", data_note))
    if classes:
        ax_size.legend(fontsize="small")

    sizes = [ok.loc[ok["label"].astype(str) == c, "file_size"].astype(float).to_numpy() / 1024 for c in classes]
    if classes:
        ax_file.boxplot(sizes, tick_labels=classes)
        ax_file.set_yscale("log")
    ax_file.set_xlabel("class")
    ax_file.set_ylabel("file size (KiB, log scale)")
    ax_file.set_title(with_data_note("File size per class", data_note))

    kinds = ok["format"].astype(str) + ", " + ok["bit_depth"].astype(str) + "-bit"
    shares = pd.crosstab(ok["label"].astype(str), kinds, normalize="index") * 100
    bottom = np.zeros(len(shares))
    # A palette distinct from the class colours: these colours are formats, not classes.
    palette = colormaps["Set2"]
    for k, column in enumerate(shares.columns):
        values = shares[column].to_numpy()
        ax_comp.bar(shares.index, values, bottom=bottom, label=column, color=palette(k % palette.N))
        bottom += values
    ax_comp.set_xlabel("class")
    ax_comp.set_ylabel("share of the class's images (%)")
    ax_comp.set_ylim(0, 100)
    ax_comp.set_title(with_data_note("Format and bits per pixel per class", data_note))
    if len(shares.columns):
        ax_comp.legend(fontsize="small", title="format, bits per pixel", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig
