"""Lung-field masking: a copy of the dataset in which everything outside the lungs is black.

The full-versus-masked comparison asks how much of what a network sees in a
chest X-ray lies outside the lungs: text markers, tubes, the body's outline,
the scanner's borders. The masked variant of the pipeline runs on a copy of
the dataset made by :func:`mask_dataset`.

Where masks come from
---------------------
- A folder of user-supplied masks (``masks_dir``): one image per X-ray, at the
  same relative path (any image extension), whose nonzero pixels are lung.
  Resized (nearest neighbour) to the X-ray when their sizes differ. Use this
  for expert or learned masks.
- Otherwise :func:`lung_mask`, classical image processing on a 256 x 256
  working copy: percentile normalisation; a grey-level opening that removes
  thin bright structures (ribs, wires); Gaussian smoothing; a marker-controlled
  watershed (scipy's ``watershed_ift``) on a relief of gradient magnitude plus
  half the intensity, with one seed per lung (the darker half of a central
  ellipse in each half of the image) against a background seed made of the
  image border, the midline and the brightest fifth of the pixels; per lung,
  the largest component, closed and hole-filled (so that opacities enclosed by
  the lung are kept). Each lung is checked (area, solidity, height-to-width ratio,
  share on the image border); a lung that fails is replaced by a fixed
  elliptical template of a typical lung field, and the image's status says so.

Classical masks are approximate: they follow the dark, aerated lung, so dense
consolidations on the lung's outer edge or a white-out lung are often cut or
fail the checks, which can happen more often in one class than another. Read
the QA figure (:func:`mask_qa_figure`) and the status counts per class before
trusting a comparison.

What the masked copy holds
--------------------------
Every image listed in the labels, at the same relative path and file name (so
image names, and the labels file, stay the same across variants), in the same
format as the original: the 8-bit luminance the pipeline reads
(:func:`cxrcluster.images.read_luminance`: EXIF orientation applied, 16-bit
rescaled, colour to grey), with every pixel outside the mask set to 0. PNG and
other lossless formats stay lossless; JPEG is re-encoded at quality 95. An
unreadable image is copied unchanged, so that feature extraction reports it as
in the full variant. Files at the top of the data folder that are not images
(``metadata.csv``, the demo's ``SYNTHETIC.md``) are copied too, and
``masking.csv`` (the table :func:`mask_dataset` returns) is written there. The
whole folder is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import textwrap
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from PIL import Image
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError
from tqdm.auto import tqdm

from cxrcluster import data, images
from cxrcluster.figures import with_data_note

#: Side of the square working copy the classical mask is computed on.
WORK_SIZE = 256

#: Pixels at least this bright (percentile of the working copy) seed the background.
BRIGHT_PERCENTILE = 80

#: Weight of the (0-1) intensity added to the (0-1) gradient magnitude in the watershed's relief.
INTENSITY_WEIGHT = 0.5

#: Checks a lung of the classical mask must pass (fractions of the working image).
CHECKS = {
    "min_area": 0.02,      # smaller: the seed found a pocket, not a lung
    "max_area": 0.25,      # larger: the watershed leaked into the background
    "min_solidity": 0.70,  # area / convex hull area; leaks make ragged shapes
    "min_aspect": 1.0,     # bounding-box height / width; lungs are taller than wide
    "max_border": 0.12,    # share of the lung's outline in the outer 6 % frame: it leaked along the border
}

#: Template lung fields used when a lung fails its checks: ellipses (centre y, centre x,
#: radius y, radius x) as fractions of the image, right lung (image left) first.
TEMPLATE = ((0.47, 0.30, 0.30, 0.15), (0.47, 0.70, 0.30, 0.15))

#: Columns of the table :func:`mask_dataset` returns.
REPORT_COLUMNS = ["image_name", "label", "path", "mask_source", "status", "lung_fraction"]

#: Name of the table written at the top of the masked copy.
REPORT_FILE = "masking.csv"


def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius:radius + 1, -radius:radius + 1]
    return x * x + y * y <= radius * radius


def _ellipse(shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    h, w = shape
    yy, xx = np.ogrid[0:h, 0:w]
    return (((yy + 0.5) / h - cy) / ry) ** 2 + (((xx + 0.5) / w - cx) / rx) ** 2 <= 1.0


def _resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if mask.shape == shape:
        return mask.astype(bool)
    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.asarray(resized) > 127


def template_mask(shape: tuple[int, int]) -> np.ndarray:
    """The fallback mask: two ellipses at typical lung-field positions (:data:`TEMPLATE`)."""
    return _ellipse(shape, *TEMPLATE[0]) | _ellipse(shape, *TEMPLATE[1])


def _largest(mask: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n <= 1:
        return mask
    sizes = ndi.sum(mask, lab, index=np.arange(1, n + 1))
    return lab == 1 + int(np.argmax(sizes))


def _lung_problem(lung: np.ndarray) -> str | None:
    """Why a candidate lung fails :data:`CHECKS`, or None."""
    s = lung.shape[0]
    area = float(lung.mean())
    if area < CHECKS["min_area"]:
        return f"too small ({area:.1%} of the image)"
    if area > CHECKS["max_area"]:
        return f"too large ({area:.1%} of the image)"
    ys, xs = np.nonzero(lung)
    try:
        hull = ConvexHull(np.column_stack([ys, xs]).astype(float)).volume  # a 2-D hull's volume is its area
    except QhullError:
        return "degenerate shape"
    solidity = len(ys) / max(hull, 1.0)
    if solidity < CHECKS["min_solidity"]:
        return f"ragged (solidity {solidity:.2f})"
    aspect = (ys.max() - ys.min() + 1) / (xs.max() - xs.min() + 1)
    if aspect < CHECKS["min_aspect"]:
        return f"wider than tall (height/width {aspect:.2f})"
    f = max(1, round(0.06 * s))
    inner = np.zeros_like(lung)
    inner[f:-f, f:-f] = True
    outline = lung & ~ndi.binary_erosion(lung)
    border = float((outline & ~inner).sum() / outline.sum())
    if border > CHECKS["max_border"]:
        return f"runs along the image border ({border:.0%} of its outline)"
    return None


def lung_mask(luminance: np.ndarray, fallback: str = "template") -> tuple[np.ndarray, str]:
    """Segment the two lung fields of a frontal chest X-ray by classical image processing.

    See the module docstring for the method. Each lung is checked against
    :data:`CHECKS`; a lung that fails is handled as ``fallback`` says.

    Parameters
    ----------
    luminance : numpy.ndarray
        2-D image (any range, e.g. from
        :func:`cxrcluster.images.read_luminance`); a 3-D array is averaged
        over its last axis.
    fallback : {"template", "none", "full"}, default "template"
        For a lung that fails its checks: the template ellipse of
        :func:`template_mask` on that side; ``"none"``, the segmentation as it
        is; ``"full"``, no masking at all (the whole image).

    Returns
    -------
    mask : numpy.ndarray of bool
        Same height and width as ``luminance``; True inside the lungs.
    status : str
        ``"ok"``, or ``"fallback (<what was done>): <side> lung <reason>"``,
        e.g. ``"fallback (template used): right lung too small (1.1% of the
        image)"``; sides as seen in the image (the patient's right lung is on
        the image's left).
    """
    if fallback not in ("template", "none", "full"):
        raise ValueError(f"fallback must be 'template', 'none' or 'full', not {fallback!r}")
    lum = np.asarray(luminance, dtype=np.float32)
    if lum.ndim == 3:
        lum = lum.mean(axis=-1)
    shape = lum.shape
    s = WORK_SIZE
    work = np.asarray(Image.fromarray(lum, mode="F").resize((s, s), Image.Resampling.BILINEAR))
    lo, hi = np.percentile(work, [1, 99])
    if hi - lo < 1e-6:
        problems = ["not found (uniform image)"] * 2
        lungs = [np.zeros((s, s), bool), np.zeros((s, s), bool)]
    else:
        norm = np.clip((work - lo) / (hi - lo), 0.0, 1.0)
        norm = ndi.grey_opening(norm, footprint=_disk(5))  # ribs and wires are thinner than the disk
        smooth = ndi.gaussian_filter(norm, 3.0)
        gradient = np.hypot(ndi.sobel(smooth, 0), ndi.sobel(smooth, 1))

        markers = np.zeros((s, s), np.int16)
        b = max(2, round(0.04 * s))
        markers[:b], markers[-b:], markers[:, :b], markers[:, -b:] = 1, 1, 1, 1
        markers[round(0.15 * s):, round(0.47 * s):round(0.53 * s)] = 1  # mediastinum and spine
        # bright outside the usual lung fields: bone, mediastinum, soft tissue (inside them a bright
        # patch may be an opacity of the lung, which must not seed the background)
        bright = smooth >= np.percentile(smooth, BRIGHT_PERCENTILE)
        markers[bright & ~template_mask((s, s))] = 1
        for label, cx in ((2, 0.30), (3, 0.70)):
            core = _ellipse((s, s), 0.45, cx, 0.16, 0.07)
            # the whole darker half of the core, not one pocket: a seed spanning several
            # intercostal spaces is not walled in by the ribs' edges
            markers[core & (smooth <= np.median(smooth[core]))] = label
        # edges, plus some brightness: where edges are soft (or absent, as in the demo's drawn
        # lungs) the boundary settles on the darker side instead of wandering across plateaus
        relief = gradient / max(float(gradient.max()), 1e-12) + INTENSITY_WEIGHT * smooth
        elevation = (relief / relief.max() * 65535).astype(np.uint16)
        basins = ndi.watershed_ift(elevation, markers)
        lungs, problems = [], []
        for label in (2, 3):
            lung = _largest(ndi.binary_opening(basins == label, _disk(3)))
            lung = ndi.binary_fill_holes(ndi.binary_closing(lung, _disk(8)))
            lungs.append(lung)
            problems.append(_lung_problem(lung))

    mask = np.zeros(shape, bool)
    notes = []
    for side, lung, problem, ellipse in zip(("left", "right"), lungs, problems, TEMPLATE, strict=True):
        if problem is None:
            mask |= _resize_mask(lung, shape)
            continue
        notes.append(f"{side} lung {problem}")
        if fallback == "template":
            mask |= _ellipse(shape, *ellipse)
        elif fallback == "full":
            mask[:] = True
        else:
            mask |= _resize_mask(lung, shape)
    if not notes:
        return mask, "ok"
    how = {"template": "template used", "full": "image left unmasked", "none": "kept as segmented"}[fallback]
    return mask, f"fallback ({how}): " + "; ".join(notes)


# ---------------------------------------------------------------- the masked dataset


def _find_supplied(masks_dir: Path, rel: str) -> Path | None:
    exact = masks_dir / rel
    if exact.is_file():
        return exact
    stem = masks_dir / PurePosixPath(rel).with_suffix("")
    for suffix in data.IMAGE_SUFFIXES:
        for candidate in (stem.with_suffix(suffix), stem.with_suffix(suffix.upper())):
            if candidate.is_file():
                return candidate
    return None


def read_mask(path: str | os.PathLike, shape: tuple[int, int]) -> np.ndarray:
    """Read a supplied mask (nonzero = lung) at ``shape``, resizing by nearest neighbour if needed."""
    mask = images.read_luminance(path) > 0
    if mask.shape != shape:
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(
            (shape[1], shape[0]), Image.Resampling.NEAREST)) > 0
    return mask


def _save_like(pixels: np.ndarray, source: Path, dest: Path) -> None:
    image = Image.fromarray(pixels, mode="L")
    suffix = source.suffix.lower()
    if suffix in (".jpg", ".jpeg"):
        image.save(dest, format="JPEG", quality=95)
    elif suffix in (".tif", ".tiff"):
        image.save(dest, format="TIFF", compression="tiff_lzw")
    else:
        image.save(dest, format={".png": "PNG", ".bmp": "BMP"}.get(suffix, "PNG"))


def _mask_one(source: Path, dest: Path, supplied: Path | None, fallback: str,
              mask_dest: Path | None) -> tuple[str, str, float]:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        lum = images.read_luminance(source)
    except images.ImageReadError as exc:
        shutil.copyfile(source, dest)
        return ("none", f"unreadable (copied unchanged): {exc.reason}", float("nan"))
    if supplied is not None:
        mask, status, kind = read_mask(supplied, lum.shape), "ok", "supplied"
        if not mask.any():
            status = "empty supplied mask: the image is all black"
    else:
        (mask, status), kind = lung_mask(lum, fallback=fallback), "classical"
    pixels = np.where(mask, np.clip(np.rint(lum), 0, 255), 0).astype(np.uint8)
    _save_like(pixels, source, dest)
    if mask_dest is not None:
        mask_dest.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(mask_dest, format="PNG")
    return kind, status, float(mask.mean())


def _fresh_dir(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def mask_dataset(
    labels_df: pd.DataFrame,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    masks_dir: str | os.PathLike | None = None,
    masks_out: str | os.PathLike | None = None,
    fallback: str = "template",
    workers: int = 2,
    progress: bool = True,
) -> pd.DataFrame:
    """Write a lung-masked copy of every image in ``labels_df``.

    See the module docstring for what the copy holds. ``out_dir`` (and
    ``masks_out``) are written under temporary names beside their destination
    and renamed when complete, replacing any previous copy; a failure leaves
    the previous copy, or nothing.

    Parameters
    ----------
    labels_df : pandas.DataFrame
        ``original_labels.csv`` (``image_name``, ``label``, ``path``).
    data_dir : path-like
        The data folder the paths are relative to.
    out_dir : path-like
        The masked copy; it must not be ``data_dir`` or inside it.
    masks_dir : path-like, optional
        User-supplied masks, one per image at the same relative path (any
        image extension; nonzero = lung). Every image must have one: missing
        masks are refused, by name, before any work.
    masks_out : path-like, optional
        Also write the masks used, as 0/255 PNGs at the same relative paths
        with a ``.png`` suffix: a folder ``masks_dir`` accepts, to correct by
        hand and feed back.
    fallback : {"template", "none", "full"}, default "template"
        Passed to :func:`lung_mask`.
    workers : int, default 2
        Images processed in parallel.
    progress : bool, default True
        Show a progress bar.

    Returns
    -------
    pandas.DataFrame
        One row per image, in ``labels_df`` order, columns
        :data:`REPORT_COLUMNS`: ``mask_source`` (``classical``, ``supplied``,
        or ``none`` for an unreadable file), ``status`` (``ok``, or why not),
        ``lung_fraction`` (share of the image's pixels kept).

    Raises
    ------
    cxrcluster.data.DatasetError
        On paths that are missing or escape ``data_dir``, and on missing
        supplied masks.
    ValueError
        If ``out_dir`` is ``data_dir`` or inside it.
    """
    root = Path(data_dir).resolve()
    out = Path(out_dir).resolve()
    if out == root or out.is_relative_to(root):
        raise ValueError(f"the masked copy {str(out)!r} must be outside the data folder {str(root)!r}")
    sources = data.resolve_image_paths(labels_df, root)
    rels = [src.relative_to(root).as_posix() for src in sources]
    supplied: list[Path | None] = [None] * len(rels)
    if masks_dir is not None:
        mdir = Path(masks_dir)
        if not mdir.is_dir():
            raise data.DatasetError(f"masks folder {str(mdir)!r} does not exist")
        supplied = [_find_supplied(mdir, rel) for rel in rels]
        missing = [rel for rel, m in zip(rels, supplied, strict=True) if m is None]
        if missing:
            raise data.DatasetError(
                f"{len(missing)} of {len(rels)} images have no mask in {str(mdir)!r} (same relative path, "
                f"any image extension): {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")

    tmp = _fresh_dir(out)
    tmp_masks = _fresh_dir(Path(masks_out).resolve()) if masks_out is not None else None
    try:
        def work(i: int) -> tuple[str, str, float]:
            mask_dest = tmp_masks / PurePosixPath(rels[i]).with_suffix(".png") if tmp_masks else None
            return _mask_one(sources[i], tmp / rels[i], supplied[i], fallback, mask_dest)

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            results = list(tqdm(pool.map(work, range(len(rels))), total=len(rels), unit="image",
                                desc="masking", disable=not progress))
        report = pd.DataFrame({
            "image_name": labels_df["image_name"].to_numpy(),
            "label": labels_df["label"].to_numpy(),
            "path": rels,
            "mask_source": [r[0] for r in results],
            "status": [r[1] for r in results],
            "lung_fraction": [r[2] for r in results],
        }, columns=REPORT_COLUMNS)
        for extra in sorted(root.iterdir()):
            if extra.is_file() and not extra.name.startswith(".") and extra.suffix.lower() not in data.IMAGE_SUFFIXES:
                shutil.copy2(extra, tmp / extra.name)
        report.to_csv(tmp / REPORT_FILE, index=False)
        if tmp_masks is not None:
            _replace_dir(tmp_masks, Path(masks_out).resolve())
        _replace_dir(tmp, out)
    finally:
        for leftover in (tmp, tmp_masks):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover)
    return report


def status_counts(report: pd.DataFrame) -> pd.DataFrame:
    """Images per class by kind of status (``ok``, ``fallback``, ``unreadable``, ...).

    Parameters
    ----------
    report : pandas.DataFrame
        From :func:`mask_dataset`.

    Returns
    -------
    pandas.DataFrame
        Classes as rows, status kinds as columns, plus ``total`` and
        ``mean_lung_fraction``.
    """
    kind = report["status"].astype(str).str.split(r"[ :(]", n=1, regex=True).str[0]
    table = pd.crosstab(report["label"], kind)
    table["total"] = table.sum(axis=1)
    table["mean_lung_fraction"] = report.groupby("label")["lung_fraction"].mean()
    return table


# ---------------------------------------------------------------- QA figure


def _pick_rows(report: pd.DataFrame, per_class: int, seed: int) -> list[int]:
    """Per class: up to half the slots for flagged images (failures must be seen), the rest random."""
    rng = np.random.default_rng(seed)
    rows = []
    for label in sorted(report["label"].astype(str).unique()):
        members = np.flatnonzero(report["label"].astype(str).to_numpy() == label)
        flagged = [i for i in members if report["status"].iat[i] != "ok"]
        ok = [i for i in members if report["status"].iat[i] == "ok"]
        n_flagged = min(len(flagged), per_class // 2)
        chosen = list(rng.choice(flagged, n_flagged, replace=False)) if n_flagged else []
        rest = min(len(ok), per_class - n_flagged)
        chosen += list(rng.choice(ok, rest, replace=False)) if rest else []
        rows.extend(sorted(int(i) for i in chosen))
    return rows


def mask_qa_figure(
    report: pd.DataFrame,
    data_dir: str | os.PathLike,
    masks_dir: str | os.PathLike | None = None,
    per_class: int = 4,
    seed: int = 0,
    rows: Sequence[int] | None = None,
    data_note: str = "",
) -> Figure:
    """Draw masks over their images, a few per class, with each image's status.

    Parameters
    ----------
    report : pandas.DataFrame
        From :func:`mask_dataset` (``image_name``, ``label``, ``path``,
        ``status``).
    data_dir : path-like
        The *original* data folder.
    masks_dir : path-like, optional
        The masks used (``masks_out`` or the supplied ``masks_dir`` of
        :func:`mask_dataset`); without it the classical masks are recomputed.
    per_class : int, default 4
        Images per class (one row per class). Up to half are images whose
        mask fell back (if any), so that failures are seen, not only
        successes.
    seed : int, default 0
        Seeds the choice of images.
    rows : sequence of int, optional
        Rows of ``report`` to show instead (one row of the figure per class).
    data_note : str, default ""
        Appended to the title.

    Returns
    -------
    matplotlib.figure.Figure
        Images in grey, the mask's outline and a translucent fill; the title
        gives the share of fallbacks per class.
    """
    chosen = list(rows) if rows is not None else _pick_rows(report, per_class, seed)
    classes = sorted(report["label"].astype(str).iloc[chosen].unique())
    by_class = {c: [i for i in chosen if str(report["label"].iat[i]) == c] for c in classes}
    n_cols = max((len(v) for v in by_class.values()), default=1)
    fig = Figure(figsize=(2.6 * n_cols + 0.5, 2.9 * len(classes) + 1.2), layout="constrained")
    axes = np.atleast_2d(fig.subplots(max(1, len(classes)), n_cols, squeeze=False))
    fill = ListedColormap([(0, 0, 0, 0), (1.0, 0.2, 0.2, 0.25)])
    root = Path(data_dir)
    for r, c in enumerate(classes):
        for col in range(n_cols):
            ax = axes[r, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= len(by_class[c]):
                ax.axis("off")
                continue
            i = by_class[c][col]
            rel = str(report["path"].iat[i])
            status = str(report["status"].iat[i])
            try:
                lum = images.read_luminance(root / rel)
            except images.ImageReadError as exc:
                ax.set_title(f"{report['image_name'].iat[i]}\nunreadable: {exc.reason}", fontsize="x-small")
                continue
            if masks_dir is not None:
                found = _find_supplied(Path(masks_dir), rel)
                mask = read_mask(found, lum.shape) if found else np.zeros(lum.shape, bool)
            else:
                mask, _ = lung_mask(lum)
            ax.imshow(lum, cmap="gray")
            ax.imshow(mask.astype(int), cmap=fill, vmin=0, vmax=1, interpolation="nearest")
            if mask.any() and not mask.all():
                ax.contour(mask.astype(float), levels=[0.5], colors=["red"], linewidths=1.0)
            short = textwrap.shorten(status.replace(" (template used)", ""), 80, placeholder="...")
            ax.set_title("\n".join([str(report["image_name"].iat[i]), *textwrap.wrap(short, 38)]),
                         fontsize="x-small", color="black" if status == "ok" else "darkred")
        axes[r, 0].set_ylabel(c)
    flagged = report["status"].astype(str) != "ok"
    shares = ", ".join(f"{c} {int(flagged[report['label'] == c].sum())}/{int((report['label'] == c).sum())}"
                       for c in sorted(report["label"].astype(str).unique()))
    fig.suptitle(with_data_note(f"Lung masks over their images (red); masks not ok per class: {shares}",
                                data_note))
    return fig
