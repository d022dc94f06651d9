"""The benchmark harness: extraction paths side by side, input decoding, clustering as n grows.

Run ``python -m cxrcluster.bench --out reports/benchmarks`` (``make bench``). It
writes ``<out>.md`` (the report, with the machine's description) and
``<out>.csv`` (every figure, one row each, columns :data:`CSV_COLUMNS`), both
atomically (``<out>/benchmarks.md`` and ``.csv`` when ``<out>`` is a folder),
and prints its progress as it goes. ``--help`` lists the options.

Extraction (per model, one process, the same images, every path measured in
interleaved rounds so that a change in the machine's load hits them all):

* ``baseline``: the original study's pipeline, reproduced with the class it
  used, ``tf.keras.preprocessing.image.ImageDataGenerator(rescale=1/255)``
  (still shipped by Keras 3 as a legacy class): PIL load as RGB, nearest
  resize, ``x / 255``, no ``preprocess_input``, ``model.predict`` in batches of
  16, fp32, loading and inference in turn;
* ``tensorflow-fp32``, ``tensorflow-bf16``, ``openvino-fp32``,
  ``openvino-bf16``: exactly the loop of
  :func:`cxrcluster.features.extract_features` (decoding in a thread pool a
  few batches ahead, :func:`cxrcluster.engines.make_forward` for the engine and
  precision). ``tensorflow-fp32`` is ``extract_features``' own default and the
  fp32 reference; its features of the first two batches are checked byte for
  byte against a call of ``extract_features`` itself. bf16 rows say why when
  the CPU has no bf16. ``--pipeline-default`` names the path ``make`` runs by
  default (its ``ENGINE`` and ``PRECISION``, ``openvino-fp32``), which the
  targets judge as the project's default path.

Each path is warmed up (graphs traced and compiled on one batch), then timed
over every image ``repeats`` times; the median is reported, and the speed-up
is the median over rounds of the ratio to the baseline of the same round (on
a shared machine the load can change between rounds). Fidelity is
measured against the fp32 reference: the smallest per-image cosine similarity
and the largest per-image error relative to the image's largest feature. The
baseline feeds other inputs (x / 255, nearest resize, no
``preprocess_input``), so its features are not comparable and are not scored.

Decoding: :func:`cxrcluster.images.load_image` through the same thread pool
(:func:`cxrcluster.features.iter_batches`) with no model, to show whether it
limits extraction.

Clustering: every configured algorithm on synthetic 1,280-dimensional features
(:func:`synthetic_features`, prepared once per size as configured) at each
``n``, one fit each (``seeds: 1``), each in its own process under a time cap and
an address-space cap, reporting fit time, peak resident memory and status; an
algorithm that times out is not tried at larger ``n``. Then the whole suite,
as configured (5 seeds), on ``n = 5,228`` raw synthetic features, default
preparation included.

A model whose ImageNet weights are not in Keras' cache is benchmarked with
random weights (``weights="none"``; nothing is downloaded). Speed does not
depend on the weight values; fidelity
figures of random-weight networks say how an engine treats that architecture,
not how it treats the trained network.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from cxrcluster import atomic, data, demo, engines, features, models
from cxrcluster.paths import DEMO_DATA_DIR, PROJECT_ROOT, resolve

#: Real sample used when present (``<project>/../shared/data/cxr-sample``).
SHARED_SAMPLE_DIR = PROJECT_ROOT.parent / "shared" / "data" / "cxr-sample"

DEFAULT_MODELS = ("ResNet50", "MobileNetV2-0.35")
DEFAULT_SIZES = (1_000, 5_000, 20_000, 50_000)
QUICK_SIZES = (200, 400)
SUITE_N = 5_228
"""The real dataset's image count, at which the whole suite is timed."""

BASELINE_BATCH_SIZE = 16
"""The original study's ``predict`` batch size."""

#: Extraction paths: name -> (engine, precision); the baseline is not an engine.
PATHS: dict[str, tuple[str, str]] = {
    "tensorflow-fp32": ("tensorflow", "fp32"),
    "tensorflow-bf16": ("tensorflow", "bf16"),
    "openvino-fp32": ("openvino", "fp32"),
    "openvino-bf16": ("openvino", "bf16"),
}
PATH_ORDER = ("baseline", *PATHS)
REFERENCE = "tensorflow-fp32"
"""The fp32 reference every path is compared with: ``extract_features``' default."""

#: The path the pipeline runs by default: the Makefile's ``ENGINE``-``PRECISION`` (``make bench``
#: passes them; this is for direct calls).
PIPELINE_DEFAULT = "openvino-fp32"

COSINE_TARGET = 0.999
"""Every image's features must be at least this close (cosine) to fp32 for a path to count as fast."""

