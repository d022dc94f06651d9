"""Feature extraction: every image through a pretrained backbone, with provenance.

``features/<Model>.npy`` holds one float32 row per row of
``original_labels.csv``, in that order. An image that cannot be read keeps its
row, filled with NaN, and is named with its reason in the JSON sidecar
``features/<Model>.json``; clustering drops those rows and says how many. The
sidecar also records the model, weights (and their SHA-256), input size,
preprocessing, the engine and precision of the forward pass
(:mod:`cxrcluster.engines`) and why they were chosen (``engine_choice``,
:mod:`cxrcluster.extraction_path`), library versions, image count and time taken.
With a ``cache_dir``, decoded images are kept for the next model
(:mod:`cxrcluster.decoded`).
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from cxrcluster import atomic, data, decoded, engines, executor, images, models
from cxrcluster import extraction_path

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


#: Batches per extraction task on a Dask cluster: 8 batches of 32 are 256 images, a few seconds
#: of work for small backbones, so a killed worker loses little and the shards spread evenly.
SHARD_BATCHES = 8

def extract_features(paths: Sequence[Path], model_name: str, weights: str = "imagenet", *,
                     image_names: Sequence[str] | None = None, batch_size: int = 32, workers: int = 2,
                     max_bad_fraction: float = 0.05, seed: int = 0, progress: bool = True,
                     engine: str = "tensorflow", precision: str = "fp32",
                     cluster: executor.Cluster | None = None, shard_batches: int = SHARD_BATCHES,
                     cache_dir: str | os.PathLike | None = None, n_clusters: int = 3
                     ) -> tuple[np.ndarray, dict]:
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
        Image decoding threads (on each Dask worker too).
    max_bad_fraction : float
        Stop with :class:`BadInputError` when more than this fraction of
        images cannot be read. Below it, bad images are reported, not fatal.
    seed : int
        Seed of random initialisation (``weights="none"``).
    progress : bool
        Show a progress bar with images per second.
    engine : {"tensorflow", "openvino", "auto"}
        What runs the forward pass (:mod:`cxrcluster.engines`). The default,
        TensorFlow in fp32, is the reference: byte-identical on rerun. The
        pipeline (``make``, notebook 02) runs ``auto``: the rule of
        :mod:`cxrcluster.extraction_path`, OpenVINO when installed.
    precision : {"fp32", "bf16", "int8", "auto"}
        Arithmetic of the forward pass; bf16 only on CPUs with bf16
        instructions (:class:`cxrcluster.engines.EngineUnavailableError`
        otherwise), int8 with OpenVINO only. ``auto`` tries what the CPU runs
        natively and keeps it only if it passes the check on this dataset's
        images (:func:`cxrcluster.extraction_path.select`). What was used, and why,
        is recorded in the provenance (``engine``, ``precision``,
        ``engine_choice``).
    cluster : cxrcluster.executor.Cluster, optional
        Run on a Dask cluster (:func:`cxrcluster.executor.connect`) rather
        than in this process: the images are split into shards of
        ``shard_batches`` whole batches, each a task; a worker builds the
        model once and reuses it for every shard it gets
        (:func:`extract_shard`). The shards' batches are this process's
        batches, so the features are the same as in this process on the same
        CPU; the sidecar records which worker computed which rows.
    shard_batches : int
        Batches per shard on a cluster.
    cache_dir : path-like, optional
        Keep decoded images (:mod:`cxrcluster.decoded`), precision checks and
        quantised models here, for the next model and the next run (the
        pipeline: ``OUT/cache``). Not used on a cluster (workers never write
        to ``OUT``).
    n_clusters : int
        Clusters of the k-means in the precision check (the dataset's classes).

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
    if shard_batches < 1:
        raise ValueError(f"shard_batches must be at least 1, got {shard_batches}")
    the_plan = extraction_path.plan(engine, precision, on_cluster=cluster is not None)  # before the model is built
    names = list(image_names) if image_names is not None else [Path(p).name for p in paths]
    paths = list(paths)
    backbone = models.get_backbone(model_name)
    collected = _Collected(paths, names, backbone.feature_dim, max_bad_fraction)
    started = time.perf_counter()
    if cluster is None:
        cache = (decoded.DecodedImages(Path(cache_dir) / "decoded", paths, backbone.input_size)
                 if cache_dir is not None else None)
        model, weights_info = models.build_backbone(model_name, weights, seed=seed)

        def sample_images(rows: Sequence[int]) -> tuple[np.ndarray, list[str | None]]:
            if cache is not None and cache.complete():
                return cache.take(rows)
            parts = list(iter_batches([paths[i] for i in rows], backbone.input_size, batch_size, workers=workers))
            return np.concatenate([b for b, _ in parts]), [e for _, errs in parts for e in errs]

        forward, choice = extraction_path.select(
            model, backbone, the_plan, paths, batch_size=batch_size, seed=seed, n_clusters=n_clusters,
            weights_sha256=weights_info.get("weights_sha256"), sample_images=sample_images, cache_dir=cache_dir)
        extractor = _Extractor.around(forward, weights_info, backbone.input_size, batch_size)
        engine_settings, shards = forward.info, None
        compute_started = time.perf_counter()
        with tqdm(total=len(paths), desc=f"{model_name} features", unit="img", disable=not progress,
                  mininterval=2.0, file=sys.stdout) as bar:
            # closed at once when a batch stops the run, so an unfinished cache entry is removed then
            with contextlib.closing(extractor.batches(paths, workers, cache=cache)) as batches:
                for feats, errors in batches:
                    collected.add(feats, errors)
                    bar.update(len(errors))
        choice["decoded_cache"] = _cache_note(cache)
    else:
        settings = {"model_name": model_name, "weights": weights, "seed": seed, "engine": the_plan.engine,
                    "precision": the_plan.candidates[0], "batch_size": batch_size}
        choice = {"rule": "cxrcluster.extraction_path (README: choosing the extraction path)",
                  "requested": the_plan.requested, "evidence": the_plan.evidence, "notes": the_plan.notes,
                  "checks": [], "engine": settings["engine"], "precision": settings["precision"],
                  "reason": f"{settings['precision']}: " + the_plan.notes[-1].split(": ", 1)[1],
                  "decoded_cache": "not used (a cluster's workers never write to OUT)"}
        compute_started = started
        weights_info, engine_settings, shards = _extract_on(cluster, settings, collected, workers, shard_batches,
                                                            progress)
    elapsed = time.perf_counter() - compute_started
    out, bad = collected.features, collected.bad
    if bad:
        print(_bad_summary(bad, len(paths), max_bad_fraction))
    provenance = {
        "format_version": FORMAT_VERSION,
        "model": model_name,
        "keras_constructor": f"keras.applications.{backbone.constructor}",
        "constructor_kwargs": backbone.kwargs,
        **weights_info,
        "input_size": [backbone.input_size, backbone.input_size, 3],
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
        "engine": choice["engine"],
        "precision": choice["precision"],
        "engine_choice": choice,
        "engine_settings": engine_settings,
        "batch_size": batch_size,
        "seed": seed,
        "image_count": len(paths),
        "images_ok": len(paths) - len(bad),
        "bad_images": bad,
        "max_bad_fraction": max_bad_fraction,
        "bad_rows": "NaN",
        "image_names": names,
        "executor": executor.IN_PROCESS if cluster is None else cluster.label,
        "computed_by": shards or [{"rows": [0, len(paths)], **executor.worker_description()}],
        "seconds_total": round(time.perf_counter() - started, 3),
        "seconds_inference": round(elapsed, 3),
        "images_per_second": round(len(paths) / elapsed, 2) if elapsed > 0 else None,
        "versions": _versions(keras, tf),
    }
    return out, provenance


class _Collected:
    """The feature rows and bad images of a run, gathered batch by batch in row order.

    Stops with :class:`BadInputError` after the first batch that takes the bad
    images over ``max_bad_fraction``, in this process and on a cluster alike.
    """

    def __init__(self, paths: Sequence[Path], names: Sequence[str], dim: int, max_bad_fraction: float):
        self.paths, self.names, self.limit = paths, names, max_bad_fraction
        self.features = np.full((len(paths), dim), np.nan, dtype=np.float32)
        self.bad: list[dict] = []
        self.row = 0

    def add(self, feats: np.ndarray, errors: Sequence[str | None]) -> None:
        for i, err in enumerate(errors):
            if err is None:
                self.features[self.row + i] = feats[i]
            else:
                self.bad.append({"image_name": self.names[self.row + i], "path": str(self.paths[self.row + i]),
                                 "reason": err})
        self.row += len(errors)
        if self.bad and len(self.bad) > self.limit * len(self.paths):
            raise BadInputError(_bad_summary(self.bad, len(self.paths), self.limit, stopped_at=self.row))


class _Extractor:
    """A backbone built once and compiled for one engine and precision, and its input size."""

    def __init__(self, model_name: str, weights: str, seed: int, engine: str, precision: str, batch_size: int):
        backbone = models.get_backbone(model_name)
        model, self.weights_info = models.build_backbone(model_name, weights, seed=seed)
        self.size, self.batch_size = backbone.input_size, batch_size
        self.forward = engines.make_forward(model, backbone.preprocess_input(), batch_size, self.size,
                                            engine=engine, precision=precision)

    @classmethod
    def around(cls, forward: engines.Forward, weights_info: dict, size: int, batch_size: int) -> _Extractor:
        """An extractor of an already compiled forward pass."""
        self = cls.__new__(cls)
        self.forward, self.weights_info, self.size, self.batch_size = forward, weights_info, size, batch_size
        return self

    def batches(self, paths: Sequence[Path], workers: int, cache: decoded.DecodedImages | None = None
                ) -> Iterator[tuple[np.ndarray, list[str | None]]]:
        """Features and read errors of each batch of ``paths``, in order (rows of bad images are zeros' features).

        With ``cache`` (for exactly ``paths``), the decoded images are read from it when it is
        complete, and written to it while decoding otherwise.
        """
        for batch, errors in _decoded_batches(list(paths), self.size, self.batch_size, workers, cache):
            # pads the last batch to batch_size: one graph, one set of numerics
            yield self.forward(batch), errors


def _decoded_batches(paths: list[Path], size: int, batch_size: int, workers: int,
                     cache: decoded.DecodedImages | None) -> Iterator[tuple[np.ndarray, list[str | None]]]:
    """:func:`iter_batches`, through the decode cache when there is one."""
    if cache is not None and cache.complete():
        for start in range(0, len(paths), batch_size):
            yield cache.rows(start, min(start + batch_size, len(paths)))
        return
    writer = cache.writer() if cache is not None else None
    try:
        for batch, errors in iter_batches(paths, size, batch_size, workers=workers):
            if writer is not None:
                writer.add(batch, errors)
            yield batch, errors
    except BaseException:
        if writer is not None:
            writer.abandon()
        raise
    if writer is not None:
        writer.finish()


def _cache_note(cache: decoded.DecodedImages | None) -> str:
    if cache is None:
        return "not used"
    return f"{cache.array_path.name} in {cache.root}" if cache.complete() else "not written"


_WORKER_EXTRACTOR: dict = {}
_WORKER_LOCK = threading.Lock()


def extract_shard(settings: dict, paths: Sequence[str], workers: int) -> dict:
    """On a Dask worker: the features of one shard of images, with the model built once per worker.

    The worker keeps the last model it built (one at a time, to bound its
    memory) and reuses it for every shard with the same ``settings``; a lock
    serialises shards on a worker with several threads.

    Returns
    -------
    dict
        ``features`` (NaN rows for unreadable images), ``errors`` (per
        image), ``weights`` (the weights' provenance), ``engine_settings``
        and ``worker`` (:func:`cxrcluster.executor.worker_description`).
    """
    key = tuple(sorted(settings.items()))
    with _WORKER_LOCK:
        if key not in _WORKER_EXTRACTOR:
            _WORKER_EXTRACTOR.clear()
            _WORKER_EXTRACTOR[key] = _Extractor(**settings)
        extractor = _WORKER_EXTRACTOR[key]
        rows, errors = [], []
        for feats, errs in extractor.batches([Path(p) for p in paths], workers):
            rows.append(np.where(np.array([e is None for e in errs])[:, None], feats, np.nan).astype(np.float32))
            errors += errs
    return {"features": np.concatenate(rows), "errors": errors, "weights": extractor.weights_info,
            "engine_settings": extractor.forward.info, "worker": executor.worker_description()}


def _extract_on(cluster: executor.Cluster, settings: dict, collected: _Collected, workers: int,
                shard_batches: int, progress: bool) -> tuple[dict, dict, list[dict]]:
    """Extraction as shard tasks on a cluster, gathered in row order into ``collected``."""
    from dask.base import tokenize

    paths = [os.path.abspath(p) for p in collected.paths]
    batch_size = settings["batch_size"]
    step = batch_size * shard_batches
    bounds = [(start, min(start + step, len(paths))) for start in range(0, len(paths), step)]
    token = tokenize(settings, paths, workers)
    client = cluster.client
    futures = [client.submit(extract_shard, settings, paths[a:b], workers, key=f"extract-{i}-{token}")
               for i, (a, b) in enumerate(bounds)]
    done: dict[int, dict] = {}
    shards: list[dict] = []
    gathered = 0
    try:
        for i in executor.completed(cluster, futures, desc=f"{settings['model_name']} features",
                                    units=[b - a for a, b in bounds], unit="img", progress=progress):
            done[i] = futures[i].result()
            while gathered in done:  # in row order, so that bad images stop the run where a local run would
                shard = done.pop(gathered)
                a, b = bounds[gathered]
                for start in range(0, b - a, batch_size):
                    collected.add(shard["features"][start:start + batch_size], shard["errors"][start:start + batch_size])
                shards.append({"rows": [a, b], **shard["worker"], "threads": shard["engine_settings"].get("threads"),
                               "weights": shard["weights"], "engine_settings": shard["engine_settings"]})
                gathered += 1
    finally:
        client.cancel([f for f in futures if not f.done()])
    first = shards[0]
    differing = {s["worker"] for s in shards if s["weights"].get("weights_sha256") != first["weights"].get(
        "weights_sha256")}
    if differing:
        raise RuntimeError(f"the workers hold different weights for {settings['model_name']}: "
                           f"{first['worker']} has {first['weights'].get('weights_sha256')}, "
                           f"{', '.join(sorted(differing))} another; give every worker the same weights file")
    weights_info, engine_settings = first["weights"], first["engine_settings"]
    for s in shards:
        del s["weights"], s["engine_settings"]
    return weights_info, engine_settings, shards


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
    unavailable ``engine`` / ``precision`` (see :func:`extract_features`),
    and, on a cluster, a worker that cannot read ``data_dir``, the first and
    last images or a weights file at the same path
    (:func:`cxrcluster.executor.check_readable`).
    Other keyword arguments go to :func:`extract_features`. Returns what
    :func:`extract_features` returns.
    """
    extraction_path.plan(engine, precision, on_cluster=kwargs.get("cluster") is not None)
    labels = data.read_labels(labels_csv)
    paths = data.resolve_image_paths(labels, data_dir)
    if kwargs.get("cluster") is not None:  # the workers read the images themselves: can they?
        weights_file = [weights] if Path(weights).is_file() else []
        executor.check_readable(kwargs["cluster"].client, [data_dir, *paths[:1], *paths[-1:], *weights_file])
    kwargs.setdefault("n_clusters", max(2, labels["label"].nunique()))
    X, provenance = extract_features(paths, model_name, weights, image_names=list(labels["image_name"]),
                                     engine=engine, precision=precision, **kwargs)
    provenance["labels_sha256"] = data.labels_fingerprint(labels["image_name"], labels["label"])
    provenance["data_dir"] = str(Path(data_dir).resolve())
    save_features(X, provenance, features_dir, model_name)
    return X, provenance
