"""Running the clustering suite: every enabled algorithm on one model's features, scored.

:func:`run_suite` checks the configuration
(:func:`cxrcluster.clustering.config.validate_config`), prepares the features
once per distinct preparation (:func:`cxrcluster.clustering.preparation.prepare_features`),
runs each enabled algorithm of :data:`cxrcluster.clustering.registry.ALGORITHMS`
under the memory budget, once per seed when it is stochastic or subsampled
(:func:`derive_seeds`), picks the run to report without the labels
(:func:`cxrcluster.clustering.verdict.choose_representative`), scores it with
:func:`cxrcluster.metrics.score_clustering` and its chance level
(:func:`cxrcluster.metrics.chance_label_change`), and names it degenerate when
it is not a result (:func:`cxrcluster.clustering.verdict.degenerate_reason`),
into a table of :data:`RESULT_COLUMNS`.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import pandas as pd
from sklearn.metrics import pairwise_distances_argmin
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from cxrcluster import metrics
from cxrcluster.clustering.config import RUNNER_KEYS, validate_config
from cxrcluster.clustering.preparation import prepare_features
from cxrcluster.clustering.registry import (
    ALGORITHMS,
    GIB,
    Algorithm,
    Fit,
    MemoryBudgetExceeded,
    MemoryEstimate,
)
from cxrcluster.clustering.verdict import choose_representative, degenerate_reason, stability

MIN_SUBSAMPLE = 100
"""Fewest images a memory-limited algorithm may be fitted on; below it, it is skipped."""

METRICS = (
    "label_percentage_change",
    "raw_label_change",
    "ari",
    "nmi",
    "purity",
    "silhouette",
    "n_clusters",
    "noise_fraction",
)
SPREAD = ("label_percentage_change", "ari", "nmi")
CHANCE = ("chance_label_change", "chance_p")
"""The run's chance level (:func:`cxrcluster.metrics.chance_label_change`)."""
RESULT_COLUMNS = [
    "model",
    "clustering",
    *METRICS,
    *CHANCE,
    "comparable_silhouette",
    *(f"{m}_{stat}" for m in SPREAD for stat in ("mean", "std")),
    "stability",
    "n_seeds",
    "chosen_by",
    "n_images",
    "n_fitted",
    "n_assigned",
    "preparation",
    "params",
    "wall_time_s",
    "status",
]
"""Columns of the results table, in order."""


def derive_seeds(seed: int, n_seeds: int) -> list[int]:
    """``n_seeds`` independent seeds derived from one base seed (``numpy.random.SeedSequence``)."""
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(n_seeds)]


