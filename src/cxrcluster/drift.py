"""Per-image label drift: how often an image leaves its labelled class.

Each clustering run (one model x algorithm) matches clusters to classes and
marks every image whose matched class differs from its label as ``changed``.
An image that changes in most runs, whatever the features and the algorithm,
looks like an image of another class: a candidate for label noise that a
researcher should re-examine. :func:`label_drift` counts, per image, the share
of successful runs in which it changed and the class it most often moved to;
:func:`plot_drift_gallery` shows the most-drifted images of each class.

Only runs with status ``ok`` in ``clustering_results.csv`` count: a failed or
skipped run says nothing about an image. The label CSVs and statuses are read
through :mod:`cxrcluster.results`.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from cxrcluster.figures import with_data_note
from cxrcluster.images import ImageReadError, read_luminance
from cxrcluster.results import load_label_frames, ok_combinations, parse_bool_column

#: Target of a changed image whose cluster is noise or matched to no class.
NOISE_TARGET = "noise/unmatched"

#: Columns of the frame returned by :func:`label_drift`.
DRIFT_COLUMNS = ["image_name", "label", "n_combinations", "n_changed", "drift_share", "most_common_target"]


def label_drift(
    label_frames: Mapping[str, pd.DataFrame] | str | os.PathLike,
    results: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Share of successful model x algorithm runs in which each image changed label.

    Parameters
    ----------
    label_frames : mapping of str to pandas.DataFrame, or path-like
        Per-run label frames keyed by :func:`cxrcluster.results.combination_key` (columns
        ``image_name, label, matched_label, changed``), or the
        ``clustering_labels/`` folder, which then requires ``results``.
    results : pandas.DataFrame, optional
        ``clustering_results.csv``. When given, only runs with status ``ok``
        count (frames of other runs are ignored). Without it, every frame
        given counts.

    Returns
    -------
    pandas.DataFrame
        One row per image, columns ``image_name, label, n_combinations``
        (runs that count and contain the image), ``n_changed`` (of those, runs
        where ``changed`` is True), ``drift_share`` (``n_changed /
        n_combinations``, 0 to 1) and ``most_common_target``: the
        ``matched_label`` the image most often moved to, with noise and
        unmatched clusters (empty ``matched_label``) counted together as
        ``"noise/unmatched"``; ties go to the alphabetically first target; the
        empty string if the image never changed. Sorted by ``drift_share``
        descending, then ``image_name``.
    """
    if isinstance(label_frames, (str, os.PathLike)):
        if results is None:
            raise ValueError("label_drift needs the results frame to know which runs in a folder are ok")
        frames = load_label_frames(results, label_frames)
    else:
        frames = dict(label_frames)
        if results is not None:
            ok = set(ok_combinations(results))
            frames = {key: frame for key, frame in frames.items() if key in ok}

    parts = []
    for key, frame in frames.items():
        missing = [c for c in ("image_name", "label", "matched_label", "changed") if c not in frame.columns]
        if missing:
            raise KeyError(f"label frame {key!r} lacks column(s) {missing}")
        if frame["image_name"].duplicated().any():
            raise ValueError(f"label frame {key!r} lists an image more than once")
        part = frame[["image_name", "label", "matched_label", "changed"]].copy()
        part["changed"] = parse_bool_column(part["changed"])
        part["combination"] = key
        parts.append(part)
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(
            DRIFT_COLUMNS, [str, str, "int64", "int64", "float64", str], strict=True)})

    long = pd.concat(parts, ignore_index=True)
    long["label"] = long["label"].astype(str)
    grouped = long.groupby("image_name", sort=True)
    inconsistent = grouped["label"].nunique()
    if (inconsistent > 1).any():
        raise ValueError(f"images labelled differently across runs: {inconsistent[inconsistent > 1].index[:5].tolist()}")
    drift = pd.DataFrame({
        "label": grouped["label"].first(),
        "n_combinations": grouped.size(),
        "n_changed": grouped["changed"].sum().astype("int64"),
    })
    drift["drift_share"] = drift["n_changed"] / drift["n_combinations"]

    moved = long[long["changed"]].copy()
    target = moved["matched_label"].where(moved["matched_label"].notna(), "").astype(str).str.strip()
    moved["target"] = target.where(target != "", NOISE_TARGET)
    counts = moved.groupby(["image_name", "target"]).size().rename("n").reset_index()
    counts = counts.sort_values(["image_name", "n", "target"], ascending=[True, False, True])
    top = counts.drop_duplicates("image_name").set_index("image_name")["target"]
    drift["most_common_target"] = top.reindex(drift.index).fillna("").astype(str)

    drift = drift.reset_index().rename(columns={"index": "image_name"})
    drift = drift.sort_values(["drift_share", "image_name"], ascending=[False, True], kind="stable")
    return drift[DRIFT_COLUMNS].reset_index(drop=True)


