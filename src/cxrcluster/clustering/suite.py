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
import operator
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
from sklearn.metrics import pairwise_distances_argmin
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from cxrcluster import metrics
from cxrcluster.clustering.config import RUNNER_KEYS, validate_config
from cxrcluster.clustering.preparation import BackgroundPreparations, fresh_copy, prepare_on_one_thread
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
    cluster=None,
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
        while the algorithms on the shared preparation run (:class:`BackgroundPreparations`);
        the results are the same either way.
    cluster : cxrcluster.executor.Cluster, optional
        Run on a Dask cluster (:func:`cxrcluster.executor.connect`): every
        fit (algorithm x seed) and every own preparation is a task, and the
        fits run side by side; the scoring is done here. The table and cluster
        ids are the same as in this process, apart from ``wall_time_s``.

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
        (:func:`~cxrcluster.clustering.preparation.prepare_features`), ``params`` (compact JSON of the parameters
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
    names = [name for name, spec in cfg["algorithms"].items() if spec["enabled"]]
    own = {}  # the algorithms' own preparations, one computation each
    for name in names:
        own.setdefault(_preparation_key(cfg, name), cfg["algorithms"][name].get("preparation", cfg["preparation"]))
    own.pop(_to_json(cfg["preparation"]), None)
    grid = _Grid(X, labels, cfg, names, own, n_classes=int(np.unique(labels).size),
                 seeds=derive_seeds(cfg["seed"], cfg["seeds"]), budget=float(cfg["memory_budget_gb"]) * GIB,
                 model=model, progress=progress)
    if cluster is not None:  # one thread per step there too (_fit_seed, _prepare)
        with threadpool_limits(1):
            rows, cluster_ids = _run_on_cluster(grid, cluster)
    else:
        rows, cluster_ids = _run_here(grid, background)
    return pd.DataFrame([{"model": model, **rows[name]} for name in names], columns=RESULT_COLUMNS), \
        {name: cluster_ids[name] for name in names if name in cluster_ids}


@dataclass(frozen=True)
class _Grid:
    """One run of the suite, decided once by :func:`run_suite`, that both runners read.

    ``names`` are the enabled algorithms in configuration order; ``own`` the
    algorithms' own preparations by key (:func:`_preparation_key`), one
    computation each, the shared preparation left out; ``plans`` (computed on
    first use) what each algorithm runs, or the row of one that cannot start.
    """

    X: np.ndarray
    labels: np.ndarray
    cfg: Mapping
    names: list[str]
    own: dict[str, Mapping]
    n_classes: int
    seeds: list[int]
    budget: float
    model: str
    progress: bool

    @property
    def shared_key(self) -> str:
        """The key of the shared preparation (the configuration's ``preparation``)."""
        return _to_json(self.cfg["preparation"])

    def preparation_key(self, name: str) -> str:
        """The key of the preparation algorithm ``name`` is fitted on."""
        return _preparation_key(self.cfg, name)

    @cached_property
    def plans(self) -> dict[str, _Plan | dict]:
        """:func:`_planned` of every algorithm, from the shape of ``X``.

        Planned before any preparation is computed, so that a cluster gets every
        fit at once; the memory estimates read the image count, which every
        preparation keeps, and no estimate reads the dimension.
        """
        return {name: _planned(name, self.cfg["algorithms"][name], self.X.shape, self.n_classes, self.seeds,
                               self.budget) for name in self.names}


def _run_here(grid: _Grid, background: bool) -> tuple[dict, dict]:
    """The suite in this process, one algorithm after another (the UMAP preparation in a second one)."""
    cfg = grid.cfg
    # One thread for every step, here and in the worker: the results do not depend on the machine's
    # core count, and the second core computes the UMAP preparation meanwhile. At 5,228 synthetic
    # images one thread fitted as fast as two or faster (BayesianGaussianMixture 1.25 s against
    # 5.7 s, KMeans 0.06 s against 0.24 s), Spectral alone 15 % slower; with two threads beside
    # the worker, MiniBatchKMeans and BisectingKMeans took 4.5 s instead of 0.1 s.
    with (threadpool_limits(1),
          BackgroundPreparations(grid.X, grid.own, cfg["seed"], background=background) as pending):
        prepared = {grid.shared_key: prepare_on_one_thread(grid.X, cfg["preparation"], cfg["seed"])}

        def prepared_for(name: str) -> tuple[np.ndarray, str]:
            key = grid.preparation_key(name)
            if key not in prepared:
                prepared[key] = pending.result(key)
            return prepared[key]

        # those on the shared preparation first, while the others' are computed
        order = sorted(grid.names, key=lambda n: grid.preparation_key(n) != grid.shared_key)
        return _scored(grid, _with_bar(order, grid), prepared_for,
                       lambda name, X_prepared: _run_algorithm(grid.plans[name], X_prepared, grid.budget),
                       prepared[grid.shared_key][0])


def _with_bar(names: list[str], grid: _Grid) -> Iterator[str]:
    """``names``, in a progress bar over the algorithms that shows the current one."""
    bar = tqdm(names, desc=grid.model or "clustering", unit="algorithm", disable=not grid.progress)
    for name in bar:
        bar.set_postfix_str(name)
        yield name


def _run_on_cluster(grid: _Grid, cluster) -> tuple[dict, dict]:
    """The suite on a Dask cluster: every fit (algorithm x seed) and every own preparation is a task.

    The shared preparation is computed here and sent to the workers once; the
    fits run side by side; each algorithm is then scored here, in configuration
    order, from its fits in seed order, by the loop :func:`_run_here` scores
    with (:func:`_scored`), so the table and cluster ids are the same (fitting
    times apart).
    """
    from dask.base import tokenize

    from cxrcluster import executor

    client, cfg = cluster.client, grid.cfg
    shared = prepare_on_one_thread(grid.X, cfg["preparation"], cfg["seed"])
    token = tokenize(grid.X, cfg["seed"])
    inputs = {grid.shared_key: client.scatter(shared[0], broadcast=False)}
    tuples = {}
    if grid.own:
        X_remote = client.scatter(grid.X, broadcast=False)
        for key, preparation in grid.own.items():
            tuples[key] = client.submit(prepare_on_one_thread, X_remote, dict(preparation), cfg["seed"],
                                        key=f"prepare-{tokenize(key)}-{token}")
            inputs[key] = client.submit(operator.getitem, tuples[key], 0, key=f"prepared-{tokenize(key)}-{token}")
    tasks = []
    for name, plan in grid.plans.items():
        if isinstance(plan, _Plan):
            source = inputs[grid.preparation_key(name)]
            for seed in plan.seeds:
                tasks.append((name, client.submit(_fit_seed, plan, source, seed, grid.budget,
                                                  key=f"fit-{grid.model}-{name}-{seed}-{token}")))
    futures = [future for _, future in tasks]
    try:
        for _ in executor.completed(cluster, futures, desc=f"{grid.model or 'clustering'} fits", unit="fit",
                                    progress=grid.progress):
            pass  # the bar moves as fits complete; they are scored below, in order
        fits = {name: [] for name in grid.names}
        for name, future in tasks:
            fits[name].append(future.result())
        prepared = {grid.shared_key: shared, **{key: future.result() for key, future in tuples.items()}}
        return _scored(grid, grid.names, lambda name: prepared[grid.preparation_key(name)],
                       lambda name, _: fits[name], shared[0])
    finally:
        client.cancel([f for f in futures + list(tuples.values()) + list(inputs.values()) if not f.done()])


def _scored(grid: _Grid, order: Iterable[str], prepared_for: Callable[[str], tuple[np.ndarray, str]],
            fits_of: Callable[[str, np.ndarray], list], shared: np.ndarray) -> tuple[dict, dict]:
    """The loop of both runners: each algorithm of ``order`` scored from its fits, with its comparable silhouette.

    ``prepared_for(name)`` gives the prepared features and their description
    the algorithm is fitted on, ``fits_of(name, X_prepared)`` its fits in seed
    order (:func:`_fit_seed`), and ``shared`` is the shared preparation (for
    :func:`_with_comparable`). An algorithm that cannot start keeps the row
    of its plan. Returns the rows and the cluster ids by algorithm.
    """
    rows, cluster_ids = {}, {}
    for name in order:
        X_prepared, description = prepared_for(name)
        plan = grid.plans[name]
        if isinstance(plan, dict):
            row, clusters = plan, None
        else:
            row, clusters = _score(plan, fits_of(name, X_prepared), X_prepared, grid.labels, grid.cfg)
        rows[name] = _with_comparable(row, clusters, name, X_prepared, shared, description, grid.cfg)
        if clusters is not None:
            cluster_ids[name] = clusters
    return rows, cluster_ids


def _preparation_key(cfg: Mapping, name: str) -> str:
    return _to_json(cfg["algorithms"][name].get("preparation", cfg["preparation"]))


def _with_comparable(row: dict, clusters, name: str, X_prepared: np.ndarray, shared: np.ndarray,
                     description: str, cfg: Mapping) -> dict:
    """The row with its preparation and comparable silhouette (on the shared preparation)."""
    comparable = math.nan
    if clusters is not None:
        if X_prepared is shared and ALGORITHMS[name].view is None:
            # the same silhouette computation on the same features: scale the run's own
            comparable = row["silhouette"] * float(np.mean(clusters != metrics.NOISE))
        else:
            comparable = metrics.comparable_silhouette(shared, clusters, max_n=cfg["silhouette_max_n"],
                                                       seed=cfg["seed"])
    return {**row, "preparation": description, "comparable_silhouette": comparable}


@dataclass(frozen=True)
class _Plan:
    """How one algorithm runs: its parameters, the images it is fitted on and its seeds."""

    name: str
    params: dict
    fitted_n: int
    n: int
    seeds: list[int]

    @property
    def subsampled(self) -> bool:
        return self.fitted_n < self.n


@dataclass(frozen=True)
class _Stopped:
    """A fit that did not finish: the row's status and the time it took."""

    status: str
    seconds: float


def _empty_row(name: str, n: int, params: Mapping) -> dict:
    return {
        "clustering": name,
        **dict.fromkeys(METRICS, math.nan),
        **dict.fromkeys(CHANCE, math.nan),
        "comparable_silhouette": math.nan,
        **{f"{m}_{stat}": math.nan for m in SPREAD for stat in ("mean", "std")},
        "stability": math.nan,
        "n_seeds": 0,
        "chosen_by": "",
        "n_images": n,
        "n_fitted": 0,
        "n_assigned": 0,
        "params": _to_json(params),
        "wall_time_s": 0.0,
    }


def _params(name: str, spec: Mapping, n_classes: int) -> dict:
    """The algorithm's defaults overridden by its configuration, with the class count where it takes one."""
    algo = ALGORITHMS[name]
    params = {**algo.defaults, **{k: v for k, v in spec.items() if k not in RUNNER_KEYS}}
    if algo.n_clusters_key and params.get(algo.n_clusters_key) is None:
        params[algo.n_clusters_key] = n_classes
    return params


def _plan(name: str, spec: Mapping, shape: tuple[int, int], n_classes: int, seeds: list[int],
          budget: float) -> _Plan:
    """The parameters, subsample size and seeds of one algorithm (views keep the features' shape).

    Raises :class:`MemoryBudgetExceeded` when it cannot run within the budget.
    """
    algo = ALGORITHMS[name]
    params = _params(name, spec, n_classes)
    n, d = shape
    fitted_n = min(n, spec.get("max_samples") or n)
    need = algo.memory(fitted_n, d, params) if algo.memory else 0.0
    if need > budget:
        if algo.over_budget == "skip":
            raise MemoryBudgetExceeded(_over_budget(need, fitted_n, budget))
        fitted_n = _largest_within(algo.memory, d, params, budget, fitted_n)
        if fitted_n < MIN_SUBSAMPLE:
            raise MemoryBudgetExceeded(_over_budget(need, n, budget) + f" and {MIN_SUBSAMPLE} images do not fit")
    run_seeds = seeds if (fitted_n < n or algo.is_stochastic(params)) else seeds[:1]
    return _Plan(name, params, fitted_n, n, run_seeds)


def _planned(name: str, spec: Mapping, shape: tuple[int, int], n_classes: int, seeds: list[int],
             budget: float) -> _Plan | dict:
    """:func:`_plan`, or the results row of an algorithm that cannot start (skipped or failed)."""
    try:
        return _plan(name, spec, shape, n_classes, seeds, budget)
    except MemoryBudgetExceeded as exc:
        status = f"skipped: {_one_line(exc)}"
    except Exception as exc:
        status = f"failed: {type(exc).__name__}: {_one_line(exc)}"
    return {**_empty_row(name, shape[0], _params(name, spec, n_classes)), "status": status}


def _fit_seed(plan: _Plan, X: np.ndarray, seed: int, budget: float) -> tuple[np.ndarray, Fit, float] | _Stopped:
    """One fit of a plan, on one thread: its cluster ids, its fit and its time, or why it stopped.

    The same function runs in this process and as a task on a Dask worker.
    """
    algo = ALGORITHMS[plan.name]
    start = time.perf_counter()
    X = fresh_copy(X)
    with threadpool_limits(1):
        try:
            view = algo.view(X) if algo.view else X
            p = dict(plan.params)
            if algo.seed_key:
                p[algo.seed_key] = seed
            if plan.subsampled:
                clusters, fit = _fit_subsample(algo, view, p, budget, plan.fitted_n, seed)
            else:
                fit = algo.fit(view, p, budget)
                clusters = np.asarray(fit.labels, dtype=np.int64)
        except MemoryBudgetExceeded as exc:
            return _Stopped(f"skipped: {_one_line(exc)}", time.perf_counter() - start)
        except Exception as exc:  # any failure is recorded and the suite goes on
            return _Stopped(f"failed: {type(exc).__name__}: {_one_line(exc)}", time.perf_counter() - start)
    return clusters, fit, time.perf_counter() - start


def _run_algorithm(plan: _Plan, X: np.ndarray, budget: float) -> list:
    """One algorithm in this process: fit each seed of its plan, in order, until one stops."""
    fits = []
    for seed in plan.seeds:
        fits.append(_fit_seed(plan, X, seed, budget))
        if isinstance(fits[-1], _Stopped):
            break
    return fits


def _score(plan: _Plan, fits: list, X: np.ndarray, labels: np.ndarray, cfg: Mapping) -> tuple[dict, np.ndarray | None]:
    """The results row and representative cluster ids of a plan's fits, in seed order.

    The first fit that stopped (in seed order) gives the row its status, as
    when the seeds run one after the other and the first failure ends them.
    """
    algo = ALGORITHMS[plan.name]
    row = _empty_row(plan.name, plan.n, plan.params)
    stopped = next((i for i, f in enumerate(fits) if isinstance(f, _Stopped)), None)
    if stopped is not None:
        fits = fits[:stopped + 1]
    fit_time = sum(f.seconds if isinstance(f, _Stopped) else f[2] for f in fits)
    if stopped is not None:
        return {**row, "wall_time_s": round(fit_time, 3), "status": fits[-1].status}, None
    view = algo.view(X) if algo.view else X
    runs = [(clusters, metrics.score_clustering(labels, clusters), fit) for clusters, fit, _ in fits]
    used = {k: v for k, v in runs[0][2].params.items() if k != algo.seed_key}
    if algo.seed_key or plan.subsampled:
        used["seeds"] = plan.seeds
    if plan.subsampled:
        used["subsample"] = plan.fitted_n
        used["assign"] = "nearest exemplar" if runs[0][2].centres is not None else "nearest centroid"

    chosen, rule = choose_representative([c for c, _, _ in runs], [f.objective for _, _, f in runs],
                                         same_images=not plan.subsampled)
    clusters, _, fit = runs[chosen]
    if algo.seed_key or plan.subsampled:
        used["seed"] = plan.seeds[chosen]
    table = pd.DataFrame([scores for _, scores, _ in runs])
    row.update({m: float(table[m].iloc[chosen]) for m in METRICS})
    # no silhouette per seed: it is quadratic in n, and only the reported run's is kept
    row["silhouette"] = metrics.score_clustering(
        labels, clusters, view, silhouette_max_n=cfg["silhouette_max_n"], seed=cfg["seed"])["silhouette"]
    row.update({f"{m}_mean": float(table[m].mean()) for m in SPREAD})
    row.update({f"{m}_std": float(table[m].std(ddof=1)) if len(runs) > 1 else 0.0 for m in SPREAD})
    chance, p_value = metrics.chance_label_change(labels, clusters, n_permutations=cfg["chance_permutations"],
                                                  seed=cfg["seed"])
    reason = degenerate_reason(clusters, cfg["degenerate"], fit.diagnostics)
    row.update(chance_label_change=chance, chance_p=p_value, stability=stability([c for c, _, _ in runs]),
               n_seeds=len(runs), chosen_by=rule, n_fitted=plan.fitted_n, n_assigned=plan.n - plan.fitted_n,
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
