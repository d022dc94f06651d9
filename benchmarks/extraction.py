"""Extraction timed path by path on the same images, input decoding alone, and fidelity to fp32.

Extraction (per model, one process, the same images, every path measured in
interleaved rounds so that a change in the machine's load hits them all):

* ``baseline``: the original study's pipeline, reproduced with the class it
  used, ``tf.keras.preprocessing.image.ImageDataGenerator(rescale=1/255)``
  (still shipped by Keras 3 as a legacy class): PIL load as RGB, nearest
  resize, ``x / 255``, no ``preprocess_input``, ``model.predict`` in batches of
  16, fp32, loading and inference in turn;
* ``tensorflow-fp32``, ``tensorflow-bf16``, ``openvino-fp32``,
  ``openvino-bf16``, ``openvino-int8`` (NNCF, calibrated on the seeded
  calibration sample of :func:`cxrcluster.extraction_path.sample_rows` of the same
  images): exactly the loop of
  :func:`cxrcluster.features.extract_features` (decoding in a thread pool a
  few batches ahead, :func:`cxrcluster.engines.make_forward` for the engine and
  precision). ``tensorflow-fp32`` is ``extract_features``' own default and the
  fp32 reference; its features of the first two batches are checked byte for
  byte against a call of ``extract_features`` itself. bf16 rows say why when
  the CPU has no bf16. ``--pipeline-default`` names the path ``make`` runs by
  default (its ``ENGINE`` and ``PRECISION``): ``auto`` applies the rule of
  :mod:`cxrcluster.extraction_path` to this machine and these images, check
  included, and marks the path it chooses; the targets judge that path as
  the project's default.

Each path is warmed up (graphs traced and compiled on one batch), then timed
over every image ``repeats`` times; the median is reported, and the speed-up
is the median over rounds of the ratio to the baseline of the same round (on
a shared machine the load can change between rounds). Fidelity to the fp32
reference is the pipeline's own check, :func:`cxrcluster.extraction_path.fidelity`:
the smallest per-image cosine similarity and the largest per-image error
relative to the image's largest feature, the smallest and median centred
cosines, and (with more than three images) the agreement of a k-means
clustering of both, ARI and matched change, and whether the path passes. The
baseline feeds other inputs (x / 255, nearest resize, no
``preprocess_input``), so its features are not comparable and are not scored.

Decoding: :func:`cxrcluster.images.load_image` through the same thread pool
(:func:`cxrcluster.features.iter_batches`) with no model, to show whether it
limits extraction.

A model whose ImageNet weights are not in Keras' cache is benchmarked with
random weights (``weights="none"``; nothing is downloaded). Speed does not
depend on the weight values; fidelity
figures of random-weight networks say how an engine treats that architecture,
not how it treats the trained network.

Rows are those of :data:`benchmarks.report.CSV_COLUMNS`.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.progress import log
from cxrcluster import engines, extraction_path, features, models

BASELINE_BATCH_SIZE = 16
"""The original study's ``predict`` batch size."""

#: Extraction paths: name -> (engine, precision); the baseline is not an engine.
PATHS: dict[str, tuple[str, str]] = {
    "tensorflow-fp32": ("tensorflow", "fp32"),
    "tensorflow-bf16": ("tensorflow", "bf16"),
    "openvino-fp32": ("openvino", "fp32"),
    "openvino-bf16": ("openvino", "bf16"),
    "openvino-int8": ("openvino", "int8"),
}
PATH_ORDER = ("baseline", *PATHS)
REFERENCE = "tensorflow-fp32"
"""The fp32 reference every path is compared with: ``extract_features``' default."""

#: The path the pipeline runs by default: the Makefile's ``ENGINE``-``PRECISION`` (``make bench``
#: passes them; this is for direct calls). ``auto``: the rule of :mod:`cxrcluster.extraction_path`.
PIPELINE_DEFAULT = "auto"


def _run_loop(forward: engines.Forward, paths: Sequence[Path], size: int, batch_size: int,
              workers: int) -> tuple[np.ndarray, float]:
    """``extract_features``' loop: decode ahead in a pool, forward each batch; returns features and forward time."""
    outs, in_forward = [], 0.0
    for batch, _ in features.iter_batches(list(paths), size, batch_size, workers=workers):
        start = time.perf_counter()
        outs.append(forward(batch))
        in_forward += time.perf_counter() - start
    return np.concatenate(outs), in_forward


