"""The features files: where they are, writing them, reading them back checked, and the rows to keep.

``features/<Model>.npy`` and its sidecar ``features/<Model>.json`` are named
by :func:`feature_paths`, written by :func:`save_features` and read by
:func:`load_features`; :func:`readable_rows` and :func:`drop_unreadable` say
which rows belong to images that could be read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxrcluster import atomic


def feature_paths(features_dir: str | os.PathLike, model_name: str) -> tuple[Path, Path]:
    """``(features/<Model>.npy, features/<Model>.json)``."""
    d = Path(features_dir)
    return d / f"{model_name}.npy", d / f"{model_name}.json"


def save_features(features: np.ndarray, provenance: dict, features_dir: str | os.PathLike,
                  model_name: str) -> Path:
    """Write the sidecar, then the ``.npy`` (the make target) last, each atomically."""
    npy, sidecar = feature_paths(features_dir, model_name)
    atomic.write_json(provenance, sidecar)
    atomic.write_npy(np.ascontiguousarray(features, dtype=np.float32), npy)
    return npy


def read_provenance(features_dir: str | os.PathLike, model_name: str) -> dict:
    """A model's sidecar, ``features/<Model>.json``: how its features were made (:func:`load_features` reads it too)."""
    sidecar = feature_paths(features_dir, model_name)[1]
    if not sidecar.is_file():
        raise FileNotFoundError(f"{sidecar} does not exist; extract {model_name}'s features first")
    return json.loads(sidecar.read_text(encoding="utf-8"))


def load_features(features_dir: str | os.PathLike, model_name: str,
                  labels: pd.DataFrame) -> tuple[np.ndarray, dict]:
    """Load a model's features and check they belong to ``labels``.

    Parameters
    ----------
    features_dir : path-like
        Folder holding ``<Model>.npy`` and ``<Model>.json``.
    model_name : str
        The model.
    labels : pandas.DataFrame
        The current ``original_labels.csv`` (``image_name`` column).

    Returns
    -------
    features : numpy.ndarray
        ``(len(labels), d)`` float32, NaN rows for unreadable images.
    provenance : dict
        The sidecar.

    Raises
    ------
    ValueError
        When the file is not a 2-D float array, or its row count or image list
        does not match ``labels`` (features of another dataset or an older
        labels file).
    """
    npy, sidecar = feature_paths(features_dir, model_name)
    for p in (npy, sidecar):
        if not p.is_file():
            raise FileNotFoundError(f"{p} does not exist; extract {model_name}'s features first")
    X = np.load(npy, allow_pickle=False)
    provenance = read_provenance(features_dir, model_name)
    if X.ndim != 2 or not np.issubdtype(X.dtype, np.floating):
        raise ValueError(f"{npy}: expected a 2-D float array, got shape {X.shape} dtype {X.dtype}")
    if X.shape[0] != len(labels):
        raise ValueError(f"{npy} has {X.shape[0]} rows but the labels have {len(labels)} images: "
                         "the features were extracted from another dataset; re-extract them")
    names = list(provenance.get("image_names", []))
    if names != list(labels["image_name"]):
        diff = next((i for i, (a, b) in enumerate(zip(names, labels["image_name"], strict=False)) if a != b),
                    min(len(names), len(labels)))
        raise ValueError(f"{sidecar}: the image list does not match the labels (first difference at row "
                         f"{diff}); the features belong to another dataset or order; re-extract them")
    return X.astype(np.float32, copy=False), provenance


def readable_rows(X: np.ndarray) -> np.ndarray:
    """Which feature rows belong to images that could be read (unreadable images have NaN rows)."""
    return ~np.isnan(np.asarray(X, dtype=float)).any(axis=1)


def drop_unreadable(X: np.ndarray, labels: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame, np.ndarray]:
    """Leave out the images that could not be read (their feature rows are NaN).

    Parameters
    ----------
    X : numpy.ndarray, shape (n, d)
        Features, one row per labels row (:func:`load_features`).
    labels : pandas.DataFrame
        ``original_labels.csv``, in the same order.

    Returns
    -------
    X_ok : numpy.ndarray, shape (m, d)
        The rows without NaN.
    labels_ok : pandas.DataFrame
        Their labels rows, re-indexed from 0.
    ok : numpy.ndarray of bool, shape (n,)
        Which rows were kept.
    """
    if len(X) != len(labels):
        raise ValueError(f"{len(X)} feature rows for {len(labels)} labels rows")
    ok = readable_rows(X)
    return X[ok], labels.loc[ok].reset_index(drop=True), ok
