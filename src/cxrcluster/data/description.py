"""The data set as every later step sees it: its rows, where its sources came from, and ``reports/dataset.json``.

:func:`read_dataset` turns a data folder (and optionally a labels file) into
the rows of ``original_labels.csv``, with patients and sources where the data
says them. This module owns ``reports/dataset.json`` (:func:`describe_dataset`,
:func:`write_dataset_description`, :func:`read_dataset_description`) and the
note that every figure carries to say which data it shows (:func:`data_note`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from cxrcluster import atomic, demo
from cxrcluster.data.layouts import (
    METADATA_FILE,
    DatasetError,
    _read_labels_file,
    scan_dataset,
    with_dicom_patients,
)
from cxrcluster.data.origins import dicom_sources, metadata_sources


class Dataset(NamedTuple):
    """What :func:`read_dataset` returns: the rows of ``original_labels.csv``, and where the source came from."""

    labels: pd.DataFrame
    source_origin: str | None


def read_dataset(
    data_dir: str | os.PathLike,
    labels_csv: str | os.PathLike | None = None,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    patient_column: str | None = None,
    source_column: str | None = None,
) -> Dataset:
    """The rows of ``original_labels.csv`` for a data folder, with patients and sources when the data says them.

    The images and labels come from the class folders (:func:`scan_dataset`)
    or from ``labels_csv`` (:func:`read_labels_file`); patients from the
    labels file or the DICOM headers (:func:`with_dicom_patients`). The source
    (hospital) of each image is read from the first of:

    1. the labels file's source column (one of :data:`SOURCE_COLUMN_NAMES`, or ``source_column``);
    2. ``<data_dir>/metadata.csv``'s source column (the same names, or
       ``source_column`` when there is no labels file), matched to the images
       by :func:`match_metadata`;
    3. when no source column was named and every image is DICOM, the headers
       (:func:`dicom_sources`).

    Otherwise the images have no ``source`` column: a source is never guessed.

    Parameters
    ----------
    data_dir : path-like
        The data folder.
    labels_csv : path-like, optional
        A labels file naming its images (None or ``""``: class folders).
    image_column, label_column, patient_column, source_column : str, optional
        Column names, when not the usual ones (``""`` is None).

    Returns
    -------
    Dataset
        ``labels``: ``image_name, label, path``, then ``patient`` and
        ``source`` when known (str), sorted by label then path;
        ``source_origin``: where the source was read, e.g. ``"labels file
        column 'site'"``, ``"metadata.csv column 'source'"``, ``"DICOM
        InstitutionName"``; None without a source.

    Raises
    ------
    DatasetError
        Whatever :func:`read_labels_file`, :func:`scan_dataset`,
        :func:`metadata_sources` or :func:`check_sources` refuse; and a
        ``source_column`` that no file holds.
    """
    origin = None
    if labels_csv:
        labels, column = _read_labels_file(labels_csv, data_dir, image_column=image_column or None,
                                           label_column=label_column or None,
                                           patient_column=patient_column or None,
                                           source_column=source_column or None)
        origin = f"labels file column {column!r}" if column is not None else None
    else:
        labels = scan_dataset(data_dir)
    labels = with_dicom_patients(labels, data_dir)
    if origin is None:
        metadata = Path(data_dir) / METADATA_FILE
        named = source_column if not labels_csv else None  # a labels file's column was looked for there
        sources = None
        if metadata.is_file():
            sources, column = metadata_sources(labels, metadata, named or None)
            if sources is not None:
                origin = f"{METADATA_FILE} column {column!r}"
        elif named:
            raise DatasetError(f"source_column {named!r} given, but there is no labels file and no "
                               f"{METADATA_FILE} in {str(data_dir)!r} to hold it")
        if sources is None and not source_column:
            sources, origin = dicom_sources(labels, data_dir)
        if sources is not None:
            labels = labels.assign(source=sources.to_numpy())
    if "source" in labels.columns:  # the source comes last, after a patient column from the headers
        labels = labels[[c for c in labels.columns if c != "source"] + ["source"]]
    return Dataset(labels, origin)


def labels_fingerprint(image_names: Iterable[str], labels: Iterable[str]) -> str:
    """SHA-256 of the (image_name, label) sequence, to tie results to one labels file."""
    h = hashlib.sha256()
    for name, label in zip(image_names, labels, strict=True):
        h.update(f"{name}\t{label}\n".encode())
    return h.hexdigest()


#: The note of figures drawn from the synthetic demo data (:func:`data_note`).
SYNTHETIC_NOTE = "SYNTHETIC demo data, not evidence"


def describe_dataset(labels: pd.DataFrame, data_dir: str | os.PathLike, source_origin: str | None = None) -> dict:
    """Describe a scanned dataset for the reports: folder, synthetic or not, counts, fingerprint, sources.

    Parameters
    ----------
    labels : pandas.DataFrame
        ``original_labels.csv`` (:func:`scan_dataset` or :func:`read_labels`).
    data_dir : path-like
        The folder the labels were scanned from.
    source_origin : str, optional
        Where the ``source`` column came from (:func:`read_dataset`).

    Returns
    -------
    dict
        ``data_dir`` (str; where it leads when it is a link, such as make's
        link for a path with spaces, so that reports name the folder itself),
        ``synthetic`` (bool: the demo data's marker file is
        there), ``n_images``, ``classes`` (class -> image count, sorted by
        class), ``labels_sha256`` (:func:`labels_fingerprint`) and
        ``source``: ``origin`` (``source_origin``, None without a source) and
        ``counts`` (source -> class -> image count, sorted; ``{}`` without a source).
    """
    counts = labels["label"].value_counts().sort_index()
    by_source: dict[str, dict[str, int]] = {}
    if "source" in labels.columns:
        for (source, label), n in labels.groupby(["source", "label"]).size().sort_index().items():
            by_source.setdefault(str(source), {})[str(label)] = int(n)
    return {
        "data_dir": str(Path(data_dir).resolve()) if Path(data_dir).is_symlink() else str(data_dir),
        "synthetic": demo.is_synthetic(data_dir),
        "n_images": len(labels),
        "classes": {str(k): int(v) for k, v in counts.items()},
        "labels_sha256": labels_fingerprint(labels["image_name"], labels["label"]),
        "source": {"origin": source_origin if by_source else None, "counts": by_source},
    }


def write_dataset_description(description: dict, path: str | os.PathLike) -> None:
    """Write a dataset description (:func:`describe_dataset`) atomically as JSON."""
    atomic.write_json(description, path)


def read_dataset_description(path: str | os.PathLike) -> dict:
    """Read ``reports/dataset.json``, checking it has the keys the reports use.

    A description without ``source`` (written by hand, or before sources were
    recorded: make reruns ``00-prepare-data`` on such a run) reads as one with
    no source known, ``{"origin": None, "counts": {}}``.

    Raises
    ------
    KeyError
        Naming the keys that are missing.
    """
    description = json.loads(Path(path).read_text(encoding="utf-8"))
    missing = [k for k in ("data_dir", "synthetic", "n_images", "classes") if k not in description]
    if missing:
        raise KeyError(f"{path} lacks {missing}; rerun 00-prepare-data")
    description.setdefault("source", {"origin": None, "counts": {}})
    return description


def data_note(description: dict) -> str:
    """What a figure's title says about its data: synthetic, or how many images from where.

    Parameters
    ----------
    description : dict
        A dataset description (:func:`describe_dataset`).

    Returns
    -------
    str
        :data:`SYNTHETIC_NOTE` for the demo data, else ``"<n> images from <folder>"``.
    """
    if description["synthetic"]:
        return SYNTHETIC_NOTE
    return f"{description['n_images']} images from {description['data_dir']}"
