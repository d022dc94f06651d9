"""Atomic file writing: a crash never leaves a half-written result behind.

Every result file of the pipeline is written to a temporary file in the same
folder and renamed over its destination only once complete, so make (and a
researcher) never mistakes a truncated file for a finished one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path that replaces ``path`` when the block succeeds.

    Parameters
    ----------
    path : path-like
        Final destination. Its parent folder is created if needed.

    Yields
    ------
    pathlib.Path
        A fresh temporary file name in the same folder (same file system, so
        the final ``os.replace`` is atomic). It keeps the destination's suffix
        so that libraries which look at the extension behave the same.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + path.suffix)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file that atomically replaces ``path`` on success."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as fh:
            yield fh


def write_csv(df: pd.DataFrame, path: str | os.PathLike, **kwargs) -> None:
    """Write ``df`` as CSV atomically (no index unless asked for)."""
    kwargs.setdefault("index", False)
    with atomic_open(path, "w", newline="") as fh:
        df.to_csv(fh, **kwargs)


def write_json(obj, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented, key-sorted JSON atomically."""
    with atomic_open(path, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, default=_json_default)
        fh.write("\n")


def write_npy(array: np.ndarray, path: str | os.PathLike) -> None:
    """Write ``array`` as ``.npy`` atomically (never pickled)."""
    with atomic_open(path, "wb") as fh:
        np.save(fh, array, allow_pickle=False)


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
