"""Feature extraction: every image through a pretrained backbone, with provenance.

``features/<Model>.npy`` holds one float32 row per row of
``original_labels.csv``, in that order. An image that cannot be read keeps its
row, filled with NaN, and is named with its reason in the JSON sidecar
``features/<Model>.json``; clustering drops those rows and says how many. The
sidecar also records the model, weights (and their SHA-256), input size,
preprocessing, the engine and precision of the forward pass
(:mod:`cxrcluster.engines`), library versions, image count and time taken.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from cxrcluster import atomic, data, engines, images, models

#: Version of the layout of the ``.npy`` and its sidecar.
FORMAT_VERSION = 1


class BadInputError(RuntimeError):
    """Too many images could not be read for the run to be trusted."""


def _decode(path: Path, size: int, max_pixels: int) -> tuple[np.ndarray | None, str | None]:
    try:
        return images.load_image(path, size, max_pixels=max_pixels), None
    except images.ImageReadError as exc:
        return None, exc.reason


def iter_batches(paths: Sequence[Path], size: int, batch_size: int, workers: int = 2,
                 prefetch_batches: int = 2, max_pixels: int = images.DEFAULT_MAX_PIXELS
                 ) -> Iterator[tuple[np.ndarray, list[str | None]]]:
    """Decode images in a thread pool, in order, a few batches ahead of the model.

    Parameters
    ----------
    paths : sequence of pathlib.Path
        Image files, in output order.
    size : int
        Square input size of the model.
    batch_size : int
        Images per yielded batch (the last one may be smaller).
    workers : int
        Decoding threads (Pillow releases the GIL while decoding).
    prefetch_batches : int
        Batches decoded ahead of the one being consumed.
    max_pixels : int
        See :func:`cxrcluster.images.read_luminance`.

    Yields
    ------
    batch : numpy.ndarray
        ``(n, size, size, 3)`` float32 in 0-255; unreadable images are zeros.
    errors : list of (str or None)
        Per image, the reason it could not be read, or None.
    """
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: deque[list[Future]] = deque()
        starts = iter(range(0, len(paths), batch_size))

        def submit_next() -> None:
            start = next(starts, None)
            if start is not None:
                pending.append([pool.submit(_decode, p, size, max_pixels)
                                for p in paths[start:start + batch_size]])

        for _ in range(prefetch_batches + 1):
            submit_next()
        while pending:
            results = [f.result() for f in pending.popleft()]
            submit_next()
            batch = np.zeros((len(results), size, size, 3), dtype=np.float32)
            errors: list[str | None] = []
            for i, (arr, err) in enumerate(results):
                if arr is not None:
                    batch[i] = arr
                errors.append(err)
            yield batch, errors


def extract_features(paths: Sequence[Path], model_name: str, weights: str = "imagenet", *,
                     image_names: Sequence[str] | None = None, batch_size: int = 32, workers: int = 2,
                     max_bad_fraction: float = 0.05, seed: int = 0, progress: bool = True,
                     engine: str = "tensorflow", precision: str = "fp32") -> tuple[np.ndarray, dict]:
    """Run every image through a backbone and return its pooled features.

    Parameters
    ----------
    paths : sequence of pathlib.Path
        Image files, in the order of the output rows.
    model_name : str
        A key of :data:`cxrcluster.models.BACKBONES`.
    weights : str
        ``"imagenet"``, ``"none"`` or a weights file path; see
        :func:`cxrcluster.models.build_backbone`.
    image_names : sequence of str, optional
        Names recorded in the provenance (default: file names).
    batch_size : int
        Images per forward pass. The last batch is padded to this size so
        every pass has one shape (one compiled graph, identical numerics).
    workers : int
        Image decoding threads.
    max_bad_fraction : float
        Stop with :class:`BadInputError` when more than this fraction of
        images cannot be read. Below it, bad images are reported, not fatal.
    seed : int
        Seed of random initialisation (``weights="none"``).
    progress : bool
        Show a progress bar with images per second.
    engine : {"tensorflow", "openvino"}
        What runs the forward pass (:mod:`cxrcluster.engines`). The default,
        TensorFlow in fp32, is the reference: byte-identical on rerun. The
        pipeline (``make``, notebook 02) runs OpenVINO fp32, also
        byte-identical on rerun, within about 1e-5 of the reference and faster.
    precision : {"fp32", "bf16"}
        Arithmetic of the forward pass; bf16 only on CPUs with bf16
        instructions (:class:`cxrcluster.engines.EngineUnavailableError`
        otherwise). Both are recorded in the provenance.

    Returns
    -------
    features : numpy.ndarray
        ``(len(paths), feature_dim)`` float32; rows of unreadable images are NaN.
    provenance : dict
        What the sidecar JSON records (see module docstring).
    """
    import keras
    import tensorflow as tf
    from tqdm.auto import tqdm

    if not 0 <= max_bad_fraction <= 1:
        raise ValueError(f"max_bad_fraction must be within [0, 1], got {max_bad_fraction}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    engines.check_engine(engine, precision)  # before the model is built
    names = list(image_names) if image_names is not None else [Path(p).name for p in paths]
    backbone = models.get_backbone(model_name)
    started = time.perf_counter()
    model, weights_info = models.build_backbone(model_name, weights, seed=seed)
    preprocess = backbone.preprocess_input()
    size = backbone.input_size

    forward = engines.make_forward(model, preprocess, batch_size, size, engine=engine, precision=precision)

    out = np.full((len(paths), backbone.feature_dim), np.nan, dtype=np.float32)
    bad: list[dict] = []
    row = 0
    bar = tqdm(total=len(paths), desc=f"{model_name} features", unit="img", disable=not progress,
               mininterval=2.0, file=sys.stdout)
    compute_started = time.perf_counter()
    for batch, errors in iter_batches(list(paths), size, batch_size, workers=workers):
        n = len(batch)
        feats = forward(batch)  # pads the last batch to batch_size: one graph, one set of numerics
        for i, err in enumerate(errors):
            if err is None:
                out[row + i] = feats[i]
            else:
                bad.append({"image_name": names[row + i], "path": str(paths[row + i]), "reason": err})
        row += n
        bar.update(n)
        if bad and len(bad) > max_bad_fraction * len(paths):
            bar.close()
            raise BadInputError(_bad_summary(bad, len(paths), max_bad_fraction, stopped_at=row))
    bar.close()
    elapsed = time.perf_counter() - compute_started
    if bad:
        print(_bad_summary(bad, len(paths), max_bad_fraction))
    provenance = {
        "format_version": FORMAT_VERSION,
        "model": model_name,
        "keras_constructor": f"keras.applications.{backbone.constructor}",
        "constructor_kwargs": backbone.kwargs,
        **weights_info,
        "input_size": [size, size, 3],
        "preprocessing": {
            "function": f"keras.applications.{backbone.family}.preprocess_input",
            "description": models.PREPROCESSING[backbone.preprocessing],
            "image_input": "luminance 0-255 (16-bit rescaled by image range, alpha on black; DICOM through its "
                           "modality and VOI LUTs, MONOCHROME1 inverted), "
                           "bilinear resize of the whole image (aspect not kept), repeated to 3 channels",
        },
        "pooling": "global average",
        "feature_dim": backbone.feature_dim,
        "dtype": "float32",
        "engine": engine,
        "precision": precision,
        "engine_settings": forward.info,
        "batch_size": batch_size,
        "seed": seed,
        "image_count": len(paths),
        "images_ok": len(paths) - len(bad),
        "bad_images": bad,
        "max_bad_fraction": max_bad_fraction,
        "bad_rows": "NaN",
        "image_names": names,
        "seconds_total": round(time.perf_counter() - started, 3),
        "seconds_inference": round(elapsed, 3),
        "images_per_second": round(len(paths) / elapsed, 2) if elapsed > 0 else None,
        "versions": _versions(keras, tf),
    }
    return out, provenance


def _bad_summary(bad: list[dict], total: int, limit: float, stopped_at: int | None = None) -> str:
    lines = [f"{len(bad)} of {total} images could not be read"
             + (f" (stopped after {stopped_at}: more than max_bad_fraction={limit:.0%} are bad)"
                if stopped_at is not None else "; their feature rows are NaN:")]
    lines += [f"  {b['image_name']}: {b['reason']}" for b in bad[:20]]
    if len(bad) > 20:
        lines.append(f"  ... and {len(bad) - 20} more (all listed in the sidecar JSON)")
    return "\n".join(lines)


def _versions(keras, tf) -> dict:
    import PIL
    import sklearn

    versions = {"python": platform.python_version(), "numpy": np.__version__, "pandas": pd.__version__,
                "tensorflow": tf.__version__, "keras": keras.__version__, "pillow": PIL.__version__,
                "scikit-learn": sklearn.__version__, "platform": platform.platform()}
    if engines.openvino_version():
        versions["openvino"] = engines.openvino_version()
    return versions


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
    provenance = pd.read_json(sidecar, typ="series").to_dict()
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


def extract_dataset(labels_csv: str | os.PathLike, data_dir: str | os.PathLike, model_name: str,
                    weights: str, features_dir: str | os.PathLike, *, engine: str = "tensorflow",
                    precision: str = "fp32", **kwargs) -> tuple[np.ndarray, dict]:
    """Extract and save the features of every image listed in ``labels_csv``.

    Rows whose path is missing or escapes ``data_dir`` are refused before any
    work (:class:`cxrcluster.data.DatasetError`), and so is an unknown or
    unavailable ``engine`` / ``precision`` (see :func:`extract_features`).
    Other keyword arguments go to :func:`extract_features`. Returns what
    :func:`extract_features` returns.
    """
    engines.check_engine(engine, precision)
    labels = data.read_labels(labels_csv)
    paths = data.resolve_image_paths(labels, data_dir)
    X, provenance = extract_features(paths, model_name, weights, image_names=list(labels["image_name"]),
                                     engine=engine, precision=precision, **kwargs)
    provenance["labels_sha256"] = data.labels_fingerprint(labels["image_name"], labels["label"])
    provenance["data_dir"] = str(Path(data_dir).resolve())
    save_features(X, provenance, features_dir, model_name)
    return X, provenance
