"""Showing saliency maps: which images to explain, and the figure of images beside their maps."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from cxrcluster.figures import with_data_note


def choose_examples(labels, per_class: int = 2, seed: int = 0) -> list[int]:
    """Row indices of ``per_class`` randomly chosen images of each class, classes in sorted order.

    Parameters
    ----------
    labels : array-like of str
        Class of each image.
    per_class : int, default 2
        Images per class (fewer when a class has fewer).
    seed : int, default 0
        Seeds the choice.

    Returns
    -------
    list of int
    """
    labels = np.asarray(labels).astype(str)
    rng = np.random.default_rng(seed)
    rows = []
    for c in sorted(np.unique(labels)):
        members = np.flatnonzero(labels == c)
        rows.extend(sorted(rng.choice(members, size=min(per_class, len(members)), replace=False).tolist()))
    return [int(r) for r in rows]


def saliency_grid(images: Sequence[np.ndarray], maps: Sequence[np.ndarray] | Mapping[str, Sequence[np.ndarray]],
                  titles: Sequence[str] | None = None, data_note: str = "",
                  title: str = "Saliency maps", alpha: float = 0.5, cmap: str = "jet") -> Figure:
    """Draw each image beside its maps, overlaid in colour.

    Parameters
    ----------
    images : sequence of numpy.ndarray
        ``(H, W)`` or ``(H, W, 3)`` images in 0-255, one row each.
    maps : sequence of numpy.ndarray, or mapping of str to sequence
        One ``(H, W)`` map in [0, 1] per image, or several kinds of map by
        name (one column each, e.g. from
        :func:`cxrcluster.saliency.maps.saliency_maps`).
    titles : sequence of str, optional
        One line per row, e.g. ``"COVID/x.png: label COVID, probe NORMAL (0.71)"``.
    data_note : str, default ""
        Which data, appended to the title.
    title : str, default "Saliency maps"
        What is shown (model, decision explained).
    alpha : float, default 0.5
        Opacity of the maps where they are 1; it falls with the map's value,
        so that pixels of no relevance show the image unchanged.
    cmap : str, default "jet"
        Colour map of the maps.

    Returns
    -------
    matplotlib.figure.Figure
        One subfigure per image (its title above it), each ``1 + number of
        kinds`` axes and a colour bar.
    """
    columns = dict(maps) if isinstance(maps, Mapping) else {"map": list(maps)}
    for name, column in columns.items():
        if len(column) != len(images):
            raise ValueError(f"{len(column)} {name} maps for {len(images)} images")
    n_rows, n_cols = len(images), 1 + len(columns)
    fig = Figure(figsize=(2.4 * n_cols + 1.0, 2.7 * n_rows + 1.0), layout="constrained")
    # one subfigure per image: its line of text sits above its own row, never over a column heading
    rows = np.atleast_1d(fig.subfigures(n_rows, 1))
    colour_map = colormaps[cmap]
    for i, (row, image) in enumerate(zip(rows, images, strict=True)):
        axes = np.atleast_1d(row.subplots(1, n_cols))
        grey = np.asarray(image, dtype=np.float32)
        grey = grey.mean(axis=-1) if grey.ndim == 3 else grey
        axes[0].imshow(grey, cmap="gray", vmin=0, vmax=255)
        if i == 0:
            axes[0].set_title("image", fontsize="small")
        shown = None
        for j, (name, column) in enumerate(columns.items(), start=1):
            axes[j].imshow(grey, cmap="gray", vmin=0, vmax=255)
            heat = np.clip(np.asarray(column[i], dtype=np.float32), 0.0, 1.0)
            # opacity follows relevance: irrelevant pixels stay visible as they are
            shown = axes[j].imshow(heat, cmap=colour_map, vmin=0, vmax=1, alpha=alpha * heat)
            if i == 0:
                axes[j].set_title(textwrap.fill(name, 24), fontsize="small")
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
        if shown is not None:
            row.colorbar(shown, ax=axes.tolist(), shrink=0.8, aspect=15)
        if titles is not None:
            row.suptitle(titles[i], fontsize="small", x=0.01, ha="left")
    fig.suptitle(with_data_note(f"{title}\n(colour: relevance, 1 = the map's maximum, 0 = none)", data_note))
    return fig