def _thumbnail(path: Path, size: int) -> np.ndarray:
    """The image as :func:`cxrcluster.images.read_luminance` reads it, shrunk to at most ``size`` pixels.

    Read by the project's one reader, so a DICOM or a 16-bit PNG shows the
    pixels the features were computed from (0-255, bone bright), not a
    decoding error or a clipped white square. The aspect ratio is kept and a
    small image is not enlarged; the resampling is bilinear, antialiased when
    shrinking, as in :func:`cxrcluster.images.to_model_input`.
    """
    luminance = read_luminance(path)
    height, width = luminance.shape
    scale = min(1.0, size / max(height, width))
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    if target == (width, height):
        return luminance
    resized = Image.fromarray(luminance).resize(target, Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 255.0)


def plot_drift_gallery(
    drift: pd.DataFrame,
    data_dir: str | os.PathLike,
    labels_df: pd.DataFrame,
    per_class: int = 6,
    data_note: str = "",
    thumb_size: int = 192,
) -> Figure:
    """Show thumbnails of the most-drifted images of each class.

    One row per class (every class of ``labels_df``, so a class without any
    drifted image shows as such), up to ``per_class`` images with
    ``drift_share > 0``, most drifted first. Each thumbnail's title gives the
    image name, the share of runs in which it changed and the class it most
    often moved to.

    Parameters
    ----------
    drift : pandas.DataFrame
        Output of :func:`label_drift`.
    data_dir : path-like
        The data folder the label table's paths are relative to.
    labels_df : pandas.DataFrame
        ``original_labels.csv`` (``image_name, label, path``).
    per_class : int, default 6
        Thumbnails per class.
    data_note : str, default ""
        Appended to the title.
    thumb_size : int, default 192
        Longest side of a thumbnail, in pixels.

    Returns
    -------
    matplotlib.figure.Figure
        A grid of ``n_classes x per_class`` axes; unused cells are hidden.
    """
    classes = sorted(labels_df["label"].astype(str).unique())
    n_runs = int(drift["n_combinations"].max()) if len(drift) else 0
    cells = {}
    for label in classes:
        chosen = drift[(drift["label"].astype(str) == label) & (drift["drift_share"] > 0)]
        chosen = chosen.sort_values(["drift_share", "image_name"], ascending=[False, True]).head(per_class)
        cells[label] = [(item["image_name"],
                         f"{item['image_name']}\nchanged in {item['drift_share']:.0%} "
                         f"({item['n_changed']}/{item['n_combinations']})\n\u2192 {item['most_common_target']}")
                        for _, item in chosen.iterrows()]
    return thumbnail_gallery(
        cells, data_dir, labels_df, per_class=per_class, empty_text="no image\nchanged label",
        title=with_data_note(
            f"Most-drifted images per labelled class: share of the {n_runs} successful model \u00d7 algorithm "
            "runs in which each changed label, and the class it most often moved to", data_note),
        thumb_size=thumb_size)


def thumbnail_gallery(
    cells: dict[str, list[tuple[str, str]]],
    data_dir: str | os.PathLike,
    labels_df: pd.DataFrame,
    *,
    per_class: int,
    empty_text: str,
    title: str,
    thumb_size: int = 192,
    cell_width: float = 2.2,
    cell_height: float = 2.6,
) -> Figure:
    """A grid of X-ray thumbnails, one row per class, each with its own caption.

    Parameters
    ----------
    cells : dict of str to list of (image name, caption)
        Per class (row label, in order), the images to show, at most ``per_class``.
    data_dir : path-like
        The data folder the label table's paths are relative to.
    labels_df : pandas.DataFrame
        ``original_labels.csv`` (``image_name, path``).
    per_class : int
        Columns of the grid.
    empty_text : str
        Shown in a row without images.
    title : str
        The figure's title.
    thumb_size : int, default 192
        Longest side of a thumbnail, in pixels.
    cell_width, cell_height : float, default 2.2 and 2.6
        Size of a cell in inches (larger for longer captions).

    Returns
    -------
    matplotlib.figure.Figure
        Unused cells are hidden; an unreadable image shows why instead.
    """
    data_dir = Path(data_dir)
    paths = labels_df.set_index("image_name")["path"]
    fig = Figure(figsize=(cell_width * per_class, cell_height * max(1, len(cells)) + 0.6), layout="constrained")
    axes = np.atleast_2d(fig.subplots(max(1, len(cells)), per_class, squeeze=False))
    for row, (label, chosen) in enumerate(cells.items()):
        for col, ax in enumerate(axes[row]):
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(label, fontsize="large")
            if col >= len(chosen):
                if col == 0:
                    ax.text(0.5, 0.5, empty_text, ha="center", va="center", transform=ax.transAxes, color="0.4")
                    for spine in ax.spines.values():
                        spine.set_visible(False)
                else:
                    ax.set_axis_off()
                continue
            name, caption = chosen[col]
            try:
                ax.imshow(_thumbnail(data_dir / str(paths[name]), thumb_size), cmap="gray", vmin=0, vmax=255)
            except Exception as exc:  # noqa: BLE001 - show the reason instead of losing the gallery
                # The reader's reason ("truncated or corrupt", "file not found") says more than its type.
                reason = exc.reason.split(":")[0] if isinstance(exc, ImageReadError) else type(exc).__name__
                ax.text(0.5, 0.5, "unreadable:\n" + textwrap.fill(reason, 24), ha="center", va="center",
                        transform=ax.transAxes, color="firebrick", fontsize="small")
            ax.set_title(caption, fontsize="small")
    fig.suptitle(title)
    return fig