def _baseline_runner(model, paths: Sequence[Path], size: int) -> Callable[[Sequence[Path]], np.ndarray]:
    """The original study's extraction: ImageDataGenerator(rescale=1/255) and ``predict``, batch 16."""
    import tensorflow as tf

    generator = tf.keras.preprocessing.image.ImageDataGenerator(rescale=1.0 / 255)

    def run(some: Sequence[Path]) -> np.ndarray:
        frame = pd.DataFrame({"filename": [str(p) for p in some]})
        with contextlib.redirect_stdout(open(os.devnull, "w")):  # "Found N validated image filenames."
            flow = generator.flow_from_dataframe(frame, x_col="filename", class_mode=None,
                                                 target_size=(size, size), batch_size=BASELINE_BATCH_SIZE,
                                                 shuffle=False)
        return model.predict(flow, verbose=0)

    return run


def choose_weights(name: str, choice: str) -> str:
    """``auto``: ImageNet when the model's weights are in Keras' cache, else random."""
    if choice != "auto":
        return choice
    cached = models.keras_cache_dir() / models.get_backbone(name).weights_file
    return "imagenet" if cached.is_file() else "none"


def bench_extraction(paths: Sequence[Path], model_names: Sequence[str], *, weights: str = "auto",
                     repeats: int = 3, batch_size: int = 32, workers: int = 2,
                     pipeline_default: str = REFERENCE) -> list[dict]:
    """Time every extraction path of every model on the same images; see the module docstring.

    Parameters
    ----------
    paths : sequence of pathlib.Path
        The images, the same for every path.
    model_names : sequence of str
        Backbones.
    weights : {"auto", "imagenet", "none"}
        ``auto``: ImageNet weights where they are in Keras' cache, random ones
        elsewhere (never a download).
    repeats : int
        Timed rounds per path; the median is reported.
    batch_size, workers : int
        As for :func:`cxrcluster.features.extract_features`.
    pipeline_default : str
        The path ``make`` runs by default (a key of :data:`PATHS`), noted in its row.

    Returns
    -------
    list of dict
        Rows of :data:`~benchmarks.report.CSV_COLUMNS` (sections ``extraction`` and ``decoding``).
    """
    import keras

    rows: list[dict] = []
    decoded_sizes: dict[int, dict] = {}
    for name in model_names:
        backbone = models.get_backbone(name)
        size = backbone.input_size
        if size not in decoded_sizes:
            decoded_sizes[size] = bench_decoding(paths, size, repeats=repeats, batch_size=batch_size,
                                                 workers=workers)
            rows.append(decoded_sizes[size])
        used_weights = choose_weights(name, weights)
        log(f"{name}: building ({used_weights} weights)")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*RANDOM weights.*")
            model, _ = models.build_backbone(name, used_weights)
        preprocess = backbone.preprocess_input()
        from benchmarks.gemm import model_flops

        common = {"section": "extraction", "model": name, "weights": used_weights, "input_size": size,
                  "images": len(paths), "repeats": repeats, "gflop_per_image": round(model_flops(model) / 1e9, 4)}

        runners: dict[str, Callable[[], tuple[np.ndarray, float | None]]] = {}
        notes: dict[str, str] = {}
        baseline = _baseline_runner(model, paths, size)
        warm = list(paths[:BASELINE_BATCH_SIZE + len(paths) % BASELINE_BATCH_SIZE])
        start = time.perf_counter()
        baseline(warm)  # traces predict for the full and the last, partial batch shape
        notes["baseline"] = f"setup {time.perf_counter() - start:.1f} s"
        runners["baseline"] = lambda run=baseline: (run(paths), None)
        skipped: dict[str, str] = {}

        def decode(rows, n=size):
            parts = list(features.iter_batches([paths[i] for i in rows], n, batch_size, workers=workers))
            return np.concatenate([b for b, _ in parts]), [e for _, errs in parts for e in errs]

        calibration_rows, _ = extraction_path.sample_rows(len(paths), seed=0)
        for path, (engine, precision_) in PATHS.items():
            start = time.perf_counter()
            try:
                calibration = decode(calibration_rows)[0] if precision_ == "int8" else None
                forward = engines.make_forward(model, preprocess, batch_size, size, engine, precision_,
                                               calibration=calibration)
                if precision_ == "int8":
                    notes[path] = f"calibrated on {forward.info['calibration_images']} images; "
            except (engines.EngineUnavailableError, ValueError) as exc:
                skipped[path] = str(exc)
                log(f"{name}: {path} skipped: {exc}")
                continue
            forward(np.zeros((1, size, size, 3), np.float32))  # compile / first inference
            kernels = ", ".join(f"{k} {v}" for k, v in list(forward.info.get("kernels", {}).items())[:3])
            notes[path] = (notes.get(path, "") + f"setup {time.perf_counter() - start:.1f} s"
                           + (f"; {forward.info['threads']} threads, kernels {kernels}" if kernels else ""))
            runners[path] = lambda f=forward, s=size: _run_loop(f, paths, s, batch_size, workers)

        times: dict[str, list[float]] = {p: [] for p in runners}
        cpu: dict[str, list[float]] = {p: [] for p in runners}
        in_forward: dict[str, list[float]] = {p: [] for p in runners}
        first: dict[str, np.ndarray] = {}
        deterministic: dict[str, bool] = {}
        highest_load = os.getloadavg()[0]
        for r in range(repeats):
            for path, run in runners.items():
                cpu0, wall0 = time.process_time(), time.perf_counter()
                out, fwd = run()
                wall, used_cpu = time.perf_counter() - wall0, time.process_time() - cpu0
                times[path].append(wall)
                cpu[path].append(used_cpu)
                if fwd is not None:
                    in_forward[path].append(fwd)
                if path in first:
                    deterministic[path] = deterministic[path] and out.tobytes() == first[path].tobytes()
                else:
                    first[path], deterministic[path] = out, True
                log(f"{name}: round {r + 1}/{repeats} {path}: {len(paths) / wall:.1f} images/s "
                    f"(load {os.getloadavg()[0]:.2f})")
                highest_load = max(highest_load, os.getloadavg()[0])

        check = list(paths[:2 * batch_size])
        log(f"{name}: checking {REFERENCE} against features.extract_features itself ({len(check)} images)")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*RANDOM weights.*")
            direct, _ = features.extract_features(check, name, used_weights, batch_size=batch_size,
                                                  workers=workers, progress=False)
        same = direct.tobytes() == first[REFERENCE][:len(check)].tobytes()
        notes[REFERENCE] += ("; byte-identical to features.extract_features" if same
                             else "; DIFFERS from features.extract_features")
        notes["baseline"] += f"; highest 1-min load average during the rounds {highest_load:.2f}"
        roles = {"baseline": "original study", REFERENCE: "fp32 reference, extract_features default"}
        default_path, default_note = pipeline_default, "make default"
        if pipeline_default == extraction_path.AUTO:
            log(f"{name}: applying the rule (cxrcluster.extraction_path) to this machine and these images")
            _, record = extraction_path.select(model, backbone, extraction_path.plan(), paths, batch_size=batch_size, seed=0,
                                               n_clusters=3, weights_sha256=None, sample_images=decode, cache_dir=None)
            default_path = f"{record['engine']}-{record['precision']}"
            default_note = f"make default (rule: {record['reason']})"
        roles[default_path] = ", ".join(filter(None, [roles.get(default_path), default_note]))

        reference = first[REFERENCE]
        for path in PATH_ORDER:
            engine, precision_ = PATHS.get(path, ("keras predict", "fp32"))
            row = {**common, "path": path, "engine": engine, "precision": precision_, "role": roles.get(path, ""),
                   "batch_size": BASELINE_BATCH_SIZE if path == "baseline" else batch_size}
            if path in skipped:
                rows.append({**row, "status": "skipped", "note": skipped[path]})
                continue
            seconds = float(np.median(times[path]))
            rate = len(paths) / seconds
            # the ratio within each round, where the baseline ran moments before under the same load
            ratios = [base / own for base, own in zip(times["baseline"], times[path], strict=True)]
            row.update(seconds=round(seconds, 3), images_per_s=round(rate, 2),
                       speedup_vs_baseline=round(float(np.median(ratios)), 2),
                       cpu_s_per_image=round(float(np.median(cpu[path])) / len(paths), 4),
                       deterministic=deterministic[path], status="ok", note=notes.get(path, ""))
            if in_forward[path]:
                row["forward_images_per_s"] = round(len(paths) / float(np.median(in_forward[path])), 2)
            if path == "baseline":
                row["note"] += ("; other inputs (RGB, nearest resize, x/255, no preprocess_input): "
                                "features not comparable")
            else:
                # k-means of three clusters needs more than three images
                agree = extraction_path.fidelity(reference, first[path], n_clusters=3 if len(paths) > 3 else None,
                                                 seed=0)
                row.update(min_cosine=agree["min_cosine"], max_rel_error=agree["max_relative_error"],
                           min_centred_cosine=agree["min_centred_cosine"])
                if "kmeans_ari" in agree:
                    row.update(median_centred_cosine=agree["median_centred_cosine"],
                               kmeans_ari=agree["kmeans_ari"], kmeans_matched_change=agree["kmeans_matched_change"],
                               passes_check=agree["passed"])
            rows.append(row)
        del model, runners, first
        keras.backend.clear_session()
        gc.collect()
    return rows


