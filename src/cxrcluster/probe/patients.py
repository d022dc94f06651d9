"""Patient groups: which patient each image is of, from the labels or a metadata file.

:func:`patient_groups` returns one patient id per image (or None when the data
does not say), for the grouped folds of
:func:`cxrcluster.probe.linear.linear_probe_cv` and the grouped held-out split
of :func:`cxrcluster.probe.finetune.held_out_split`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxrcluster.data import METADATA_FILE, match_metadata, read_metadata
from cxrcluster.data import METADATA_IMAGE_COLUMNS as IMAGE_COLUMNS

#: Column names recognised as a patient identifier, in order of preference.
PATIENT_COLUMNS = ("patient", "patient_id", "patientid", "subject", "subject_id")

__all__ = ["IMAGE_COLUMNS", "METADATA_FILE", "PATIENT_COLUMNS", "patient_groups"]


def _pick(columns, candidates) -> str | None:
    lower = {c.lower(): c for c in columns}
    return next((lower[c] for c in candidates if c in lower), None)


def patient_groups(labels_df: pd.DataFrame, metadata_csv: str | os.PathLike | None = None,
                   data_dir: str | os.PathLike | None = None) -> np.ndarray | None:
    """Patient id of every image, when the data says which patient an image is of.

    Looked for, in order: a patient column in ``labels_df`` itself; the file
    ``metadata_csv``; ``<data_dir>/metadata.csv``. A metadata file needs a
    patient column (one of :data:`PATIENT_COLUMNS`) and an image column (one of
    :data:`IMAGE_COLUMNS`) holding either the path relative to the data folder
    (``COVID/x.png``) or the file name; images are matched on the relative path
    first, then on the file name (:func:`cxrcluster.data.match_metadata`, as
    the source is at scan time).

    Parameters
    ----------
    labels_df : pandas.DataFrame
        ``original_labels.csv`` (``image_name``, ``path``).
    metadata_csv : path-like, optional
        A metadata file; an error if it does not exist.
    data_dir : path-like, optional
        The data folder, searched for :data:`METADATA_FILE` when
        ``metadata_csv`` is not given.

    Returns
    -------
    numpy.ndarray of str, shape (len(labels_df),), or None
        None when no patient information is found (the caller then uses
        ungrouped folds and should say so).

    Raises
    ------
    FileNotFoundError
        If ``metadata_csv`` is given and does not exist.
    ValueError
        If the metadata has no usable columns, or does not name the patient of
        every image (grouping part of the data would leak the rest).
    """
    column = _pick(labels_df.columns, PATIENT_COLUMNS)
    if column is not None:
        ids = labels_df[column].astype(str)
        if (ids.str.strip() == "").any() or labels_df[column].isna().any():
            raise ValueError(f"labels column {column!r} is empty for some images")
        return ids.to_numpy()
    if metadata_csv is None and data_dir is not None and (Path(data_dir) / METADATA_FILE).is_file():
        metadata_csv = Path(data_dir) / METADATA_FILE
    if metadata_csv is None:
        return None
    metadata_csv = Path(metadata_csv)
    if not metadata_csv.is_file():
        raise FileNotFoundError(f"metadata file {str(metadata_csv)!r} does not exist")
    meta = read_metadata(metadata_csv)
    patient_col, image_col = _pick(meta.columns, PATIENT_COLUMNS), _pick(meta.columns, IMAGE_COLUMNS)
    if patient_col is None or image_col is None:
        raise ValueError(f"{metadata_csv}: needs a patient column (one of {PATIENT_COLUMNS}) and an image "
                         f"column (one of {IMAGE_COLUMNS}); found {list(meta.columns)}")
    rows = match_metadata(labels_df, meta[image_col])
    values = meta[patient_col].tolist()
    ids = [values[row] if row >= 0 else "" for row in rows]
    missing = [str(name) for name, pid in zip(labels_df["image_name"], ids, strict=True) if not pid]
    if missing:
        raise ValueError(f"{metadata_csv}: no patient for {len(missing)} of {len(labels_df)} images "
                         f"(e.g. {', '.join(missing[:5])})")
    return np.asarray(ids, dtype=str)
