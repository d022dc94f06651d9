"""Where each image came from, when the data says it: ``metadata.csv`` beside the images, or DICOM headers.

Public COVID / Pneumonia / Normal sets take each class from other hospitals,
and a network can learn the hospital instead of the disease, so the *source*
of each image is read wherever the data states it, never guessed: a
``metadata.csv`` beside the class folders (:func:`metadata_sources`, matched
to the images by :func:`match_metadata`) or the DICOM headers
(:func:`dicom_sources`). A labels file's own source column is read with the
file (:mod:`cxrcluster.data.layouts`); :func:`image_sources` gives the source
of every row of ``original_labels.csv``.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from cxrcluster.data.layouts import (
    METADATA_IMAGE_COLUMNS,
    SOURCE_COLUMN_NAMES,
    DatasetError,
    _shown,
    check_sources,
    is_dicom,
    read_text_table,
)


def read_metadata(metadata_csv: str | os.PathLike) -> pd.DataFrame:
    """A ``metadata.csv`` beside the images, every cell as text (an empty cell is ``""``): its one reader.

    Read by :func:`~cxrcluster.data.layouts.read_text_table`: ``,``, ``;`` or tab, a byte-order mark and
    CRLF line ends are all fine; a file that is not UTF-8 is a :class:`DatasetError`.
    """
    return read_text_table(metadata_csv)


def match_metadata(labels: pd.DataFrame, references: pd.Series) -> np.ndarray:
    """Which row of a metadata file describes each image: by relative path, then by file name.

    Parameters
    ----------
    labels : pandas.DataFrame
        ``image_name`` and ``path`` (``image_name`` alone will do).
    references : pandas.Series of str
        The metadata file's image column: a path relative to the data folder
        (``COVID/x.png``, either separator) or a file name. File names are
        used only when they are unique in the file.

    Returns
    -------
    numpy.ndarray of int, shape (len(labels),)
        Position of the describing row in ``references``, -1 for an image no row names.
    """
    refs = references.astype(str).str.replace("\\", "/", regex=False).tolist()
    by_path = {ref: i for i, ref in enumerate(refs)}
    names = [PurePosixPath(ref).name for ref in refs]
    by_name = {name: i for i, name in enumerate(names)} if len(set(names)) == len(names) else {}
    paths = labels["path"] if "path" in labels else labels["image_name"]
    rows = []
    for name, rel in zip(labels["image_name"].astype(str), paths.astype(str), strict=True):
        found = by_path.get(rel, by_name.get(PurePosixPath(rel).name, by_name.get(name, -1)))
        rows.append(found)
    return np.asarray(rows, dtype=np.int64)


def _pick(columns, wanted: str | None, candidates) -> str | None:
    if wanted:
        return wanted if wanted in columns else None
    lower = {c.strip().lower(): c for c in columns}
    return next((lower[c] for c in candidates if c in lower), None)


def metadata_sources(labels: pd.DataFrame, metadata_csv: str | os.PathLike,
                     source_column: str | None = None) -> tuple[pd.Series | None, str | None]:
    """The source of every image from a metadata file's source column, when it has one.

    Parameters
    ----------
    labels : pandas.DataFrame
        ``image_name`` and ``path``.
    metadata_csv : path-like
        The metadata file (:data:`METADATA_FILE`): an image column (one of
        :data:`METADATA_IMAGE_COLUMNS`), matched to the images by
        :func:`match_metadata`, and a source column.
    source_column : str, optional
        Its source column; by default the first of :data:`SOURCE_COLUMN_NAMES` present.

    Returns
    -------
    sources : pandas.Series of str, aligned with ``labels``, or None
        None when the file has no source column (and none was named).
    column : str or None
        The column read.

    Raises
    ------
    DatasetError
        A named column that is not there, no image column, an image the file
        does not name, and what :func:`check_sources` refuses (lines of the
        metadata file).
    """
    metadata_csv = Path(metadata_csv)
    meta = read_metadata(metadata_csv)
    where = f"metadata file {str(metadata_csv)!r}"
    column = _pick(meta.columns, source_column, SOURCE_COLUMN_NAMES)
    if column is None:
        if source_column:
            raise DatasetError(f"{where}: no column {source_column!r}; columns are {list(meta.columns)}")
        return None, None
    image_col = _pick(meta.columns, None, METADATA_IMAGE_COLUMNS)
    if image_col is None:
        raise DatasetError(f"{where}: has a source column {column!r} but no image column (one of "
                           f"{list(METADATA_IMAGE_COLUMNS)}); columns are {list(meta.columns)}")
    rows = match_metadata(labels, meta[image_col])
    missing = rows < 0
    if missing.any():
        raise DatasetError(f"{where}: no source for {int(missing.sum())} of {len(labels)} images (e.g. "
                           f"{_shown(labels['image_name'][missing].tolist())}): it must name every image")
    sources = meta[column].str.strip().iloc[rows].reset_index(drop=True)
    sources.index = labels.index
    check_sources(sources, pd.Series(rows + 2, index=labels.index), f"{where}, column {column!r}")
    return sources, column


def dicom_sources(labels: pd.DataFrame, data_dir: str | os.PathLike) -> tuple[pd.Series | None, str | None]:
    """The source of every image from its DICOM header, when every image is DICOM and says it.

    ``InstitutionName`` when it is non-empty for every image, else
    ``Manufacturer`` and ``ManufacturerModelName`` (one text, ``"<maker> <model>"``)
    when both are: the scanner stands for the site. Anything less says nothing.

    Returns
    -------
    sources : pandas.Series of str, aligned with ``labels``, or None
    origin : str or None
        ``"DICOM InstitutionName"`` or ``"DICOM Manufacturer + ManufacturerModelName"``.

    Raises
    ------
    DatasetError
        When a source holds one image (:func:`check_sources`, naming its path).
    """
    paths = [Path(data_dir) / p for p in labels["path"]]
    if not paths or not all(is_dicom(p) for p in paths):
        return None, None
    import pydicom

    tags = ["InstitutionName", "Manufacturer", "ManufacturerModelName"]
    headers = []
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags)
        except Exception:  # noqa: BLE001 - an unreadable header: extraction will report the file
            return None, None
        headers.append({t: str(ds.get(t, "") or "").strip() for t in tags})
    institution = [h["InstitutionName"] for h in headers]
    scanner = [f"{h['Manufacturer']} {h['ManufacturerModelName']}" for h in headers]
    if all(institution):
        sources, origin = institution, "DICOM InstitutionName"
    elif all(h["Manufacturer"] and h["ManufacturerModelName"] for h in headers):
        sources, origin = scanner, "DICOM Manufacturer + ManufacturerModelName"
    else:
        return None, None
    sources = pd.Series(sources, index=labels.index, dtype=object)
    check_sources(sources, labels["path"], f"data folder {str(data_dir)!r}, {origin}", by="image")
    return sources, origin


def image_sources(labels: pd.DataFrame) -> np.ndarray | None:
    """The source of every image of ``original_labels.csv`` (:func:`read_labels`), or None when it is not known."""
    return labels["source"].astype(str).to_numpy() if "source" in labels.columns else None
