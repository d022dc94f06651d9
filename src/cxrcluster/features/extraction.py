"""Extracting features: :func:`extract_features` and :func:`extract_dataset`.

:func:`extract_features` is four steps: :func:`_plan_run` checks the
arguments and applies the rule of :mod:`cxrcluster.extraction_path` (a
:class:`_Run`); :func:`_run_here` decodes and runs the forward pass in this
process, or :func:`_run_on_cluster` sends shards to a Dask cluster
(:mod:`cxrcluster.features.on_cluster`), each filling the same
:class:`~cxrcluster.features.batches._Collected` and reporting what it
computed (a :class:`_Computed`); :func:`_provenance` is the sidecar's record.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxrcluster import data, decoded, engines, executor, extraction_path, models
from cxrcluster.features.batches import _bad_summary, _Collected, _Extractor, iter_batches
from cxrcluster.features.on_cluster import SHARD_BATCHES, _extract_on
from cxrcluster.features.store import save_features

#: Version of the layout of the ``.npy`` and its sidecar.
FORMAT_VERSION = 1


def extract_features(paths: Sequence[Path], model, weights: str = "imagenet", *,
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
    model : str, cxrcluster.models.Backbone or cxrcluster.model_files.ModelFile
        A key of :data:`cxrcluster.models.BACKBONES`, or a resolved backbone
        (:func:`cxrcluster.models.get_backbone`: a whole model file among them).
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
    # before the plan, which may import OpenVINO: the two libraries are loaded in the order they always were
    import keras
    import tensorflow as tf

    run = _plan_run(paths, model, weights, image_names=image_names, batch_size=batch_size, workers=workers,
                    max_bad_fraction=max_bad_fraction, seed=seed, progress=progress, engine=engine,
                    precision=precision, on_cluster=cluster is not None, shard_batches=shard_batches,
                    cache_dir=cache_dir, n_clusters=n_clusters)
    collected = _Collected(run.paths, run.names, run.backbone.feature_dim, run.max_bad_fraction)
    started = time.perf_counter()
    computed = _run_here(run, collected) if cluster is None else _run_on_cluster(run, collected, cluster)
    if collected.bad:
        print(_bad_summary(collected.bad, len(run.paths), run.max_bad_fraction))
    return collected.features, _provenance(run, collected, computed, time.perf_counter() - started,
                                           _versions(keras, tf))


@dataclass(frozen=True)
class _Run:
    """What one extraction needs, decided before the model is built: checked arguments and the path's plan."""

    paths: list[Path]
    names: list[str]
    model_name: str
    weights: str
    backbone: models.Backbone  # or a model_files.ModelFile
    plan: extraction_path.Plan  # the engine and the precisions to try (extraction_path.plan)
    batch_size: int
    workers: int
    max_bad_fraction: float
    seed: int
    progress: bool
    shard_batches: int
    cache_dir: str | os.PathLike | None
    n_clusters: int

    def worker_settings(self) -> dict:
        """What a Dask worker builds its model from (:func:`extract_shard`): the plan's first precision."""
        # a model file travels as its checked description (the worker checks its SHA-256)
        model = self.backbone if self.backbone.from_file else self.model_name
        return {"model_name": model, "weights": self.weights, "seed": self.seed,
                "engine": self.plan.engine, "precision": self.plan.candidates[0], "batch_size": self.batch_size}


