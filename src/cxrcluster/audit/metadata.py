"""Image metadata from the file headers: what each image file is.

:func:`image_metadata` reads every file's header (format, mode, bit depth,
width, height, file size and, for DICOM, the manufacturer and view position)
and records a reason instead of crashing when a file is unreadable;
:func:`audit_summary` describes each class from it. The frame's columns,
:data:`METADATA_COLUMNS`, are what :mod:`cxrcluster.audit.confound` and
:mod:`cxrcluster.audit.figure` read.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from PIL import Image, ImageMode

from cxrcluster.data import is_dicom
from cxrcluster.images import read_luminance

#: Columns of the frame returned by :func:`image_metadata`.
METADATA_COLUMNS = [
    "image_name",
    "label",
    "path",
    "format",
    "mode",
    "bit_depth",
    "width",
    "height",
    "file_size",
    "manufacturer",
    "view_position",
    "error",
]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Samples per pixel of each PNG colour type (PNG specification, IHDR chunk).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _png_bit_depth(path: Path) -> int | None:
    """Bits per pixel from a PNG's IHDR chunk (PIL reports 1-, 2- and 4-bit grey as mode L)."""
    with open(path, "rb") as fh:
        head = fh.read(26)
    if len(head) < 26 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    channels = _PNG_CHANNELS.get(head[25])
    return None if channels is None else head[24] * channels


def _mode_bit_depth(image: Image.Image) -> int:
    """Bits per pixel implied by a PIL mode (and a JPEG's sample precision)."""
    if image.mode == "1":
        return 1
    bands = len(image.getbands())
    jpeg_bits = getattr(image, "bits", None) if image.format in ("JPEG", "MPO") else None
    if jpeg_bits:
        return int(jpeg_bits) * bands
    typestr = ImageMode.getmode(image.mode).typestr
    return int(typestr[-1]) * 8 * bands


DICOM_COLUMNS = ("manufacturer", "view_position")
"""Metadata columns only DICOM fills; a metadata frame written before they existed gets them empty."""


def _with_dicom_columns(meta: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in DICOM_COLUMNS if c not in meta.columns]
    return meta.assign(**dict.fromkeys(missing, "")) if missing else meta