def bench_decoding(paths: Sequence[Path], size: int, *, repeats: int = 3, batch_size: int = 32,
                   workers: int = 2) -> dict:
    """Images per second of decoding alone (:func:`cxrcluster.features.iter_batches`, no model).

    Returns
    -------
    dict
        One row of :data:`~benchmarks.report.CSV_COLUMNS` (section ``decoding``).
    """
    for _ in features.iter_batches(list(paths), size, batch_size, workers=workers):
        pass  # warm-up: file cache
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in features.iter_batches(list(paths), size, batch_size, workers=workers):
            pass
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    log(f"decoding at {size}px with {workers} threads: {len(paths) / seconds:.1f} images/s")
    return {"section": "decoding", "path": "decode", "input_size": size, "batch_size": batch_size,
            "images": len(paths), "repeats": repeats, "seconds": round(seconds, 3),
            "images_per_s": round(len(paths) / seconds, 2), "status": "ok",
            "note": f"images.load_image in {workers} threads (features.iter_batches), no model"}


def bench_decode_cache(paths: Sequence[Path], model_names: Sequence[str], *, weights: str = "auto",
                       batch_size: int = 32, workers: int = 2, engine: str = "auto", precision_: str = "auto",
                       ) -> list[dict]:
    """``MODELS=all``-style extraction of the same images, every model in turn, without and with the decode cache.

    Both runs go through :func:`cxrcluster.features.extract_features` as
    notebook 02 does (the cache one with a fresh ``cache_dir``, which the first
    model of each input size fills); their features are compared byte for byte.

    Returns
    -------
    list of dict
        Two rows of the ``decode-cache`` section: total seconds of each run,
        per-model seconds in the note.
    """
    import shutil
    import tempfile

    import keras

    totals, per_model, outputs = {}, {}, {}
    scratch = Path(tempfile.mkdtemp(prefix="cxr-decode-cache-"))
    try:
        for mode in ("without cache", "with cache"):
            cache_dir = scratch / "cache" if mode == "with cache" else None
            totals[mode], per_model[mode] = 0.0, []
            for name in model_names:
                used = choose_weights(name, weights)
                start = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*RANDOM weights.*")
                    out, _ = features.extract_features(paths, name, used, batch_size=batch_size, workers=workers,
                                                       progress=False, engine=engine, precision=precision_,
                                                       cache_dir=cache_dir, max_bad_fraction=1.0)
                seconds = time.perf_counter() - start
                totals[mode] += seconds
                per_model[mode].append(f"{name} {seconds:.1f} s")
                identical = outputs.setdefault(name, out).tobytes() == out.tobytes()
                outputs[name + mode] = identical
                log(f"decode cache, {mode}: {name} {seconds:.1f} s" + ("" if identical else " (features DIFFER)"))
                keras.backend.clear_session()
                gc.collect()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    same = all(outputs[name + "with cache"] for name in model_names)
    sizes = sorted({models.get_backbone(n).input_size for n in model_names})
    rows = []
    for mode in ("without cache", "with cache"):
        note = "; ".join(per_model[mode])
        if mode == "with cache":
            note = (("features byte-identical to the run without; " if same else "features DIFFER; ")
                    + f"images decoded once per input size ({', '.join(map(str, sizes))} px); " + note)
        rows.append({"section": "decode-cache", "path": mode, "engine": engine, "precision": precision_,
                     "model": f"{len(model_names)} models", "images": len(paths), "batch_size": batch_size,
                     "seconds": round(totals[mode], 2), "images_per_s": round(len(paths) / totals[mode] *
                                                                              len(model_names), 2),
                     "speedup_vs_baseline": round(totals["without cache"] / totals[mode], 3),
                     "status": "ok", "note": note})
    return rows