CSV_COLUMNS = [
    "section", "model", "weights", "path", "engine", "precision", "role", "input_size", "batch_size", "images",
    "repeats", "seconds", "images_per_s", "speedup_vs_baseline", "forward_images_per_s", "cpu_s_per_image",
    "min_cosine", "min_centred_cosine", "max_rel_error", "deterministic", "algorithm", "n", "cpu_s", "peak_rss_mib", "subsample",
    "status", "note",
]
"""Columns of ``<out>.csv``. ``section`` is ``extraction``, ``decoding``,
``clustering`` (one algorithm, one ``n``) or ``suite`` (the whole suite, and
its algorithms' fit times); columns that do not apply to a section are empty.
``role`` marks the original study's pipeline, the fp32 reference
(``extract_features``' default) and the path ``make`` runs by default."""


#: Environment variables that change how libraries use threads, recorded in the report.
THREAD_ENV = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
              "TF_ENABLE_ONEDNN_OPTS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


def log(message: str) -> None:
    """Print a timestamped progress line."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------- synthetic features


def synthetic_features(n: int, d: int = 1280, *, seed: int = 0, n_classes: int = 3,
                       latent: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Features shaped like pooled CNN activations, for timing clustering at any size.

    Each point is drawn from one of ``n_classes`` Gaussian groups in a
    ``latent``-dimensional space, mapped linearly to ``d`` dimensions with a
    random bias and noise, and passed through a ReLU: non-negative, redundant,
    of unequal scales, like global-average-pooled activations. They time the
    algorithms; they say nothing about chest X-rays.

    Parameters
    ----------
    n : int
        Number of points.
    d : int
        Dimension.
    seed : int
        The same seed gives the same points.
    n_classes : int
        Number of groups (labels ``C0``, ``C1``, ...), of similar sizes.
    latent : int
        Dimension of the space the groups are drawn in.

    Returns
    -------
    X : numpy.ndarray of float32, shape (n, d)
    labels : numpy.ndarray of str, shape (n,)
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(n_classes, size=n)
    centres = rng.normal(0.0, 1.5, (n_classes, latent))
    z = centres[y] + rng.normal(0.0, 1.0, (n, latent))
    weights = rng.normal(0.0, 1.0 / np.sqrt(latent), (latent, d))
    bias = rng.normal(-0.5, 0.5, d)
    X = z @ weights + bias
    X += rng.normal(0.0, 0.3, X.shape)
    np.maximum(X, 0.0, out=X)
    return X.astype(np.float32), np.array([f"C{i}" for i in range(n_classes)])[y]


# ---------------------------------------------------------------- measuring


def fidelity(features_: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Smallest per-image cosine similarity and largest per-image relative error.

    The relative error of an image is ``max |f - r| / max |r|`` over its
    features: pooled features are often zero or tiny, so element-wise ratios
    would measure nothing but the smallest activations.

    Parameters
    ----------
    features_, reference : numpy.ndarray, shape (n, d)

    Returns
    -------
    min_cosine, max_rel_error : float
    """
    f = np.asarray(features_, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if f.shape != r.shape:
        raise ValueError(f"features of shape {f.shape} against a reference of shape {r.shape}")
    norms = np.linalg.norm(f, axis=1) * np.linalg.norm(r, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.where(norms > 0, (f * r).sum(axis=1) / norms, np.where((f == r).all(axis=1), 1.0, 0.0))
        scale = np.abs(r).max(axis=1)
        rel = np.where(scale > 0, np.abs(f - r).max(axis=1) / scale, np.abs(f - r).max(axis=1))
    return float(cosine.min()), float(rel.max())


def centred_cosine(features_: np.ndarray, reference: np.ndarray) -> float:
    """Smallest per-image cosine after subtracting the reference's mean feature from both.

    Plain cosines flatter a network whose features all point one way: an
    untrained ResNet50's features of different images already have cosines
    near 0.995 to each other, so 0.9999 to fp32 says little. Centred on the
    reference's mean image, only what tells images apart is compared.

    Parameters
    ----------
    features_, reference : numpy.ndarray, shape (n, d)

    Returns
    -------
    float
    """
    f = np.asarray(features_, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if f.shape != r.shape:
        raise ValueError(f"features of shape {f.shape} against a reference of shape {r.shape}")
    mean = r.mean(axis=0)
    return fidelity(f - mean, r - mean)[0]


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


def _weights_for(name: str, choice: str) -> str:
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
        Rows of :data:`CSV_COLUMNS` (sections ``extraction`` and ``decoding``).
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
        used_weights = _weights_for(name, weights)
        log(f"{name}: building ({used_weights} weights)")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*RANDOM weights.*")
            model, _ = models.build_backbone(name, used_weights)
        preprocess = backbone.preprocess_input()
        common = {"section": "extraction", "model": name, "weights": used_weights, "input_size": size,
                  "images": len(paths), "repeats": repeats}

        runners: dict[str, Callable[[], tuple[np.ndarray, float | None]]] = {}
        notes: dict[str, str] = {}
        baseline = _baseline_runner(model, paths, size)
        warm = list(paths[:BASELINE_BATCH_SIZE + len(paths) % BASELINE_BATCH_SIZE])
        start = time.perf_counter()
        baseline(warm)  # traces predict for the full and the last, partial batch shape
        notes["baseline"] = f"setup {time.perf_counter() - start:.1f} s"
        runners["baseline"] = lambda run=baseline: (run(paths), None)
        skipped: dict[str, str] = {}
        for path, (engine, precision) in PATHS.items():
            start = time.perf_counter()
            try:
                forward = engines.make_forward(model, preprocess, batch_size, size, engine, precision)
            except engines.EngineUnavailableError as exc:
                skipped[path] = str(exc)
                log(f"{name}: {path} skipped: {exc}")
                continue
            forward(np.zeros((1, size, size, 3), np.float32))  # compile / first inference
            notes[path] = f"setup {time.perf_counter() - start:.1f} s"
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
        roles[pipeline_default] = ", ".join(filter(None, [roles.get(pipeline_default), "make default"]))

        reference = first[REFERENCE]
        for path in PATH_ORDER:
            engine, precision = PATHS.get(path, ("keras predict", "fp32"))
            row = {**common, "path": path, "engine": engine, "precision": precision, "role": roles.get(path, ""),
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
                cos, rel = fidelity(first[path], reference)
                row.update(min_cosine=round(cos, 6), max_rel_error=float(f"{rel:.3g}"),
                           min_centred_cosine=round(centred_cosine(first[path], reference), 6))
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
        One row of :data:`CSV_COLUMNS` (section ``decoding``).
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


# ---------------------------------------------------------------- clustering


def _cluster_worker(spec_path: str) -> None:
    """Child process: run the suite once per size, printing a JSON line before and after each.

    The peak resident memory of each size is the kernel's high-water mark
    (``VmHWM``), reset before the size starts, so that each size reports its
    own peak although one process runs them all.
    """
    from cxrcluster import clustering

    spec = json.loads(Path(spec_path).read_text())
    cfg = clustering.validate_config(spec["config"])
    for item in spec["runs"]:
        if "prepared" in item:
            X, labels = np.load(item["prepared"]), np.load(item["labels"])
        else:
            X, labels = synthetic_features(item["n"], seed=item["seed"])
        gc.collect()
        _reset_peak_rss()
        start_rss = _status_mib("VmRSS")
        print(json.dumps({"event": "start", "n": item["n"]}), flush=True)
        cpu0, wall0 = _cpu_seconds(), time.perf_counter()
        results, _ = clustering.run_suite(X, labels, cfg, progress=False)
        wall, cpu = time.perf_counter() - wall0, _cpu_seconds() - cpu0
        rows = []
        for _, r in results.iterrows():
            params = json.loads(r["params"]) if isinstance(r["params"], str) else {}
            rows.append({"algorithm": r["clustering"], "seconds": float(r["wall_time_s"]), "status": r["status"],
                         "subsample": params.get("subsample"), "n_seeds": int(r["n_seeds"])})
        print(json.dumps({"event": "done", "n": item["n"], "total_s": wall, "cpu_s": cpu,
                          "peak_rss_mib": _status_mib("VmHWM"), "start_rss_mib": start_rss, "rows": rows}),
              flush=True)
        del X, labels, results


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _reset_peak_rss() -> None:
    with contextlib.suppress(OSError):  # Linux: "5" resets the high-water mark VmHWM
        Path("/proc/self/clear_refs").write_text("5")


def _status_mib(field: str, pid: int | str = "self") -> float | None:
    """A memory figure of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``) in MiB, or None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    if field == "VmHWM" and pid == "self":
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return None


def _limit_address_space(gib: float) -> Callable[[], None]:
    def limit() -> None:
        cap = int(gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    return limit


def _run_child(spec: dict, workdir: Path, time_cap: float, address_space_gib: float) -> list[dict]:
    """Run :func:`_cluster_worker` in a fresh interpreter, one result per size, each under ``time_cap``.

    A size that overruns the cap is stopped (``{"n": n, "error": "timed out ..."}``
    with the peak memory seen so far) and the larger sizes are not run; so is a
    child killed by a signal.
    """
    import queue
    import threading

    spec_path = workdir / f"spec-{time.monotonic_ns()}.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "cxrcluster.bench", "--cluster-worker", str(spec_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=_limit_address_space(address_space_gib))
    lines: queue.Queue = queue.Queue()
    errors: list[str] = []
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout] + [lines.put(None)], daemon=True).start()
    threading.Thread(target=lambda: errors.extend(proc.stderr), daemon=True).start()
    out: list[dict] = []
    pending = [item["n"] for item in spec["runs"]]
    deadline, peak, current = None, 0.0, None
    try:
        while pending:
            try:
                line = lines.get(timeout=0.25)
            except queue.Empty:
                line = ""
            if line is None:  # the child is gone
                proc.wait()
                code = proc.returncode
                tail = " ".join("".join(errors).strip().splitlines()[-2:])[-300:]
                reason = (f"killed by signal {-code}" + (" (out of memory?)" if code == -9 else "") if code < 0
                          else f"exit code {code}: {tail}")
                out.append({"n": pending[0], "error": reason, "peak_rss_mib": peak or None})
                break
            if line.startswith("{"):
                event = json.loads(line)
                if event["event"] == "start":
                    current, deadline, peak = event["n"], time.monotonic() + time_cap, 0.0
                    continue
                out.append(event)
                pending.remove(event["n"])
                deadline, current = None, None
                continue
            if current is not None:
                peak = max(peak, _status_mib("VmHWM", proc.pid) or 0.0)
                if time.monotonic() > deadline:
                    proc.kill()
                    out.append({"n": current, "error": f"timed out after {time_cap:g} s",
                                "peak_rss_mib": peak or None})
                    break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        spec_path.unlink(missing_ok=True)
    return out


def bench_clustering(config_path: str | os.PathLike, sizes: Sequence[int], *, time_cap: float = 90.0,
                     suite_n: int | None = SUITE_N, suite_time_cap: float = 600.0, seed: int = 0,
                     algorithms: Sequence[str] | None = None) -> list[dict]:
    """Fit time and peak memory of each algorithm at each size, then the whole suite at ``suite_n``.

    Parameters
    ----------
    config_path : path-like
        The clustering configuration (``config/clustering.yaml``).
    sizes : sequence of int
        Numbers of synthetic points (:func:`synthetic_features`), run in
        increasing order.
    time_cap : float
        Seconds one algorithm may take at one size; beyond it its process is
        stopped, the row says ``timed out`` (with the peak memory seen so far)
        and larger sizes are not run.
    suite_n : int, optional
        Size at which the whole suite runs as configured (None: not run).
    suite_time_cap : float
        Seconds the whole suite may take.
    seed : int
        Seed of the synthetic features.
    algorithms : sequence of str, optional
        Only these algorithms, in the table and in the suite (default: every
        enabled one).

    Returns
    -------
    list of dict
        Rows of :data:`CSV_COLUMNS` (sections ``clustering`` and ``suite``).
    """
    from cxrcluster import clustering

    shipped = clustering.load_config(config_path)
    budget = float(shipped["memory_budget_gb"])
    address_space = budget + 4.0  # the budget plus the interpreter, libraries and thread arenas
    names = [a for a, spec in shipped["algorithms"].items()
             if spec["enabled"] and (algorithms is None or a in algorithms)]
    sizes = sorted(sizes)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="cxrcluster-bench-") as tmp:
        work = Path(tmp)
        runs, description = [], ""
        for n in sizes:
            X, labels = synthetic_features(n, seed=seed)
            start = time.perf_counter()
            prepared, description = clustering.prepare_features(X, shipped["preparation"])
            log(f"clustering: n={n:,} synthetic features, {description} in {time.perf_counter() - start:.1f} s")
            del X
            runs.append({"n": n, "prepared": str(work / f"X-{n}.npy"), "labels": str(work / f"y-{n}.npy")})
            np.save(runs[-1]["prepared"], prepared)
            np.save(runs[-1]["labels"], labels)
            del prepared
        for name in names:
            cfg = {**{k: v for k, v in shipped.items() if k != "algorithms"}, "seeds": 1,
                   "preparation": {}, "algorithms": {name: shipped["algorithms"][name]}}
            results = {r["n"]: r for r in _run_child({"config": cfg, "runs": runs}, work, time_cap, address_space)}
            stopped = None
            for n in sizes:
                row = {"section": "clustering", "algorithm": name, "n": n}
                r = results.get(n)
                if r is None:
                    rows.append({**row, "status": "not run", "note": stopped or "the process stopped"})
                    continue
                if "error" in r:
                    rows.append({**row, "peak_rss_mib": _round(r.get("peak_rss_mib"), 1), "status": r["error"],
                                 "note": "peak memory: the highest seen before it was stopped"})
                    stopped = f"{r['error'].split(' (')[0]} at n={n:,}"
                    log(f"  {name} at n={n:,}: {r['error']}")
                    continue
                fit = r["rows"][0]
                rows.append({**row, "seconds": round(fit["seconds"], 3), "cpu_s": round(r["cpu_s"], 2),
                             "peak_rss_mib": _round(r["peak_rss_mib"], 1), "subsample": fit["subsample"],
                             "status": fit["status"],
                             "note": f"prepared {description}; resident before fitting "
                                     f"{r['start_rss_mib']:.0f} MiB"})
                log(f"  {name} at n={n:,}: {fit['seconds']:.2f} s, peak {r['peak_rss_mib']:.0f} MiB"
                    + (f", subsample {fit['subsample']:,}" if fit["subsample"] else "")
                    + ("" if fit["status"] == "ok" else f", {fit['status'][:90]}"))
        if suite_n:
            log(f"whole suite at n={suite_n:,} as configured (synthetic 1,280-d features, preparation included)")
            whole = dict(shipped)
            if algorithms is not None:
                whole["algorithms"] = {a: shipped["algorithms"][a] for a in names}
            out = _run_child({"config": whole, "runs": [{"n": suite_n, "seed": seed}]}, work,
                             suite_time_cap, address_space)
            suite = {"section": "suite", "algorithm": "(whole suite)", "n": suite_n}
            r = out[0] if out else {"error": "the process stopped"}
            if "error" in r:
                rows.append({**suite, "status": r["error"]})
                log(f"  whole suite: {r['error']}")
            else:
                rows.append({**suite, "seconds": round(r["total_s"], 2), "cpu_s": round(r["cpu_s"], 2),
                             "peak_rss_mib": _round(r["peak_rss_mib"], 1), "status": "ok",
                             "note": f"seeds {shipped['seeds']}; preparation, fitting and scoring"})
                for a in r["rows"]:
                    rows.append({"section": "suite", "algorithm": a["algorithm"], "n": suite_n,
                                 "seconds": round(a["seconds"], 3), "subsample": a["subsample"],
                                 "status": a["status"], "note": f"fit time over {a['n_seeds']} run(s)"})
                log(f"  whole suite: {r['total_s']:.1f} s ({r['cpu_s']:.1f} CPU s), "
                    f"peak {r['peak_rss_mib']:.0f} MiB")
    return rows


def _round(value, digits: int):
    return None if value is None else round(float(value), digits)


# ---------------------------------------------------------------- the report


def describe_machine() -> dict:
    """CPU, cores, relevant flags, memory, load and library versions."""
    import PIL
    import sklearn

    info = engines.describe_cpu()
    versions = {"python": platform.python_version(), "numpy": np.__version__, "scikit-learn": sklearn.__version__,
                "pillow": PIL.__version__}
    with contextlib.suppress(ImportError):
        import keras
        import tensorflow as tf

        versions.update(tensorflow=tf.__version__, keras=keras.__version__)
    versions["openvino"] = engines.openvino_version() or "not installed"
    info.update(platform=platform.platform(), versions=versions,
                environment={k: os.environ[k] for k in THREAD_ENV if k in os.environ})
    bf16 = {}
    for engine in engines.ENGINES:
        try:
            bf16[engine] = engines.bf16_support(engine)[1]
        except engines.EngineUnavailableError as exc:
            bf16[engine] = str(exc)
    info["bf16"] = bf16
    return info


def _fmt(value, spec: str = "") -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
        return "—"
    return format(value, spec) if spec else str(value)


def targets(frame: pd.DataFrame, budget_gib: float = 8.0) -> list[tuple[str, str, str]]:
    """The performance targets, what was measured, and whether each is met.

    Parameters
    ----------
    frame : pandas.DataFrame
        Rows of :data:`CSV_COLUMNS`.
    budget_gib : float
        The clustering memory budget no algorithm may exceed at the largest size.

    Returns
    -------
    list of (target, measured, verdict)
    """
    out = []
    ext = frame[frame["section"] == "extraction"]
    ok = ext[ext["status"] == "ok"]
    for name in ok["model"].unique():
        m = ok[ok["model"] == name]
        weights = m["weights"].iloc[0]
        close = m[(m["path"] != "baseline") & (m["min_cosine"] >= COSINE_TARGET)]
        if not close.empty:
            best = close.loc[close["speedup_vs_baseline"].idxmax()]
            measured = (f"{best['path']}: {best['speedup_vs_baseline']:.2f}x, min cosine {best['min_cosine']:.5f}"
                        f" ({weights} weights)")
            verdict = _verdict(best["speedup_vs_baseline"] >= 3)
            if verdict == "met" and weights == "none":
                # an untrained network's features say little about the trained one's in bf16
                verdict = "fast enough; fidelity unverified (random weights)"
            out.append((f"{name}: fastest path with every image at cosine >= {COSINE_TARGET} is >= 3x the "
                        "baseline", measured, verdict))
        # the project's default path is the one the pipeline runs (make, notebook 02); the
        # library's reference (extract_features' default) is a row of the table, not a target
        for _, row in m[m["role"].fillna("").str.contains("make default")].iterrows():
            speed = float(row["speedup_vs_baseline"])
            out.append((f"{name}: default path >= 1.25x the baseline ({row['path']}, the pipeline's default)",
                        f"{speed:.2f}x", _verdict(speed >= 1.25)))
        fastest = m[m["path"] != "baseline"]["forward_images_per_s"].max()
        decode = frame[(frame["section"] == "decoding") & (frame["input_size"] == m["input_size"].iloc[0])]
        if not decode.empty and fastest and not np.isnan(fastest):
            ratio = float(decode["images_per_s"].iloc[0]) / fastest
            out.append((f"{name}: decoding >= 3x faster than the fastest forward pass",
                        f"{decode['images_per_s'].iloc[0]:.0f} vs {fastest:.0f} images/s = {ratio:.2f}x",
                        _verdict(ratio >= 3)))
    suite = frame[(frame["section"] == "suite") & (frame["algorithm"] == "(whole suite)")]
    if not suite.empty:
        s = suite.iloc[0]
        if s["status"] == "ok":
            out.append((f"whole clustering suite at n={int(s['n']):,} under 60 s", f"{s['seconds']:.1f} s",
                        _verdict(s["seconds"] < 60)))
        else:
            out.append((f"whole clustering suite at n={int(s['n']):,} under 60 s", s["status"], "not met"))
    clus = frame[frame["section"] == "clustering"]
    if not clus.empty:
        top = int(clus["n"].max())
        at_top = clus[clus["n"] == top]
        oom = at_top[at_top["status"].astype(str).str.contains("out of memory|signal 9", regex=True)]
        over = at_top[at_top["peak_rss_mib"].fillna(0) > budget_gib * 1024]
        slow = at_top[at_top["status"].astype(str).str.startswith(("timed out", "not run"))]
        measured = (f"{len(oom)} out of memory, {len(over)} above {budget_gib:g} GiB peak, "
                    f"largest peak {at_top['peak_rss_mib'].max():.0f} MiB; {len(slow)} stopped by the time cap")
        out.append((f"n={top:,}: nothing runs out of memory ({budget_gib:g} GiB budget)", measured,
                    _verdict(oom.empty and over.empty)))
    return out


def _verdict(ok: bool) -> str:
    return "met" if ok else "not met"


def write_report(rows: list[dict], out: str | os.PathLike, *, machine: dict, command: str, data_note: str,
                 started: float, load_before: tuple, load_after: tuple, budget_gib: float = 8.0
                 ) -> tuple[Path, Path]:
    """Write ``<out>.md`` and ``<out>.csv`` atomically; return their paths.

    When ``out`` is an existing folder, they are ``<out>/benchmarks.md`` and
    ``<out>/benchmarks.csv``.
    """
    out = Path(out)
    if out.is_dir():
        out = out / "benchmarks"
    csv_path, md_path = out.with_name(out.name + ".csv"), out.with_name(out.name + ".md")
    frame = pd.DataFrame(rows, columns=CSV_COLUMNS)
    atomic.write_csv(frame, csv_path)
    lines = [
        "# Benchmarks",
        "",
        f"Written by `{command}` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC in "
        f"{(time.perf_counter() - started) / 60:.1f} min. Every figure is also in `{csv_path.name}`.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        f"| CPU | {machine['cpu']} |",
        f"| cores | {machine['logical_cores']} logical, {machine['usable_cores']} usable |",
        f"| flags | {' '.join(machine['flags']) or '—'} |",
        f"| AMX | {'yes' if machine['amx'] else 'no'} |",
        f"| bf16 | TensorFlow: {machine['bf16']['tensorflow']}; OpenVINO: {machine['bf16']['openvino']} |",
        f"| memory | {_fmt(machine['memory_gib'])} GiB |",
        f"| load average (1 min) | {load_before[0]:.2f} at the start, {load_after[0]:.2f} at the end |",
        f"| platform | {machine['platform']} |",
        f"| thread settings | {', '.join(f'{k}={v}' for k, v in machine.get('environment', {}).items()) or 'library defaults'} |",
        f"| versions | {', '.join(f'{k} {v}' for k, v in machine['versions'].items())} |",
        "",
        "A load average above the core count means other processes shared the CPU while this ran: "
        "paths are timed in interleaved rounds so that they share it alike.",
        "",
    ]
    ext = frame[frame["section"] == "extraction"]
    if not ext.empty:
        lines += ["## Feature extraction", "", data_note, "",
                  "| model | weights | path | role | images/s | × baseline | forward images/s "
                  "| min cosine vs fp32 | centred | max rel. error | rerun identical | note |",
                  "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
        for _, r in ext.iterrows():
            if r["status"] != "ok":
                lines.append(f"| {r['model']} | {r['weights']} | {r['path']} | {_fmt(r['role'])} "
                             f"| — | — | — | — | — | — | — | {r['status']}: {r['note']} |")
                continue
            det = "yes" if r["deterministic"] is True else ("no" if r["deterministic"] is False else "—")
            lines.append(
                f"| {r['model']} | {r['weights']} | {r['path']} | {_fmt(r['role'])} "
                f"| {_fmt(r['images_per_s'], '.1f')} | {_fmt(r['speedup_vs_baseline'], '.2f')} "
                f"| {_fmt(r['forward_images_per_s'], '.1f')} | {_fmt(r['min_cosine'], '.6f')} "
                f"| {_fmt(r['min_centred_cosine'], '.4f')} | {_fmt(r['max_rel_error'], '.2g')} | {det} "
                f"| {r['note']} |")
        lines += [
            "",
            "*images/s*: end to end, from the files to the features, median of the rounds. *× baseline*: "
            "the median over rounds of the baseline's time in that round divided by the path's, so that a "
            "change of load between rounds does not count as speed. *forward "
            "images/s*: the same run counting only the time in the forward pass (decoding runs meanwhile in "
            "two threads). *min cosine*, *max rel. error*: the least similar image's cosine with the fp32 "
            "TensorFlow features (`tensorflow-fp32`), and the largest per-image `max|f − r| / max|r|`. "
            "*centred*: the least cosine after subtracting the fp32 features' mean image from both, which "
            "compares only what tells images apart (an untrained network's features of different images "
            "can have cosines near 0.995 to each other, which makes plain cosines flatter it). "
            "*baseline*: `tf.keras.preprocessing.image.ImageDataGenerator(rescale=1/255)` "
            "(Keras 3 still ships it as a legacy class) with `model.predict`, batch 16: the original study's "
            "pipeline, with other inputs, so it is not scored. Random weights (`none`) time the architecture "
            "exactly (speed does not depend on the weight values); their fidelity figures are those of an "
            "untrained network, not of the ImageNet one.",
            "",
        ]
    dec = frame[frame["section"] == "decoding"]
    if not dec.empty:
        lines += ["## Input decoding", "", "| input size | images/s | note |", "|---:|---:|---|"]
        for _, r in dec.iterrows():
            lines.append(f"| {int(r['input_size'])} | {r['images_per_s']:.1f} | {r['note']} |")
        lines.append("")
    clus = frame[frame["section"] == "clustering"]
    if not clus.empty:
        sizes = sorted(int(n) for n in clus["n"].unique())
        lines += ["## Clustering: fit time and peak memory as n grows", "",
                  "Synthetic 1,280-dimensional features (`cxrcluster.bench.synthetic_features`), prepared as "
                  "configured, one fit (`seeds: 1`) per algorithm and size, each in its own process; peak "
                  "resident memory of that process. Each cell: fit time (wall), CPU time of fitting and scoring, "
                  "peak memory. *sub N*: fitted on a subsample of N, the rest assigned.",
                  "",
                  "| algorithm | " + " | ".join(f"n = {n:,}" for n in sizes) + " |",
                  "|---|" + "---:|" * len(sizes)]
        for name in clus["algorithm"].unique():
            cells = []
            for n in sizes:
                hit = clus[(clus["algorithm"] == name) & (clus["n"] == n)]
                cells.append(_cluster_cell(hit.iloc[0]) if not hit.empty else "—")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    suite = frame[frame["section"] == "suite"]
    if not suite.empty:
        whole = suite[suite["algorithm"] == "(whole suite)"].iloc[0]
        lines += [f"## The whole suite at n = {int(whole['n']):,}", ""]
        if whole["status"] == "ok":
            lines.append(f"{whole['seconds']:.1f} s in total ({whole['cpu_s']:.1f} CPU s), peak "
                         f"{whole['peak_rss_mib']:.0f} MiB ({whole['note']}). Fit time of each algorithm:")
            lines += ["", "| algorithm | seconds | status |", "|---|---:|---|"]
            for _, r in suite[suite["algorithm"] != "(whole suite)"].iterrows():
                lines.append(f"| {r['algorithm']} | {r['seconds']:.2f} | {str(r['status'])[:100]} |")
        else:
            lines.append(f"{whole['status']}.")
        lines.append("")
    goals = targets(frame, budget_gib)
    if goals:
        lines += ["## Targets", "", "| target | measured | |", "|---|---|---|"]
        lines += [f"| {t} | {m} | {v} |" for t, m, v in goals]
        lines.append("")
    with atomic.atomic_open(md_path, "w") as fh:
        fh.write("\n".join(lines))
    return md_path, csv_path


def _cluster_cell(r: pd.Series) -> str:
    status = str(r["status"])
    if status == "ok":
        sub = f", sub {int(r['subsample']):,}" if pd.notna(r["subsample"]) and r["subsample"] else ""
        return f"{r['seconds']:.1f} s ({r['cpu_s']:.1f} CPU s), {r['peak_rss_mib']:.0f} MiB{sub}"
    if status.startswith("skipped"):
        return "skipped (budget)"
    if status == "not run":
        return f"not run ({r['note']})"
    peak = f", {r['peak_rss_mib']:.0f} MiB so far" if pd.notna(r["peak_rss_mib"]) else ""
    return status.split(":")[0] + peak


# ---------------------------------------------------------------- command line


def default_data_dir() -> Path:
    """``<project>/../shared/data/cxr-sample`` when present, else the demo data (written if missing)."""
    if SHARED_SAMPLE_DIR.is_dir():
        return SHARED_SAMPLE_DIR
    if not demo.is_synthetic(DEMO_DATA_DIR):
        log(f"writing the synthetic demo data to {DEMO_DATA_DIR}")
        demo.write_demo_dataset(DEMO_DATA_DIR)
    return DEMO_DATA_DIR


def select_images(data_dir: str | os.PathLike, limit: int | None = None) -> list[Path]:
    """Every image of the dataset in labels order, or ``limit`` of them spread evenly across it."""
    labels = data.scan_dataset(data_dir)
    paths = data.resolve_image_paths(labels, data_dir)
    if limit and limit < len(paths):
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, limit).round().astype(int)]
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cxrcluster.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="reports/benchmarks",
                        help="output path without suffix: writes <out>.md and <out>.csv, or "
                             "<out>/benchmarks.md and .csv when <out> is a folder (default %(default)s)")
    parser.add_argument("--data-dir", help="images to extract (default: ../shared/data/cxr-sample when present, "
                                           "else data/demo, written if missing)")
    parser.add_argument("--models", nargs="+", help=f"backbones (default: {' '.join(DEFAULT_MODELS)})")
    parser.add_argument("--weights", default="auto",
                        help="auto (ImageNet when in Keras' cache, else random), imagenet, none (default %(default)s)")
    parser.add_argument("--images", type=int, help="use this many images, spread over the dataset (default: all)")
    parser.add_argument("--repeats", type=int, help="timed rounds per path; the median is reported (default 3)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="decoding threads (default %(default)s)")
    parser.add_argument("--pipeline-default", default=PIPELINE_DEFAULT, choices=list(PATHS),
                        help="the path make runs, ENGINE-PRECISION (default %(default)s, the Makefile's)")
    parser.add_argument("--sizes", type=int, nargs="+", help="clustering sizes (default 1000 5000 20000 50000)")
    parser.add_argument("--suite-n", type=int, help=f"size of the whole-suite run (default {SUITE_N}; 0: none)")
    parser.add_argument("--time-cap", type=float, default=None,
                        help="seconds per algorithm and size before it is stopped (default 90)")
    parser.add_argument("--config", default=str(PROJECT_ROOT / "config" / "clustering.yaml"))
    parser.add_argument("--algorithms", nargs="+",
                        help="only these clustering algorithms, in the scaling table and the suite (default: all)")
    parser.add_argument("--skip", choices=["extraction", "clustering"], action="append", default=[],
                        help="leave a part out (repeatable)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 8 images, one round, clustering at n = 200 and 400, suite at 300")
    parser.add_argument("--cluster-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cluster_worker:
        _cluster_worker(args.cluster_worker)
        return

    started = time.perf_counter()
    load_before = os.getloadavg()
    quick = args.quick
    model_names = models.expand_models(args.models or list(DEFAULT_MODELS))
    repeats = args.repeats or (1 if quick else 3)
    sizes = args.sizes or (QUICK_SIZES if quick else DEFAULT_SIZES)
    suite_n = args.suite_n if args.suite_n is not None else (300 if quick else SUITE_N)
    time_cap = args.time_cap or (60.0 if quick else 90.0)
    limit = args.images or (8 if quick else None)
    data_dir = resolve(args.data_dir) if args.data_dir else default_data_dir()
    command = "python -m cxrcluster.bench " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = describe_machine()
    log(f"{machine['cpu']}, {machine['usable_cores']} cores, flags {' '.join(machine['flags'])}")

    rows: list[dict] = []
    data_note = ""
    if "extraction" not in args.skip:
        paths = select_images(data_dir, limit)
        synthetic = " (synthetic demo data)" if demo.is_synthetic(data_dir) else ""
        data_note = (f"{len(paths)} images from `{data_dir}`{synthetic}, batch {args.batch_size}, "
                     f"{args.workers} decoding threads, {repeats} timed round(s) after a warm-up.")
        log(f"extraction: {data_note}")
        rows += bench_extraction(paths, model_names, weights=args.weights, repeats=repeats,
                                 batch_size=args.batch_size, workers=args.workers,
                                 pipeline_default=args.pipeline_default)
    if "clustering" not in args.skip:
        rows += bench_clustering(resolve(args.config), sizes, time_cap=time_cap, suite_n=suite_n or None,
                                 suite_time_cap=max(600.0, time_cap), algorithms=args.algorithms)
    from cxrcluster import clustering

    budget = float(clustering.load_config(resolve(args.config))["memory_budget_gb"])
    md, csv = write_report(rows, resolve(args.out), machine=machine, command=command, data_note=data_note,
                           started=started, load_before=load_before, load_after=os.getloadavg(),
                           budget_gib=budget)
    log(f"wrote {md} and {csv}")


if __name__ == "__main__":
    main()