def _plan_run(paths: Sequence[Path], model, weights: str, *, image_names: Sequence[str] | None,
              batch_size: int, workers: int, max_bad_fraction: float, seed: int, progress: bool, engine: str,
              precision: str, on_cluster: bool, shard_batches: int, cache_dir: str | os.PathLike | None,
              n_clusters: int) -> _Run:
    """Check the arguments of :func:`extract_features` and plan the extraction path, before any work."""
    if not 0 <= max_bad_fraction <= 1:
        raise ValueError(f"max_bad_fraction must be within [0, 1], got {max_bad_fraction}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if shard_batches < 1:
        raise ValueError(f"shard_batches must be at least 1, got {shard_batches}")
    the_plan = extraction_path.plan(engine, precision, on_cluster=on_cluster)  # before the model is built
    names = list(image_names) if image_names is not None else [Path(p).name for p in paths]
    backbone = models.get_backbone(model)
    return _Run(list(paths), names, backbone.name, weights, backbone, the_plan, batch_size,
                workers, max_bad_fraction, seed, progress, shard_batches, cache_dir, n_clusters)


@dataclass(frozen=True)
class _Computed:
    """What a run reports for the sidecar: the weights, the path it took and why, and who computed what."""

    weights_info: dict
    engine_settings: dict
    choice: dict  # the sidecar's engine_choice
    executor: str
    computed_by: list[dict]
    seconds_inference: float


def _run_here(run: _Run, collected: _Collected) -> _Computed:
    """Decode and run the forward pass in this process, through the decode cache when there is a ``cache_dir``.

    The model is built here and its forward pass chosen by
    :func:`cxrcluster.extraction_path.select` (a lower precision is checked on
    a sample of these images, read from the decode cache when it is complete).
    """
    from tqdm.auto import tqdm

    paths, size = run.paths, run.backbone.input_size
    cache = decoded.DecodedImages(Path(run.cache_dir) / "decoded", paths, size) if run.cache_dir is not None else None
    model, weights_info = models.build_backbone(run.backbone, run.weights, seed=run.seed)

    def sample_images(rows: Sequence[int]) -> tuple[np.ndarray, list[str | None]]:
        if cache is not None and cache.complete():
            return cache.take(rows)
        parts = list(iter_batches([paths[i] for i in rows], size, run.batch_size, workers=run.workers))
        return np.concatenate([b for b, _ in parts]), [e for _, errs in parts for e in errs]

    forward, choice = extraction_path.select(
        model, run.backbone, run.plan, paths, batch_size=run.batch_size, seed=run.seed, n_clusters=run.n_clusters,
        weights_sha256=weights_info.get("weights_sha256"), sample_images=sample_images, cache_dir=run.cache_dir)
    extractor = _Extractor.around(forward, weights_info, size, run.batch_size)
    started = time.perf_counter()
    with tqdm(total=len(paths), desc=f"{run.model_name} features", unit="img", disable=not run.progress,
              mininterval=2.0, file=sys.stdout) as bar:
        # closed at once when a batch stops the run, so an unfinished cache entry is removed then
        with contextlib.closing(extractor.batches(paths, run.workers, cache=cache)) as batches:
            for feats, errors in batches:
                collected.add(feats, errors)
                bar.update(len(errors))
    seconds = time.perf_counter() - started
    choice["decoded_cache"] = _cache_note(cache)
    return _Computed(weights_info, forward.info, choice, executor.IN_PROCESS,
                     [{"rows": [0, len(paths)], **executor.worker_description()}], seconds)


def _cache_note(cache: decoded.DecodedImages | None) -> str:
    if cache is None:
        return "not used"
    return f"{cache.array_path.name} in {cache.root}" if cache.complete() else "not written"


def _run_on_cluster(run: _Run, collected: _Collected, cluster: executor.Cluster) -> _Computed:
    """Shards of whole batches as tasks on a Dask cluster (:func:`_extract_on`), in the plan's first precision.

    No precision check and no decode cache there: the workers never write to ``OUT``.
    """
    settings = run.worker_settings()
    choice = {"rule": "cxrcluster.extraction_path (README: choosing the extraction path)",
              "requested": run.plan.requested, "evidence": run.plan.evidence, "notes": run.plan.notes,
              "checks": [], "engine": settings["engine"], "precision": settings["precision"],
              "reason": f"{settings['precision']}: " + run.plan.notes[-1].split(": ", 1)[1],
              "decoded_cache": "not used (a cluster's workers never write to OUT)"}
    started = time.perf_counter()
    weights_info, engine_settings, shards = _extract_on(cluster, settings, collected, run.workers, run.shard_batches,
                                                        run.progress)
    return _Computed(weights_info, engine_settings, choice, cluster.label, shards, time.perf_counter() - started)


def _provenance(run: _Run, collected: _Collected, computed: _Computed, seconds_total: float,
                versions: dict) -> dict:
    """The sidecar's record of a run (see the package docstring)."""
    backbone, n, elapsed = run.backbone, len(run.paths), computed.seconds_inference
    described = backbone.describe()
    return {
        "format_version": FORMAT_VERSION,
        "model": run.model_name,
        **described,
        **computed.weights_info,
        "preprocessing": {
            **described["preprocessing"],
            "image_input": "luminance 0-255 (16-bit rescaled by image range, alpha on black; DICOM through its "
                           "modality and VOI LUTs, MONOCHROME1 inverted), "
                           "bilinear resize of the whole image (aspect not kept), "
                           + ("one channel" if backbone.channels == 1 else "repeated to 3 channels"),
        },
        "feature_dim": backbone.feature_dim,
        "dtype": "float32",
        "engine": computed.choice["engine"],
        "precision": computed.choice["precision"],
        "engine_choice": computed.choice,
        "engine_settings": computed.engine_settings,
        "batch_size": run.batch_size,
        "seed": run.seed,
        "image_count": n,
        "images_ok": n - len(collected.bad),
        "bad_images": collected.bad,
        "max_bad_fraction": run.max_bad_fraction,
        "bad_rows": "NaN",
        "image_names": run.names,
        "executor": computed.executor,
        "computed_by": computed.computed_by,
        "seconds_total": round(seconds_total, 3),
        "seconds_inference": round(elapsed, 3),
        "images_per_second": round(n / elapsed, 2) if elapsed > 0 else None,
        "versions": versions,
    }


def _versions(keras, tf) -> dict:
    import PIL
    import sklearn

    versions = {"python": platform.python_version(), "numpy": np.__version__, "pandas": pd.__version__,
                "tensorflow": tf.__version__, "keras": keras.__version__, "pillow": PIL.__version__,
                "scikit-learn": sklearn.__version__, "platform": platform.platform()}
    if engines.openvino_version():
        versions["openvino"] = engines.openvino_version()
    return versions


def extract_dataset(labels_csv: str | os.PathLike, data_dir: str | os.PathLike, model,
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
    backbone = models.get_backbone(model)  # a model file is checked here, before any work
    labels = data.read_labels(labels_csv)
    paths = data.resolve_image_paths(labels, data_dir)
    if kwargs.get("cluster") is not None:  # the workers read the images themselves: can they?
        weights_file = [weights] if Path(weights).is_file() else []
        weights_file += [backbone.path] if backbone.from_file else []
        executor.check_readable(kwargs["cluster"].client, [data_dir, *paths[:1], *paths[-1:], *weights_file])
    kwargs.setdefault("n_clusters", max(2, labels["label"].nunique()))
    X, provenance = extract_features(paths, backbone, weights, image_names=list(labels["image_name"]),
                                     engine=engine, precision=precision, **kwargs)
    provenance["labels_sha256"] = data.labels_fingerprint(labels["image_name"], labels["label"])
    provenance["data_dir"] = str(Path(data_dir).resolve())
    save_features(X, provenance, features_dir, backbone.name)
    return X, provenance
