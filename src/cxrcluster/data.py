"""The dataset: one folder per class, scanned into ``original_labels.csv``.

The layout is the Kaggle chest X-ray dataset's: ``<root>/COVID/*.png``,
``<root>/NORMAL/*.jpeg``, ``<root>/PNEUMONIA/...``, optionally one level deeper
(``<root>/train/COVID/...``, ``<root>/test/COVID/...``). The class of an image
is the name of the folder that holds it, with common spellings folded into one
class name (``COVID19``, ``COVID-19`` and ``covid`` are all ``COVID``).

This module owns the two files that describe the data to every later step:
``original_labels.csv`` (:func:`read_labels`) and ``reports/dataset.json``
(:func:`describe_dataset`, :func:`write_dataset_description`,
:func:`read_dataset_description`), and the note that every figure carries to say
which data it shows (:func:`data_note`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import pandas as pd

from cxrcluster import atomic, demo

#: File endings read as images (compared case-insensitively).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

#: Folder-name spellings (lower case, letters and digits only) -> class name.
CLASS_ALIASES = {
    "covid": "COVID",
    "covid19": "COVID",
    "covid2019": "COVID",
    "sarscov2": "COVID",
    "normal": "NORMAL",
    "healthy": "NORMAL",
    "pneumonia": "PNEUMONIA",
    "pneumoniabacterial": "PNEUMONIA",
    "pneumoniaviral": "PNEUMONIA",
    "bacterialpneumonia": "PNEUMONIA",
    "viralpneumonia": "PNEUMONIA",
}

#: Columns of ``original_labels.csv``: the original study's two, plus the image's
#: path relative to the data folder (posix separators).
LABEL_COLUMNS = ["image_name", "label", "path"]


class DatasetError(ValueError):
    """The data folder or a labels file cannot be used as it is."""


def canonical_class(folder_name: str) -> str:
    """Map a class folder's name to its class name.

    Parameters
    ----------
    folder_name : str
        Name of the folder holding the images, e.g. ``"COVID-19"``.

    Returns
    -------
    str
        The canonical class name (``"COVID"``) for a known spelling, else the
        folder name upper-cased, so that unknown classes still work.
    """
    key = re.sub(r"[^a-z0-9]", "", folder_name.lower())
    return CLASS_ALIASES.get(key, folder_name.strip().upper())


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def scan_dataset(data_dir: str | os.PathLike) -> pd.DataFrame:
    """List every image under ``data_dir`` with its class.

    Parameters
    ----------
    data_dir : path-like
        Folder with one sub-folder per class, optionally one level deeper
        (``train/``, ``test/``). Hidden files and files that are not images
        (by extension) are ignored.

    Returns
    -------
    pandas.DataFrame
        Columns ``image_name, label, path``, sorted by label then path, one row
        per image. ``image_name`` is the file name when file names are unique in
        the dataset, else the relative path (so that it is always a unique key).

    Raises
    ------
    DatasetError
        If the folder does not exist, holds no images, or holds images outside
        any class folder or more than two levels deep.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DatasetError(f"data folder {str(root)!r} does not exist or is not a folder")
    rows, misplaced = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if not _is_image(path):
                continue
            rel = path.relative_to(root)
            if len(rel.parts) not in (2, 3):
                misplaced.append(rel.as_posix())
                continue
            rows.append({"label": canonical_class(rel.parts[-2]), "path": rel.as_posix()})
    if misplaced:
        shown = ", ".join(misplaced[:5]) + (" ..." if len(misplaced) > 5 else "")
        raise DatasetError(
            f"{len(misplaced)} image(s) in {str(root)!r} are not inside a class folder "
            f"(<data>/<CLASS>/image or <data>/<split>/<CLASS>/image): {shown}"
        )
    if not rows:
        raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {str(root)!r}")
    df = pd.DataFrame(rows)
    names = df["path"].map(lambda p: PurePosixPath(p).name)
    df.insert(0, "image_name", names if names.is_unique else df["path"])
    return df.sort_values(["label", "path"], kind="stable").reset_index(drop=True)[LABEL_COLUMNS]