def run_suite(
    X: np.ndarray,
    labels,
    config: Mapping,
    *,
    model: str = "",
    progress: bool = True,
    background: bool = True,
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Run every enabled algorithm of ``config`` on one model's features and score it.

    Parameters
    ----------
    X : numpy.ndarray, shape (n, d)
        Features of the images, no NaN rows (the caller drops them).
    labels : array-like of str, shape (n,)
        Class of each image.
    config : mapping
        As returned by :func:`load_config` (a plain mapping is validated the same way).
    model : str, default ""
        Recorded in the ``model`` column.
    progress : bool, default True
        Show a progress bar over the algorithms.
    background : bool, default True
        Compute the algorithms' own preparations (UMAP) in a worker process
        while the algorithms on the shared preparation run (:class:`_Preparations`);
        the results are the same either way.

    Returns
    -------
    results : pandas.DataFrame
        One row per enabled algorithm, in configuration order, with columns
        :data:`RESULT_COLUMNS`: the metrics of
        :func:`cxrcluster.metrics.score_clustering` for the representative
        run (chosen without labels, ``chosen_by``: ``objective``,
        ``agreement`` or ``single run``; its cluster ids are returned and
        written to the label CSVs, so that the table can be recomputed from
        them), ``chance_label_change`` and ``chance_p`` (what the same cluster
        sizes score at random, and how often chance does as well),
        ``comparable_silhouette`` (on the shared preparation, noise counted
        as 0: :func:`cxrcluster.metrics.comparable_silhouette`, comparable
        across algorithms),
        ``*_mean`` and ``*_std`` (over seeds; the std is 0 for a single run),
        ``stability`` (mean pairwise ARI between seeds; NaN for one run),
        ``n_seeds`` (runs made), ``n_images``, ``n_fitted`` and ``n_assigned``
        (images the representative was fitted on, and that joined it by
        nearest exemplar or centroid), ``preparation``
        (:func:`prepare_features`), ``params`` (compact JSON of the parameters
        used, with values chosen from the data, ``seeds``, the chosen
        ``seed`` and, when subsampled, ``subsample`` and ``assign``),
        ``wall_time_s`` (fitting time of all runs, scoring excluded) and
        ``status`` (``ok``, ``degenerate: <reason>`` (a run that is not a
        result; its metrics are kept), ``failed: <reason>`` or
        ``skipped: <reason>``; metrics are NaN when failed or skipped).
    cluster_ids : dict of str to numpy.ndarray
        Cluster ids (``-1`` noise) of the representative run of every
        algorithm whose status is ok or degenerate.
    """
    cfg = validate_config(config)
    X = np.asarray(X, dtype=np.float64)
    labels = np.asarray(labels)
    if X.ndim != 2 or X.shape[0] != labels.shape[0]:
        raise ValueError(f"features of shape {X.shape} for {labels.shape[0]} labels")
    if np.isnan(X).any():
        raise ValueError("features contain NaN; drop those images before clustering")
    n_classes = int(np.unique(labels).size)
    seeds = derive_seeds(cfg["seed"], cfg["seeds"])
    budget = float(cfg["memory_budget_gb"]) * GIB

    names = [name for name, spec in cfg["algorithms"].items() if spec["enabled"]]
    shared_key = _to_json(cfg["preparation"])
    own = {}  # the algorithms' own preparations, one computation each
    for name in names:
        preparation = cfg["algorithms"][name].get("preparation", cfg["preparation"])
        own.setdefault(_to_json(preparation), preparation)
    own.pop(shared_key, None)
    # One thread for every step, here and in the worker: the results do not depend on the machine's
    # core count, and the second core computes the UMAP preparation meanwhile. At 5,228 synthetic
    # images one thread fitted as fast as two or faster (BayesianGaussianMixture 1.25 s against
    # 5.7 s, KMeans 0.06 s against 0.24 s), Spectral alone 15 % slower; with two threads beside
    # the worker, MiniBatchKMeans and BisectingKMeans took 4.5 s instead of 0.1 s.
    with threadpool_limits(1), _Preparations(X, own, cfg["seed"], background=background) as pending:
        prepared = {shared_key: _prepare(X, cfg["preparation"], cfg["seed"])}
        rows, cluster_ids = {}, {}
        # those on the shared preparation first, while the others' are computed
        order = sorted(names, key=lambda n: _to_json(cfg["algorithms"][n].get("preparation", cfg["preparation"]))
                       != shared_key)
        bar = tqdm(order, desc=model or "clustering", unit="algorithm", disable=not progress)
        for name in bar:
            bar.set_postfix_str(name)
            spec = cfg["algorithms"][name]
            key = _to_json(spec.get("preparation", cfg["preparation"]))
            if key not in prepared:
                prepared[key] = pending.result(key)
            X_prepared, description = prepared[key]
            row, clusters = _run_algorithm(name, spec, X_prepared, labels, n_classes, seeds, budget, cfg)
            if clusters is not None:
                shared = prepared[shared_key][0]
                if X_prepared is shared and ALGORITHMS[name].view is None:
                    # the same silhouette computation on the same features: scale the run's own
                    row["comparable_silhouette"] = row["silhouette"] * float(np.mean(clusters != metrics.NOISE))
                else:
                    row["comparable_silhouette"] = metrics.comparable_silhouette(
                        shared, clusters, max_n=cfg["silhouette_max_n"], seed=cfg["seed"])
            rows[name] = {"model": model, "preparation": description, **row}
            if clusters is not None:
                cluster_ids[name] = clusters
    return pd.DataFrame([rows[name] for name in names], columns=RESULT_COLUMNS), \
        {name: cluster_ids[name] for name in names if name in cluster_ids}


class _Preparations:
    """The algorithms' own feature preparations, computed while the suite runs the others.

    With ``background``, each is computed by :func:`prepare_features` in one
    worker process started by ``spawn`` (a fresh interpreter: forking a
    process whose BLAS and OpenMP threads are running can hang), so that
    UMAP's compilation and layout, single-threaded for reproducibility,
    use the second core while the algorithms on the shared preparation use
    the first. The worker computes exactly what the caller would: same
    function, inputs, seed and thread count (:func:`_prepare`). Without
    ``background``, or where no worker process can be started, each is
    computed in this process when first asked for.
    """

    def __init__(self, X: np.ndarray, preparations: Mapping[str, Mapping], seed: int, *, background: bool):
        self._X, self._preparations, self._seed = X, preparations, seed
        self._pool, self._futures = None, {}
        if background and preparations:
            try:
                self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
                self._futures = {key: self._pool.submit(_prepare, X, dict(prep), seed)
                                 for key, prep in preparations.items()}
            except (OSError, BrokenProcessPool):  # no process to be had: compute them here
                self._shutdown()

    def result(self, key: str) -> tuple[np.ndarray, str]:
        """The prepared features and their description for the preparation ``key``."""
        future = self._futures.pop(key, None)
        if future is not None:
            try:
                return future.result()
            except BrokenProcessPool:  # the worker died (out of memory, killed): compute it here
                self._shutdown()
        return _prepare(self._X, dict(self._preparations[key]), self._seed)

    def _shutdown(self, wait: bool = False) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
        self._pool, self._futures = None, {}

    def __enter__(self) -> _Preparations:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        # after a normal end the worker is idle: wait, so that it has exited when the suite returns
        self._shutdown(wait=exc_type is None)


def _prepare(X: np.ndarray, preparation: Mapping, seed: int) -> tuple[np.ndarray, str]:
    """:func:`prepare_features` on one thread, in this process or the worker alike."""
    with threadpool_limits(1):
        return prepare_features(X, dict(preparation), seed=seed)


def _run_algorithm(
    name: str,
    spec: Mapping,
    X: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    seeds: list[int],
    budget: float,
    cfg: Mapping,
) -> tuple[dict, np.ndarray | None]:
    algo = ALGORITHMS[name]
    params = {**algo.defaults, **{k: v for k, v in spec.items() if k not in RUNNER_KEYS}}
    if algo.n_clusters_key and params.get(algo.n_clusters_key) is None:
        params[algo.n_clusters_key] = n_classes
    row = {
        "clustering": name,
        **dict.fromkeys(METRICS, math.nan),
        **dict.fromkeys(CHANCE, math.nan),
        "comparable_silhouette": math.nan,
        **{f"{m}_{stat}": math.nan for m in SPREAD for stat in ("mean", "std")},
        "stability": math.nan,
        "n_seeds": 0,
        "chosen_by": "",
        "n_images": X.shape[0],
        "n_fitted": 0,
        "n_assigned": 0,
        "params": _to_json(params),
        "wall_time_s": 0.0,
    }
    fit_time = 0.0
    try:
        view = algo.view(X) if algo.view else X
        n, d = view.shape
        fitted_n = min(n, spec.get("max_samples") or n)
        need = algo.memory(fitted_n, d, params) if algo.memory else 0.0
        if need > budget:
            if algo.over_budget == "skip":
                raise MemoryBudgetExceeded(_over_budget(need, fitted_n, budget))
            fitted_n = _largest_within(algo.memory, d, params, budget, fitted_n)
            if fitted_n < MIN_SUBSAMPLE:
                raise MemoryBudgetExceeded(
                    _over_budget(need, n, budget) + f" and {MIN_SUBSAMPLE} images do not fit"
                )
        subsampled = fitted_n < n
        run_seeds = seeds if (subsampled or algo.is_stochastic(params)) else seeds[:1]

        runs, used = [], None
        for seed in run_seeds:
            p = dict(params)
            if algo.seed_key:
                p[algo.seed_key] = seed
            start = time.perf_counter()
            try:
                if subsampled:
                    clusters, fit = _fit_subsample(algo, view, p, budget, fitted_n, seed)
                else:
                    fit = algo.fit(view, p, budget)
                    clusters = np.asarray(fit.labels, dtype=np.int64)
            finally:
                fit_time += time.perf_counter() - start
            # no silhouette per seed: it is quadratic in n, and only the reported run's is kept
            runs.append((clusters, metrics.score_clustering(labels, clusters), fit))
            if used is None:
                used = {k: v for k, v in fit.params.items() if k != algo.seed_key}
                if algo.seed_key or subsampled:
                    used["seeds"] = run_seeds
                if subsampled:
                    used["subsample"] = fitted_n
                    used["assign"] = "nearest exemplar" if fit.centres is not None else "nearest centroid"
    except MemoryBudgetExceeded as exc:
        return {**row, "wall_time_s": round(fit_time, 3), "status": f"skipped: {_one_line(exc)}"}, None
    except Exception as exc:  # any failure is recorded and the suite goes on
        return {
            **row,
            "wall_time_s": round(fit_time, 3),
            "status": f"failed: {type(exc).__name__}: {_one_line(exc)}",
        }, None

    chosen, rule = choose_representative([c for c, _, _ in runs], [f.objective for _, _, f in runs],
                                         same_images=not subsampled)
    clusters, _, fit = runs[chosen]
    if algo.seed_key or subsampled:
        used["seed"] = run_seeds[chosen]
    table = pd.DataFrame([scores for _, scores, _ in runs])
    row.update({m: float(table[m].iloc[chosen]) for m in METRICS})
    row["silhouette"] = metrics.score_clustering(
        labels, clusters, view, silhouette_max_n=cfg["silhouette_max_n"], seed=cfg["seed"])["silhouette"]
    row.update({f"{m}_mean": float(table[m].mean()) for m in SPREAD})
    row.update({f"{m}_std": float(table[m].std(ddof=1)) if len(runs) > 1 else 0.0 for m in SPREAD})
    chance, p_value = metrics.chance_label_change(labels, clusters, n_permutations=cfg["chance_permutations"],
                                                  seed=cfg["seed"])
    reason = degenerate_reason(clusters, cfg["degenerate"], fit.diagnostics)
    row.update(chance_label_change=chance, chance_p=p_value, stability=stability([c for c, _, _ in runs]),
               n_seeds=len(runs), chosen_by=rule, n_fitted=fitted_n, n_assigned=n - fitted_n,
               params=_to_json(used), wall_time_s=round(fit_time, 3),
               status=f"degenerate: {reason}" if reason else "ok")
    return row, clusters


def _fit_subsample(
    algo: Algorithm, X: np.ndarray, params: dict, budget: float, size: int, seed: int
) -> tuple[np.ndarray, Fit]:
    """Fit on a seeded subsample of ``size`` points; assign the others to the nearest exemplar or centroid."""
    n = X.shape[0]
    inside = np.zeros(n, dtype=bool)
    inside[np.random.default_rng(seed).choice(n, size=size, replace=False)] = True
    fit = algo.fit(X[inside], params, budget)
    sub_labels = np.asarray(fit.labels, dtype=np.int64)
    clusters = np.full(n, metrics.NOISE, dtype=np.int64)
    clusters[inside] = sub_labels
    if fit.centres is not None:
        centres, ids = np.asarray(fit.centres), np.arange(len(fit.centres))
    else:
        ids = np.unique(sub_labels[sub_labels != metrics.NOISE])
        centres = np.array([X[inside][sub_labels == i].mean(axis=0) for i in ids])
    if ids.size:
        clusters[~inside] = ids[pairwise_distances_argmin(X[~inside], centres)]
    return clusters, fit


def _largest_within(memory: MemoryEstimate, d: int, params: dict, budget: float, n: int) -> int:
    """Largest number of points, at most ``n``, whose estimated memory fits the budget (0 if none)."""
    low, high = 0, n
    while low < high:
        mid = (low + high + 1) // 2
        if memory(mid, d, params) <= budget:
            low = mid
        else:
            high = mid - 1
    return low


def _over_budget(need: float, n: int, budget: float) -> str:
    return f"needs ~{need / GIB:.3g} GiB for {n} images, over the memory budget of {budget / GIB:.3g} GiB"


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _to_json(params: Mapping) -> str:
    return json.dumps(params, sort_keys=True, separators=(",", ":"), default=_plain)


def _plain(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
