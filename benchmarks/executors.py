"""Extraction and the clustering suite in this process against a local Dask cluster, on the same inputs.

:func:`bench_executors` times, for each place to run
(:func:`cxrcluster.executor.parse`: ``""`` for this process, ``local:N``),
the extraction of the same images and the whole clustering suite on the same
synthetic features, and checks that every place gives what this process gives
(the features byte for byte, the table apart from fitting times). Starting a
local cluster is timed apart: it is paid once per notebook run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.memory import synthetic_features
from benchmarks.progress import log
from cxrcluster import clustering, executor, features


def bench_executors(paths: Sequence[Path], model: str, weights: str, config: Path, *, suite_n: int,
                    places: Sequence[str] = ("", "local:2"), batch_size: int = 32, workers: int = 2,
                    engine: str = "openvino") -> list[dict]:
    """Rows of section ``executor``: per place and part, wall seconds and whether it equals this process.

    Parameters
    ----------
    paths : sequence of pathlib.Path
        Images to extract.
    model, weights : str
        The backbone and its weights (:func:`cxrcluster.features.extract_features`).
    config : pathlib.Path
        The clustering configuration.
    suite_n : int
        Synthetic images the suite clusters (:func:`benchmarks.memory.synthetic_features`).
    places : sequence of str
        Where to run, the first being the reference (``""``: this process).
    """
    X_suite, y_suite = synthetic_features(suite_n, seed=0)
    cfg = clustering.load_config(config)
    rows, reference = [], {}
    for place in places:
        where = executor.parse(place, {})
        started = time.perf_counter()
        with executor.connect(place) as cluster:
            ready = time.perf_counter() - started
            if cluster is not None:
                rows.append(_row(where.label, "start the cluster", ready, None, "ok", ""))
            log(f"executor {where.label}: extracting {len(paths)} images with {model}")
            t = time.perf_counter()
            X, _ = features.extract_features(paths, model, weights, batch_size=batch_size, workers=workers,
                                             engine=engine, progress=False, cluster=cluster)
            seconds = time.perf_counter() - t
            same = _same(reference, "features", X.tobytes())
            rows.append(_row(where.label, "extraction", seconds, len(paths), "ok",
                             f"{len(paths) / seconds:.1f} images/s; {same}"))
            log(f"executor {where.label}: the suite at n = {suite_n:,}")
            t = time.perf_counter()
            table, _ = clustering.run_suite(X_suite, y_suite, cfg, model="bench", progress=False, cluster=cluster)
            seconds = time.perf_counter() - t
            fits = int(table["n_seeds"].sum())
            same = _same(reference, "table", table.drop(columns="wall_time_s"))
            rows.append(_row(where.label, "clustering suite", seconds, suite_n, "ok", f"{fits} fits; {same}"))
    return rows


def _same(reference: dict, key: str, value) -> str:
    if key not in reference:
        reference[key] = value
        return "the reference"
    if isinstance(value, pd.DataFrame):
        equal = value.equals(reference[key])
    else:
        equal = value == reference[key]
    return ("equal to the reference" if key == "table" else "byte-identical to the reference") if equal \
        else "DIFFERS from the reference"


def _row(label: str, part: str, seconds: float, n: int | None, status: str, note: str) -> dict:
    return {"section": "executor", "path": label, "algorithm": part, "seconds": round(seconds, 2),
            "n": n if n is not None else np.nan, "status": status, "note": note}
