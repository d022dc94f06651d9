"""The extraction path for the machine at hand, and lower precision judged on the user's own images.

:func:`plan` applies a fixed rule to what this machine is (its CPU flags and
what OpenVINO reports it supports); it takes no timing, so the same machine
always makes the same choice and reruns stay byte-identical. ``ENGINE`` and
``PRECISION`` (``make``; notebook 02's ``engine`` and ``precision``) force a
path; ``auto`` applies the rule:

1. **Engine**: OpenVINO when installed, else TensorFlow. ``make bench``
   measured OpenVINO fp32 ahead of TensorFlow fp32 on ResNet50 and
   MobileNetV2-0.35 on the machines in the README, with features within
   about 1e-5 of TensorFlow's.
2. **Precision**: the candidates, in this order, are
   bf16 where the CPU has bf16 units (``avx512_bf16``, ``amx_bf16``) and the
   engine supports it (:func:`cxrcluster.engines.bf16_support`), then int8
   (OpenVINO with NNCF) where the CPU has integer dot-product units
   (``avx512_vnni``, ``avx_vnni``, ``amx_int8``), then fp32. bf16 comes
   first because it moves features less; fp32 is always the last resort.
3. **The check**: a lower-precision candidate is used only if it passes
   :func:`fidelity` against fp32 of the same engine on a seeded sample of the
   dataset's own images (:data:`CHECK_IMAGES`; int8 is calibrated on another
   seeded sample, :data:`CALIBRATION_IMAGES`; no labels are used): the
   k-means clustering of both agrees to :data:`MIN_KMEANS_ARI` or better and
   the median centred cosine of the features is at least
   :data:`MIN_MEDIAN_CENTRED_COSINE`. The first candidate that passes is used;
   if none does, fp32, and the run says so. Why these thresholds: on
   MobileNetV2-0.35's ImageNet features of the 300 real X-rays, int8 (NNCF's
   defaults, on a CPU without VNNI) reached a median centred cosine of 0.83
   and a k-means ARI of 0.85 to fp32, and bf16 a minimum centred cosine of
   0.88: visibly different clusterings, which the check must refuse; 0.98 ARI
   is the agreement the project asks of a path before its figures are
   interchangeable with fp32's (about one image in a hundred and fifty
   changing cluster at three clusters).
4. **On a Dask cluster** ``auto`` means fp32: the workers' CPUs may differ
   from this one, where the check would run. A forced bf16 runs on the
   workers; a forced int8 is refused (the quantised model lives in this
   machine's cache).

A forced bf16 or int8 is checked as well, and used whatever the check says,
with a warning when it fails. A model from a file that OpenVINO cannot convert
runs on TensorFlow, with the converter's message in the notes. The choice, the rule's evidence and every
check's figures go into the features' sidecar (``engine_choice``). Checks and
quantised models are cached under ``<cache_dir>/engines/``, keyed by the
model, its weights' SHA-256, library versions, the dataset (paths, sizes,
modification times), seed, batch size and CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxrcluster import atomic, decoded, engines

#: Requested values that apply the rule.
AUTO = "auto"

#: Images of the seeded sample that lower precision is compared with fp32 on.
CHECK_IMAGES = 256

#: Images of the seeded sample that NNCF calibrates int8 on (disjoint from the check's when the
#: dataset has room for both).
CALIBRATION_IMAGES = 128

#: Below this many readable images lower precision is not checked, and fp32 runs.
MIN_CHECK_IMAGES = 48

#: A lower-precision path must reproduce fp32's k-means clustering at least this well (ARI).
MIN_KMEANS_ARI = 0.98

#: ... and keep the median image's centred cosine to fp32 at least this high.
MIN_MEDIAN_CENTRED_COSINE = 0.99

#: Version of the check's definition; part of the cache key.
CHECK_VERSION = 1


@dataclass
class Plan:
    """What the rule says for this machine: the engine and the precisions to try, in order."""

    engine: str
    candidates: list[str]
    forced: bool
    requested: dict
    evidence: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def plan(engine: str = AUTO, precision: str = AUTO, on_cluster: bool = False) -> Plan:
    """Apply the rule of the module docstring to this machine.

    Parameters
    ----------
    engine : {"auto", "openvino", "tensorflow"}
    precision : {"auto", "fp32", "bf16", "int8"}
    on_cluster : bool
        Extraction runs on a Dask cluster.

    Returns
    -------
    Plan
        ``candidates`` ends with ``"fp32"`` unless a precision was forced.

    Raises
    ------
    ValueError
        Unknown engine or precision.
    EngineUnavailableError
        A forced engine or precision that cannot run here
        (:func:`cxrcluster.engines.check_engine`), or int8 on a cluster.
    """
    if engine != AUTO and engine not in engines.ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of: {AUTO}, {', '.join(engines.ENGINES)}")
    if precision != AUTO and precision not in engines.PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of: {AUTO}, {', '.join(engines.PRECISIONS)}")
    requested = {"engine": engine, "precision": precision}
    notes = []
    cpu = engines.describe_cpu()
    evidence: dict = {"cpu": cpu["cpu"], "cpu_flags": cpu["flags"]}
    if engine == AUTO:
        engine = "openvino" if engines.openvino_version() else "tensorflow"
        notes.append("engine openvino: installed" if engine == "openvino"
                     else "engine tensorflow: openvino is not installed")
    if engine == "openvino":
        evidence["openvino_capabilities"] = engines.openvino_capabilities()
    if precision != AUTO:
        if on_cluster and precision == "int8":
            raise engines.EngineUnavailableError(
                "precision int8 is not available on a Dask cluster yet: the quantised model is kept in this "
                "machine's cache, not on the workers. Use PRECISION=fp32 or bf16 with SCHEDULER.")
        engines.check_engine(engine, precision)
        return Plan(engine, [precision], True, requested, evidence, notes + [f"precision {precision}: forced"])
    if on_cluster:
        return Plan(engine, ["fp32"], False, requested, evidence,
                    notes + ["precision fp32: on a Dask cluster the rule does not choose lower precision"])
    candidates = []
    bf16, why_bf16 = engines.bf16_support(engine)
    evidence["bf16"] = why_bf16
    if bf16:
        candidates.append("bf16")
    if engine == "openvino":
        int8, why_int8 = engines.int8_support()
        evidence["int8"] = why_int8
        try:
            engines.check_engine(engine, "int8")
        except engines.EngineUnavailableError as exc:
            int8, evidence["int8"] = False, f"{why_int8}; {exc}"
        if int8:
            candidates.append("int8")
    else:
        evidence["int8"] = "engine tensorflow runs no int8"
    notes.append(f"candidates {', '.join(candidates + ['fp32'])}: "
                 + ("lower precision is used only if it passes the check on this dataset" if candidates
                    else "this CPU has neither bf16 nor integer dot-product units"))
    return Plan(engine, candidates + ["fp32"], False, requested, evidence, notes)


def sample_rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The seeded calibration and check rows of a dataset of ``n`` images (sorted).

    One permutation of the rows: calibration takes the first
    :data:`CALIBRATION_IMAGES`, the check the next :data:`CHECK_IMAGES`. A
    dataset too small for both gives the check the rows calibration did not
    take, or, under 64 of those, every row (then they overlap, which the
    record says).
    """
    order = np.random.default_rng([seed, 1600]).permutation(n)
    calibration = order[:CALIBRATION_IMAGES]
    check = order[CALIBRATION_IMAGES:CALIBRATION_IMAGES + CHECK_IMAGES]
    if len(check) < 64:
        check = order[:CHECK_IMAGES]
    return np.sort(calibration), np.sort(check)


