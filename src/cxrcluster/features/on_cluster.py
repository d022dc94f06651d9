"""Extraction on a Dask cluster: the images in shards of whole batches, one task each.

:func:`_extract_on` submits the shards and gathers them in row order into the
run's :class:`~cxrcluster.features.batches._Collected`; :func:`extract_shard`
is the task, which Dask runs on a worker by its import path
(``cxrcluster.features.extract_shard`` is the same function). The shards'
batches are a local run's batches, so the features are the same bytes on the
same CPU.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cxrcluster import executor
from cxrcluster.features.batches import _Collected, _Extractor

#: Batches per extraction task on a Dask cluster: 8 batches of 32 are 256 images, a few seconds
#: of work for small backbones, so a killed worker loses little and the shards spread evenly.
SHARD_BATCHES = 8

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
    model = settings["model_name"]
    if getattr(model, "from_file", False):
        model.verify()  # the file may have changed since the worker built it: refuse rather than mix models
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
        for i in executor.completed(cluster, futures, desc=f"{getattr(settings['model_name'], 'name', settings['model_name'])} features",
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
        raise RuntimeError(f"the workers hold different weights for {first['weights'].get('weights_file')}: "
                           f"{first['worker']} has {first['weights'].get('weights_sha256')}, "
                           f"{', '.join(sorted(differing))} another; give every worker the same weights file")
    weights_info, engine_settings = first["weights"], first["engine_settings"]
    for s in shards:
        del s["weights"], s["engine_settings"]
    return weights_info, engine_settings, shards