def read_labels(path: str | os.PathLike) -> pd.DataFrame:
    """Read and check a labels CSV written by :func:`scan_dataset`.

    Parameters
    ----------
    path : path-like
        ``original_labels.csv``.

    Returns
    -------
    pandas.DataFrame
        With at least ``image_name`` and ``label``; ``path`` defaults to
        ``<label>/<image_name>`` for two-column files of the original study.

    Raises
    ------
    DatasetError
        On missing columns, empty or duplicated image names, or empty labels.
    """
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {"image_name", "label"} - set(df.columns)
    if missing:
        raise DatasetError(f"{path}: missing column(s) {sorted(missing)}; found {list(df.columns)}")
    if df.empty:
        raise DatasetError(f"{path}: no rows")
    if (df["image_name"] == "").any() or (df["label"] == "").any():
        raise DatasetError(f"{path}: empty image_name or label in row(s) "
                           f"{list(df.index[(df['image_name'] == '') | (df['label'] == '')][:5] + 2)}")
    dup = df["image_name"][df["image_name"].duplicated()]
    if len(dup):
        raise DatasetError(f"{path}: duplicated image_name(s): {', '.join(dup.unique()[:5])}")
    if "path" not in df.columns:
        df["path"] = df["label"] + "/" + df["image_name"]
    return df


def resolve_image_paths(labels: pd.DataFrame, data_dir: str | os.PathLike) -> list[Path]:
    """Turn the ``path`` column into absolute paths, refusing unsafe or missing ones.

    Parameters
    ----------
    labels : pandas.DataFrame
        A labels table with a ``path`` column relative to ``data_dir``.
    data_dir : path-like
        The data folder.

    Returns
    -------
    list of pathlib.Path
        One per row, in row order.

    Raises
    ------
    DatasetError
        Naming the rows whose path is absolute or escapes ``data_dir`` (``..``),
        and the rows whose file does not exist.
    """
    root = Path(data_dir).resolve()
    out, escaping, missing = [], [], []
    for name, rel in zip(labels["image_name"], labels["path"], strict=True):
        p = PurePosixPath(str(rel).replace("\\", "/"))
        full = (root / p).resolve()
        if p.is_absolute() or ".." in p.parts or not full.is_relative_to(root):
            escaping.append(f"{name} ({rel})")
        elif not full.is_file():
            missing.append(f"{name} ({rel})")
        out.append(full)
    problems = []
    if escaping:
        problems.append(f"{len(escaping)} path(s) outside the data folder: {', '.join(escaping[:5])}")
    if missing:
        problems.append(f"{len(missing)} file(s) missing: {', '.join(missing[:5])}")
    if problems:
        raise DatasetError(f"labels refer to files that cannot be used (data folder {str(root)!r}): "
                           + "; ".join(problems))
    return out


def labels_fingerprint(image_names: Iterable[str], labels: Iterable[str]) -> str:
    """SHA-256 of the (image_name, label) sequence, to tie results to one labels file."""
    h = hashlib.sha256()
    for name, label in zip(image_names, labels, strict=True):
        h.update(f"{name}\t{label}\n".encode())
    return h.hexdigest()


#: The note of figures drawn from the synthetic demo data (:func:`data_note`).
SYNTHETIC_NOTE = "SYNTHETIC demo data, not evidence"


def describe_dataset(labels: pd.DataFrame, data_dir: str | os.PathLike) -> dict:
    """Describe a scanned dataset for the reports: folder, synthetic or not, counts, fingerprint.

    Parameters
    ----------
    labels : pandas.DataFrame
        ``original_labels.csv`` (:func:`scan_dataset` or :func:`read_labels`).
    data_dir : path-like
        The folder the labels were scanned from.

    Returns
    -------
    dict
        ``data_dir`` (str), ``synthetic`` (bool: the demo data's marker file is
        there), ``n_images``, ``classes`` (class -> image count, sorted by
        class) and ``labels_sha256`` (:func:`labels_fingerprint`).
    """
    counts = labels["label"].value_counts().sort_index()
    return {
        "data_dir": str(data_dir),
        "synthetic": demo.is_synthetic(data_dir),
        "n_images": len(labels),
        "classes": {str(k): int(v) for k, v in counts.items()},
        "labels_sha256": labels_fingerprint(labels["image_name"], labels["label"]),
    }


def write_dataset_description(description: dict, path: str | os.PathLike) -> None:
    """Write a dataset description (:func:`describe_dataset`) atomically as JSON."""
    atomic.write_json(description, path)


def read_dataset_description(path: str | os.PathLike) -> dict:
    """Read ``reports/dataset.json``, checking it has the keys the reports use.

    Raises
    ------
    KeyError
        Naming the keys that are missing.
    """
    description = json.loads(Path(path).read_text(encoding="utf-8"))
    missing = [k for k in ("data_dir", "synthetic", "n_images", "classes") if k not in description]
    if missing:
        raise KeyError(f"{path} lacks {missing}; rerun 00-prepare-data")
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