def _read_dicom_header(path: Path, info: dict, decode: bool) -> dict:
    """DICOM: photometric interpretation as the mode, bits stored as the depth, and the source's tags."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=not decode)
        info["format"] = "DICOM"
        info["mode"] = str(ds.get("PhotometricInterpretation", ""))
        bits, samples = ds.get("BitsStored"), int(ds.get("SamplesPerPixel", 1) or 1)
        info["bit_depth"] = int(bits) * samples if bits is not None else pd.NA
        info["width"], info["height"] = ds.get("Columns", pd.NA), ds.get("Rows", pd.NA)
        info["manufacturer"] = str(ds.get("Manufacturer", "")).strip()
        info["view_position"] = str(ds.get("ViewPosition", "")).strip()
        if decode:
            read_luminance(path)
    except Exception as exc:  # noqa: BLE001 - an audit records every failure
        info["error"] = f"{type(exc).__name__}: {exc}"
    return info


def _read_header(path: Path, decode: bool) -> dict:
    info = {"format": "", "mode": "", "bit_depth": pd.NA, "width": pd.NA, "height": pd.NA, "manufacturer": "",
            "view_position": "", "error": ""}
    try:
        info["file_size"] = path.stat().st_size
    except FileNotFoundError:
        info["file_size"] = pd.NA
        info["error"] = "file not found"
        return info
    except OSError as exc:
        info["file_size"] = pd.NA
        info["error"] = f"cannot stat file: {exc}"
        return info
    if is_dicom(path):
        return _read_dicom_header(path, info, decode)
    # PIL signals a bad file with many exception types (UnidentifiedImageError, OSError,
    # SyntaxError, ValueError, DecompressionBombError, ...): an audit records them all.
    try:
        with Image.open(path) as image:
            info["format"] = image.format or ""
            info["mode"] = image.mode
            info["width"], info["height"] = image.size
            depth = _png_bit_depth(path) if image.format == "PNG" else None
            info["bit_depth"] = depth if depth is not None else _mode_bit_depth(image)
            if decode:
                image.load()
    except Exception as exc:  # noqa: BLE001
        info["error"] = f"{type(exc).__name__}: {exc}"
    return info


def image_metadata(labels_df: pd.DataFrame, data_dir: str | os.PathLike, decode: bool = False) -> pd.DataFrame:
    """Read format, mode, bit depth, size and file size of every image.

    Only headers are read by default (PIL opens images lazily), so the audit of
    thousands of images takes seconds. An unreadable image never raises: its
    ``error`` column says why, and its image fields are left missing.

    Parameters
    ----------
    labels_df : pandas.DataFrame
        The label table, with columns ``image_name``, ``label`` and ``path``
        (relative to ``data_dir``, posix separators).
    data_dir : path-like
        The data folder the paths are relative to.
    decode : bool, default False
        Also decode the pixel data, which catches truncated files whose header
        is intact, at the cost of reading every image in full.

    Returns
    -------
    pandas.DataFrame
        One row per image, in the order of ``labels_df``, with columns
        ``image_name, label, path, format, mode, bit_depth, width, height,
        file_size, manufacturer, view_position, error``. For DICOM, ``format``
        is ``DICOM``, ``mode`` the photometric interpretation, ``bit_depth``
        the bits stored, and ``manufacturer`` and ``view_position`` come from
        the header (empty for other formats): they reveal a source as the file
        metadata does. ``bit_depth`` is bits per *pixel* (bits per sample
        times samples per pixel: 8 for 8-bit greyscale, 24 for 8-bit RGB), so
        a greyscale and a colour source differ in it. ``file_size`` is in
        bytes. ``error`` is the empty string for a readable image.
    """
    _require_columns(labels_df, ["image_name", "label", "path"], "labels_df")
    data_dir = Path(data_dir)
    rows = []
    for image_name, label, rel_path in labels_df[["image_name", "label", "path"]].itertuples(index=False):
        info = _read_header(data_dir / str(rel_path), decode)
        rows.append({"image_name": image_name, "label": label, "path": rel_path, **info})
    meta = pd.DataFrame(rows, columns=METADATA_COLUMNS)
    for column in ("bit_depth", "width", "height", "file_size"):
        meta[column] = meta[column].astype("Int64")
    return meta


def _composition(values: pd.Series) -> str:
    """'PNG: 97, JPEG: 3' - most frequent first, then alphabetical."""
    counts = values.astype(str).value_counts()
    counts = counts.sort_index().sort_values(ascending=False, kind="stable")
    return ", ".join(f"{value}: {count}" for value, count in counts.items())


def audit_summary(meta: pd.DataFrame) -> pd.DataFrame:
    """Describe each class: count, formats, bit depths, modes and size distribution.

    Parameters
    ----------
    meta : pandas.DataFrame
        Output of :func:`image_metadata`.

    Returns
    -------
    pandas.DataFrame
        One row per class (sorted by label) with columns ``label, count,
        n_unreadable, formats, bit_depths, modes, manufacturers,
        view_positions`` (each a ``value: count``
        list, most frequent first) and ``width_*``, ``height_*`` (pixels) and
        ``file_size_*`` (bytes), each with suffixes ``median, min, max``,
        computed over the readable images.
    """
    meta = _with_dicom_columns(meta)
    _require_columns(meta, METADATA_COLUMNS, "meta")
    rows = []
    for label, group in meta.groupby("label", sort=True):
        ok = group[group["error"].fillna("") == ""]
        row = {
            "label": label,
            "count": len(group),
            "n_unreadable": len(group) - len(ok),
            "formats": _composition(ok["format"]),
            "bit_depths": _composition(ok["bit_depth"]),
            "modes": _composition(ok["mode"]),
            "manufacturers": _composition(ok["manufacturer"].replace("", "(none)")),
            "view_positions": _composition(ok["view_position"].replace("", "(none)")),
        }
        for column in ("width", "height", "file_size"):
            values = ok[column].astype("float64")
            row[f"{column}_median"] = values.median()
            row[f"{column}_min"] = values.min()
            row[f"{column}_max"] = values.max()
        rows.append(row)
    return pd.DataFrame(rows)


def _require_columns(df: pd.DataFrame, columns: list[str], name: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise KeyError(f"{name} lacks column(s) {missing}; it has {list(df.columns)}")