def fidelity(reference: np.ndarray, candidate: np.ndarray, n_clusters: int | None = 3, seed: int = 0) -> dict:
    """How far a candidate path's features are from the fp32 reference's, and whether that passes.

    The check of lower precision (:func:`select`) and the benchmark's fidelity
    columns (``benchmarks``) both come from here.

    Parameters
    ----------
    reference, candidate : numpy.ndarray, shape (n, d)
        fp32 features and the candidate's, of the same images, in the same order.
    n_clusters : int or None
        Clusters of the k-means compared (the dataset's classes). None leaves
        the k-means out: no ``kmeans_*`` keys, and ``passed`` is judged on the
        median centred cosine alone.
    seed : int
        Seed of the PCA and the k-means.

    Returns
    -------
    dict
        ``images``; ``min_cosine`` (the least per-image cosine similarity
        to fp32; a pair of all-zero rows counts as 1, one all-zero row
        against a non-zero one as 0); ``max_relative_error`` (the largest
        per-image ``max|c - r| / max|r|``, three significant digits: pooled
        features are often zero or tiny, so element-wise ratios would measure
        only the smallest activations; an all-zero reference row gives the
        absolute error); ``min_centred_cosine``, ``median_centred_cosine``
        (each image's cosine to fp32 after subtracting fp32's mean image from
        both, which compares only what tells images apart: an untrained
        network's features of different images can have plain cosines near
        0.995 to each other; a row at the mean counts as 1); with
        ``n_clusters``, ``kmeans_ari`` (the ARI of k-means on PCA to 50
        dimensions of each, ``n_init=10``, seeded: the pipeline's default
        preparation and its most-used algorithm) and
        ``kmeans_matched_change`` (percent of images whose cluster differs
        after matching the clusters one-to-one, the project's label change
        with fp32's clusters as the labels); ``passed`` (the ARI at least
        :data:`MIN_KMEANS_ARI` and the median centred cosine at least
        :data:`MIN_MEDIAN_CENTRED_COSINE`), ``thresholds``, ``n_clusters``
        and ``seed``. When fp32's features of these images take too few
        distinct values to compare (fewer than ``n_clusters + 1``, or 2
        without k-means), the centred and k-means figures are None,
        ``passed`` is False and ``note`` says why. Cosines are rounded to six
        decimals.

    Raises
    ------
    ValueError
        The two are not of one shape, or have no more than ``n_clusters``
        rows (no rows, without k-means).
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import adjusted_rand_score

    from cxrcluster import metrics

    ref = np.asarray(reference, dtype=np.float64)
    got = np.asarray(candidate, dtype=np.float64)
    fewest = 1 if n_clusters is None else n_clusters + 1
    if ref.shape != got.shape or ref.ndim != 2 or len(ref) < fewest:
        raise ValueError(f"fidelity needs two feature sets of one shape with at least {fewest} rows, "
                         f"got {ref.shape} and {got.shape}")
    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1)
    error = np.abs(got - ref).max(axis=1)
    row_scale = np.abs(ref).max(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        plain = np.where(norms > 0, (got * ref).sum(axis=1) / norms,
                         np.where((got == ref).all(axis=1), 1.0, 0.0))
        relative = np.where(row_scale > 0, error / row_scale, error)
    thresholds = {"median_centred_cosine": MIN_MEDIAN_CENTRED_COSINE}
    if n_clusters is not None:
        thresholds = {"kmeans_ari": MIN_KMEANS_ARI, **thresholds}
    out = {"images": len(ref), "min_cosine": round(float(plain.min()), 6),
           "max_relative_error": float(f"{float(relative.max()):.3g}")}
    settings = {"thresholds": thresholds, "n_clusters": n_clusters, "seed": seed}

    scale = np.abs(ref).max()  # relative: an untrained network's features can all be near 1e-11
    distinct = len(np.unique((ref / scale).round(6), axis=0)) if scale > 0 else 1
    if distinct < max(fewest, 2):  # nothing to compare: the check cannot fail, so it cannot pass
        empty = {"min_centred_cosine": None, "median_centred_cosine": None}
        if n_clusters is not None:
            empty.update(kmeans_ari=None, kmeans_matched_change=None)
        return {**out, **empty, "passed": False,
                "note": f"fp32's features of these images take {distinct} distinct value(s): nothing to compare",
                **settings}
    mean = ref.mean(axis=0)
    a, b = ref - mean, got - mean
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.where(norms > 0, (a * b).sum(axis=1) / norms, 1.0)
    median = float(np.median(cosine))
    out.update(min_centred_cosine=round(float(cosine.min()), 6), median_centred_cosine=round(median, 6))
    if n_clusters is None:
        return {**out, "passed": bool(median >= MIN_MEDIAN_CENTRED_COSINE), **settings}

    def kmeans(x: np.ndarray) -> np.ndarray:
        k = min(50, x.shape[1], len(x) - 1)
        reduced = PCA(n_components=k, random_state=seed).fit_transform(x)
        return KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(reduced)

    ka, kb = kmeans(ref), kmeans(got)
    ari = float(adjusted_rand_score(ka, kb))
    change = metrics.matched_label_change(ka.astype(str), kb)
    out.update(kmeans_ari=round(ari, 6), kmeans_matched_change=round(change, 3))
    return {**out, "passed": bool(ari >= MIN_KMEANS_ARI and median >= MIN_MEDIAN_CENTRED_COSINE), **settings}


def _cache_key(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def dataset_key(paths: Sequence[os.PathLike | str]) -> str:
    """A SHA-256 of the image paths, sizes and modification times (changes when the data does)."""
    digest = hashlib.sha256()
    decoded.stamp_files(digest, paths)
    return digest.hexdigest()


def select(model, backbone, the_plan: Plan, paths: Sequence[Path], *, batch_size: int, seed: int,
           n_clusters: int, weights_sha256: str | None, sample_images, cache_dir: str | os.PathLike | None
           ) -> tuple[engines.Forward, dict]:
    """The forward pass to extract with, after checking the plan's lower-precision candidates.

    Parameters
    ----------
    model, backbone
        The built Keras model and its :class:`cxrcluster.models.Backbone`.
    the_plan : Plan
    paths : sequence of pathlib.Path
        The whole dataset, in row order.
    batch_size, seed, n_clusters : int
    weights_sha256 : str or None
        Of the weights (None for random weights), for the cache key.
    sample_images : callable
        ``sample_images(rows) -> (images, errors)``: decoded inputs of the
        given rows (from the decode cache when there is one).
    cache_dir : path-like, optional
        Where checks and quantised models are kept (``<cache_dir>/engines``).

    Returns
    -------
    forward : cxrcluster.engines.Forward
    record : dict
        The ``engine_choice`` of the sidecar.
    """
    preprocess = backbone.preprocess_input()
    size = backbone.input_size
    the_plan, converted = _convertible(model, backbone, the_plan, preprocess, batch_size)

    def fp32_forward() -> engines.Forward:  # the one _convertible compiled, if any, is used rather than made again
        nonlocal converted
        forward, converted = converted, None
        return forward or engines.make_forward(model, preprocess, batch_size, size, the_plan.engine, "fp32")

    record = {"rule": "cxrcluster.extraction_path (README: choosing the extraction path)",
              "requested": the_plan.requested, "evidence": the_plan.evidence, "notes": list(the_plan.notes),
              "checks": []}
    lower = [c for c in the_plan.candidates if c != "fp32"]
    if not lower:
        forward = fp32_forward()
        record.update(engine=the_plan.engine, precision="fp32", reason="fp32: " + the_plan.notes[-1].split(": ", 1)[1])
        return forward, record

    calibration_rows, check_rows = sample_rows(len(paths), seed)
    check_images, errors = sample_images(check_rows)
    readable = np.array([e is None for e in errors])
    check_images = check_images[readable]
    if len(check_images) < MIN_CHECK_IMAGES:
        too_few = (f"{len(check_images)} readable images are too few to check {', '.join(lower)} against fp32 "
                   f"(at least {MIN_CHECK_IMAGES})")
        if the_plan.forced and lower[0] != "int8":  # int8 needs calibration images as well
            warnings.warn(f"precision {lower[0]} forced and unchecked: {too_few}", stacklevel=2)
            forward = engines.make_forward(model, preprocess, batch_size, size, the_plan.engine, lower[0])
            record.update(engine=the_plan.engine, precision=lower[0], reason=f"{lower[0]}: forced; {too_few}")
            return forward, record
        if the_plan.forced:
            raise ValueError(f"precision int8 was forced, but {too_few}")
        forward = fp32_forward()
        record.update(engine=the_plan.engine, precision="fp32", reason=f"fp32: {too_few}")
        return forward, record
    reference_forward = fp32_forward()
    reference = reference_forward(check_images)
    overlap = bool(np.intersect1d(calibration_rows, check_rows).size)
    key_parts = {"model": backbone.name, "weights_sha256": weights_sha256, "versions": _versions(),
                 "dataset": dataset_key(paths), "seed": seed, "batch_size": batch_size,
                 "cpu": the_plan.evidence.get("cpu"), "cpu_flags": the_plan.evidence.get("cpu_flags"),
                 "engine": the_plan.engine, "check_version": CHECK_VERSION, "n_clusters": n_clusters,
                 "thresholds": [MIN_KMEANS_ARI, MIN_MEDIAN_CENTRED_COSINE]}
    if getattr(backbone, "from_file", False):  # its feature layer and preprocessing change the features too
        key_parts["model_file"] = backbone.describe()
    for candidate in lower:
        key = _cache_key(precision=candidate, **key_parts)
        folder = Path(cache_dir) / "engines" / f"{backbone.name}-{the_plan.engine}-{candidate}-{key[:16]}" \
            if cache_dir is not None else None
        calibration = None
        if candidate == "int8" and not (folder is not None and (folder / "int8" / "model.xml").is_file()):
            calibration, cal_errors = sample_images(calibration_rows)
            calibration = calibration[np.array([e is None for e in cal_errors])]
        forward = engines.make_forward(model, preprocess, batch_size, size, the_plan.engine, candidate,
                                       calibration=calibration,
                                       int8_dir=folder / "int8" if folder is not None else None)
        check = _cached_check(folder)
        if check is None:
            check = fidelity(reference, forward(check_images), n_clusters=n_clusters, seed=seed)
            check.update(precision=candidate, check_rows=len(check_rows),
                         calibration_rows=len(calibration_rows) if candidate == "int8" else 0,
                         overlaps_calibration=overlap and candidate == "int8")
            if folder is not None:
                atomic.write_json(check, folder / "check.json")
        record["checks"].append(check)
        verdict = "passed" if check["passed"] else "failed"
        if check["kmeans_ari"] is None:
            line = f"{backbone.name} {the_plan.engine} {candidate}: not judged ({check['note']}), {verdict}"
        else:
            line = (f"{backbone.name} {the_plan.engine} {candidate} against fp32 on {check['images']} images of "
                    f"this dataset: k-means ARI {check['kmeans_ari']:.4f} (needs {MIN_KMEANS_ARI}), median "
                    f"centred cosine {check['median_centred_cosine']:.4f} (needs {MIN_MEDIAN_CENTRED_COSINE}), "
                    f"{verdict}")
        print(line, file=sys.stdout)
        if check["passed"] or the_plan.forced:
            if not check["passed"]:
                warnings.warn(f"{line}; used anyway because precision {candidate} was forced", stacklevel=2)
            record.update(engine=the_plan.engine, precision=candidate,
                          reason=f"{candidate} {verdict} the check" + (" (forced)" if the_plan.forced else ""))
            return forward, record
        del forward
    record.update(engine=the_plan.engine, precision="fp32",
                  reason=f"fp32: {', '.join(lower)} failed the check on this dataset")
    print(f"{backbone.name}: extracting in fp32 ({record['reason']})")
    return reference_forward, record


def _convertible(model, backbone, the_plan: Plan, preprocess, batch_size: int
                 ) -> tuple[Plan, engines.Forward | None]:
    """The plan, or TensorFlow's when OpenVINO cannot convert a model from a file (the reason in its notes),
    and the OpenVINO fp32 forward pass compiled to find out (None when none was).

    The registered networks all convert (tests/test_engines.py); a user's model may hold operations
    OpenVINO does not know. Forced OpenVINO still fails, with OpenVINO's message.
    """
    if the_plan.engine != "openvino" or not getattr(backbone, "from_file", False):
        return the_plan, None
    try:
        converted = engines.make_forward(model, preprocess, batch_size, backbone.input_size, "openvino", "fp32")
    except engines.EngineUnavailableError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the converter raises, TensorFlow runs the model
        if the_plan.requested.get("engine") == "openvino":
            raise
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        warnings.warn(f"OpenVINO could not convert {backbone.name} ({reason}); extracting with TensorFlow",
                      stacklevel=3)
        candidates = [c for c in the_plan.candidates if c != "int8"]
        if the_plan.forced and not candidates:
            raise
        return Plan("tensorflow", candidates or ["fp32"], the_plan.forced, the_plan.requested,
                    {**the_plan.evidence, "openvino_conversion": reason},
                    the_plan.notes + [f"engine tensorflow: OpenVINO could not convert {backbone.name} ({reason})"]
                    ), None
    return the_plan, converted


def _cached_check(folder: Path | None) -> dict | None:
    if folder is None or not (folder / "check.json").is_file():
        return None
    try:
        return json.loads((folder / "check.json").read_text())
    except (OSError, ValueError):
        return None


def _versions() -> dict:
    import keras
    import tensorflow as tf

    versions = {"tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__,
                "openvino": engines.openvino_version()}
    try:
        import nncf
        import sklearn

        versions.update(nncf=nncf.__version__, sklearn=sklearn.__version__)
    except ImportError:
        pass
    return versions
