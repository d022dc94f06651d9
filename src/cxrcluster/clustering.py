"""The clustering suite: every configured algorithm on one model's features, scored against the labels.

Algorithms are entries of :data:`ALGORITHMS`, a registry from a name (no
underscore: label files are named ``<Model>_<Algo>.csv``) to an
:class:`Algorithm`, which says how to fit it, which parameters it starts from,
whether it is stochastic and how much memory it needs. Adding an algorithm is
one entry there (and, to run it, one entry in ``config/clustering.yaml``).

:func:`run_suite` prepares the features once (:func:`prepare_features`), then
runs every enabled algorithm in configuration order and scores it with
:func:`cxrcluster.metrics.score_clustering`:

- Algorithms that take a cluster count get the number of classes unless the
  configuration sets one.
- Stochastic algorithms run once per seed (``seeds`` seeds derived from the
  base ``seed``); the table reports the mean and standard deviation over seeds
  and the cluster ids of the first seed are returned. Deterministic ones run
  once.
- Algorithms whose memory grows with the square of the image count are checked
  against ``memory_budget_gb`` before they start. Over budget, each either runs
  on a seeded random subsample, the largest that fits, and assigns every other
  image to the nearest exemplar (medoid, exemplar, centre) or, when the
  algorithm has none, to the nearest centroid of the subsample's clusters; or
  it is skipped with the reason. A subsampled algorithm depends on its
  subsample, so it runs once per seed, each seed drawing its own.
- A failing algorithm is recorded with its reason and never stops the others.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from os import PathLike

import numpy as np
import pandas as pd
import yaml
from sklearn import cluster as skcluster
from sklearn import mixture
from sklearn.decomposition import PCA
from sklearn.metrics import euclidean_distances, pairwise_distances_argmin
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler, normalize
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from cxrcluster import metrics

GIB = 2**30

DEFAULTS: dict = {
    "seed": 0,
    "seeds": 5,
    "memory_budget_gb": 8.0,
    "silhouette_max_n": 5000,
    "preparation": {},
}
"""Top-level configuration values used when the configuration leaves them out."""

PREPARATION_KEYS = ("standardize", "l2_normalize", "pca")

RUNNER_KEYS = ("enabled", "max_samples")
"""Per-algorithm configuration keys read by the suite, not passed to the algorithm.

``enabled`` (default true) switches an algorithm off; ``max_samples`` caps the
number of images it is fitted on (a seeded subsample, the rest assigned as for
the memory budget), for algorithms whose running time, not memory, is the
limit.
"""

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
RESULT_COLUMNS = [
    "model",
    "clustering",
    *METRICS,
    *(f"{m}_{stat}" for m in SPREAD for stat in ("mean", "std")),
    "n_seeds",
    "n_images",
    "preparation",
    "params",
    "wall_time_s",
    "status",
]
"""Columns of the results table, in order."""


class MemoryBudgetExceeded(RuntimeError):
    """An algorithm would need more memory than the budget allows; it is skipped, not failed."""


@dataclass(frozen=True)
class Fit:
    """What fitting one algorithm once produced.

    Attributes
    ----------
    labels : numpy.ndarray of int
        Cluster id of each point fitted; ``-1`` is noise.
    params : dict
        Parameters actually used, after any value chosen from the data
        (DBSCAN's eps, MeanShift's bandwidth, ...).
    centres : numpy.ndarray, optional
        Row ``i`` is the exemplar (medoid, centre) of cluster ``i``, in the
        space the algorithm was fitted in. Points left out of a subsample are
        assigned to the nearest one; without it, to the nearest centroid.
    """

    labels: np.ndarray
    params: dict
    centres: np.ndarray | None = None


FitFunction = Callable[[np.ndarray, dict, float], Fit]
MemoryEstimate = Callable[[int, int, dict], float]


@dataclass(frozen=True)
class Algorithm:
    """A registry entry: how to run one clustering algorithm.

    Attributes
    ----------
    fit : callable
        ``fit(X, params, memory_budget_bytes) -> Fit``. It may raise
        :class:`MemoryBudgetExceeded` when a need it can only estimate from the
        data (DBSCAN, Birch) is over budget.
    defaults : mapping
        Parameters for deep features, overridden by the configuration.
    n_clusters_key : str, optional
        Parameter that takes the cluster count; set to the number of classes
        unless configured.
    seed_key : str, optional
        Parameter that takes the seed; the suite sets it.
    stochastic : bool or callable
        Whether results depend on the seed (a callable decides from the
        parameters); stochastic algorithms run once per seed.
    memory : callable, optional
        ``memory(n, d, params) -> bytes`` estimated for ``n`` points in ``d``
        dimensions, for algorithms whose memory grows faster than ``n``.
    over_budget : {"subsample", "skip"}
        What to do when ``memory`` exceeds the budget.
    view : callable, optional
        Transformation of the prepared features that the algorithm clusters
        (and that its silhouette is computed on).
    """

    fit: FitFunction
    defaults: Mapping = field(default_factory=dict)
    n_clusters_key: str | None = None
    seed_key: str | None = None
    stochastic: bool | Callable[[dict], bool] = False
    memory: MemoryEstimate | None = None
    over_budget: str = "subsample"
    view: Callable[[np.ndarray], np.ndarray] | None = None

    def is_stochastic(self, params: dict) -> bool:
        """Whether, with these parameters, the result depends on the seed."""
        return self.stochastic(params) if callable(self.stochastic) else bool(self.stochastic)


# ---------------------------------------------------------------- fit functions


def _estimator(cls, centres: str | None = None) -> FitFunction:
    """Fit function of an estimator with ``fit_predict``; ``centres`` names its exemplar attribute."""

    def fit(X: np.ndarray, params: dict, budget: float) -> Fit:
        est = cls(**params)
        labels = est.fit_predict(X)
        return Fit(labels, params, getattr(est, centres) if centres else None)

    return fit


def _fit_kmedoids(X: np.ndarray, params: dict, budget: float) -> Fit:
    # imported here so that a missing optional package fails this algorithm only
    from sklearn_extra.cluster import KMedoids

    est = KMedoids(**params).fit(X)
    return Fit(est.labels_, params, est.cluster_centers_)


def _fit_fuzzy_cmeans(X: np.ndarray, params: dict, budget: float) -> Fit:
    from skfuzzy.cluster import cmeans

    centres, membership, *_ = cmeans(X.T, **params)
    return Fit(np.argmax(membership, axis=0), params, centres)


def _fit_hdbscan(X: np.ndarray, params: dict, budget: float) -> Fit:
    import hdbscan

    used = dict(params)
    used["min_cluster_size"] = _count(used["min_cluster_size"], X.shape[0])
    return Fit(hdbscan.HDBSCAN(**used).fit_predict(X), used)


def _fit_optics(X: np.ndarray, params: dict, budget: float) -> Fit:
    # OPTICS visits the points one at a time, each with a one-row distance
    # computation: BLAS and OpenMP threads only add synchronisation (4x slower on
    # two cores, and unbounded when the cores are shared), so it runs on one thread.
    with threadpool_limits(1):
        return Fit(skcluster.OPTICS(**params).fit_predict(X), params)


def _fit_dbscan(X: np.ndarray, params: dict, budget: float) -> Fit:
    used = dict(params)
    rule = used.pop("eps")
    quantile = used.pop("eps_quantile", 0.9)
    metric = used.get("metric", "euclidean")
    if isinstance(rule, str):
        eps = choose_eps(X, used.get("min_samples", 5), rule=rule, quantile=quantile, metric=metric)
        recorded = {"eps_rule": rule, **({"eps_quantile": quantile} if rule == "quantile" else {})}
    else:
        eps, recorded = float(rule), {}
    # DBSCAN holds every point's eps-neighbourhood at once; estimate its size from a sample
    nn = NearestNeighbors(radius=eps, metric=metric).fit(X)
    sample = np.random.default_rng(0).choice(X.shape[0], size=min(X.shape[0], 1000), replace=False)
    mean_count = np.mean([len(i) for i in nn.radius_neighbors(X[sample], return_distance=False)])
    need = 16.0 * X.shape[0] * mean_count
    if need > budget:
        raise MemoryBudgetExceeded(
            f"neighbourhoods at eps={eps:.4g} need ~{need / GIB:.1f} GiB, over the memory budget "
            f"of {budget / GIB:.3g} GiB"
        )
    est = skcluster.DBSCAN(eps=eps, **used)
    return Fit(est.fit_predict(X), {"eps": eps, **recorded, **used})


def choose_eps(
    X: np.ndarray,
    min_samples: int,
    *,
    rule: str = "knee",
    quantile: float = 0.9,
    metric: str = "euclidean",
) -> float:
    """DBSCAN's radius from the k-distance curve, k = ``min_samples``.

    The k-distance of a point is its distance to its ``min_samples``-th
    nearest point counting itself, so a point is a DBSCAN core point exactly
    when its k-distance is at most eps. Sorted, these distances rise slowly
    through the clusters and steeply through the outliers.

    Parameters
    ----------
    X : numpy.ndarray, shape (n, d)
        Points to cluster.
    min_samples : int
        DBSCAN's ``min_samples``.
    rule : {"knee", "quantile"}, default "knee"
        ``knee``: the point of the sorted curve farthest below the chord from
        its first to its last point (both axes scaled to [0, 1]), where slow
        rise turns into steep rise. ``quantile``: the ``quantile`` of the
        k-distances, so that about that share of points are core points.
    quantile : float, default 0.9
        Used by ``rule="quantile"``.
    metric : str, default "euclidean"
        Distance, as for DBSCAN.

    Returns
    -------
    float
        eps, rounded to six significant digits (the value recorded is the
        value used).
    """
    k = min(int(min_samples), X.shape[0])
    dist, _ = NearestNeighbors(n_neighbors=k, metric=metric).fit(X).kneighbors(X)
    kdist = np.sort(dist[:, -1])
    if rule == "knee":
        span = kdist[-1] - kdist[0]
        if span <= 0:
            eps = kdist[-1]
        else:
            x = np.linspace(0.0, 1.0, kdist.size)
            eps = kdist[int(np.argmax(x - (kdist - kdist[0]) / span))]
    elif rule == "quantile":
        eps = np.quantile(kdist, quantile)
    else:
        raise ValueError(f"eps must be a number, 'knee' or 'quantile', not {rule!r}")
    eps = _round(eps)
    # DBSCAN needs eps > 0; duplicated points can make every k-distance zero
    return eps if eps > 0 else float(np.finfo(float).eps)


def _fit_meanshift(X: np.ndarray, params: dict, budget: float) -> Fit:
    used = dict(params)
    quantile = used.pop("quantile", 0.3)
    if used.get("bandwidth") in (None, "estimate"):
        used["bandwidth"] = _round(skcluster.estimate_bandwidth(X, quantile=quantile))
        used["quantile"] = quantile
    fit_params = {k: v for k, v in used.items() if k != "quantile"}
    est = skcluster.MeanShift(**fit_params)
    with threadpool_limits(1):  # one small neighbourhood query per seed and step, as for OPTICS
        return Fit(est.fit_predict(X), used, est.cluster_centers_)


def _fit_birch(X: np.ndarray, params: dict, budget: float) -> Fit:
    used = dict(params)
    n_clusters = used.pop("n_clusters")
    neighbours = used.pop("threshold_neighbors", 10)
    scale = used.pop("threshold_scale", 0.5)
    if used.get("threshold") == "auto":
        # Birch's default threshold (0.5) is far below the distances between
        # deep features, so every image becomes its own subcluster and the
        # global step is a full agglomerative clustering; scale it to the data.
        k = min(neighbours + 1, X.shape[0])
        dist, _ = NearestNeighbors(n_neighbors=k).fit(X).kneighbors(X)
        used["threshold"] = _round(scale * np.median(dist[:, -1]))
        used.update(threshold_neighbors=neighbours, threshold_scale=scale)
    tree_params = {k: v for k, v in used.items() if k not in ("threshold_neighbors", "threshold_scale")}
    est = skcluster.Birch(**tree_params, n_clusters=None).fit(X)
    n_sub = len(est.subcluster_centers_)
    need = _agglomerative_bytes(n_sub, 0, {"linkage": "ward"})
    if need > budget:
        raise MemoryBudgetExceeded(
            f"{n_sub} subclusters need ~{need / GIB:.1f} GiB in the global step, over the memory "
            f"budget of {budget / GIB:.3g} GiB (raise threshold)"
        )
    # the global step alone: agglomerate the subclusters into n_clusters
    est.set_params(n_clusters=n_clusters).partial_fit()
    return Fit(est.predict(X), {**used, "n_clusters": n_clusters, "n_subclusters": n_sub})


def _fit_affinity_propagation(X: np.ndarray, params: dict, budget: float) -> Fit:
    used = dict(params)
    similarity = -euclidean_distances(X, squared=True)
    preference = used.get("preference")
    if preference in (None, "median"):
        used["preference"] = _round(np.median(similarity))
    elif preference == "min":
        used["preference"] = _round(similarity.min())
    est = skcluster.AffinityPropagation(affinity="precomputed", copy=False, **used).fit(similarity)
    if len(est.cluster_centers_indices_) == 0:
        raise RuntimeError(
            f"did not converge in max_iter={est.max_iter} iterations (raise max_iter or damping)"
        )
    return Fit(est.labels_, used, X[est.cluster_centers_indices_])


def _round(value: float) -> float:
    """Six significant digits: a value chosen from the data is recorded exactly as it is used."""
    return float(f"{float(value):.6g}")


def _count(value: int | float, n: int) -> int:
    """A size given as a count, or as a fraction (< 1) of ``n``."""
    if isinstance(value, float) and 0 < value < 1:
        return max(2, round(value * n))
    return int(value)


# ---------------------------------------------------------------- memory estimates


def _quadratic(n_matrices: float) -> MemoryEstimate:
    """``n_matrices`` dense n x n float64 matrices alive at once."""
    return lambda n, d, params: n_matrices * 8.0 * n * n


def _agglomerative_bytes(n: int, d: int, params: dict) -> float:
    # single linkage runs on a minimum spanning tree without a distance matrix;
    # the other linkages build scipy's condensed matrix (n^2 / 2 doubles) and a working copy
    return 0.0 if params.get("linkage") == "single" else 8.0 * n * n


def _spectral_bytes(n: int, d: int, params: dict) -> float:
    if params.get("affinity", "rbf") in ("nearest_neighbors", "precomputed_nearest_neighbors"):
        # The k-NN affinity is sparse, but the shift-invert eigensolver factorises the
        # Laplacian and the factor fills in: 1.7 GB measured at 20k points, 15
        # neighbours; one dense matrix bounds it.
        return 8.0 * n * n
    # dense affinity, Laplacian and a working copy
    return 3 * 8.0 * n * n


def _hdbscan_bytes(n: int, d: int, params: dict) -> float:
    # tree-based algorithms ("best" with Euclidean distances) need linear memory
    return 2 * 8.0 * n * n if params.get("algorithm") == "generic" else 0.0


def _l2(X: np.ndarray) -> np.ndarray:
    return normalize(X)


# ---------------------------------------------------------------- the registry


def _agglomerative(linkage: str) -> Algorithm:
    return Algorithm(
        _estimator(skcluster.AgglomerativeClustering),
        defaults={"linkage": linkage, "metric": "euclidean"},
        n_clusters_key="n_clusters",
        memory=_agglomerative_bytes,
    )


_KMEANS = {"n_init": 10, "max_iter": 300}

ALGORITHMS: dict[str, Algorithm] = {
    "KMeans": Algorithm(
        _estimator(skcluster.KMeans, "cluster_centers_"),
        defaults=_KMEANS,
        n_clusters_key="n_clusters",
        seed_key="random_state",
        stochastic=True,
    ),
    "MiniBatchKMeans": Algorithm(
        _estimator(skcluster.MiniBatchKMeans, "cluster_centers_"),
        defaults={"n_init": 10, "batch_size": 1024},
        n_clusters_key="n_clusters",
        seed_key="random_state",
        stochastic=True,
    ),
    "BisectingKMeans": Algorithm(
        _estimator(skcluster.BisectingKMeans, "cluster_centers_"),
        defaults={"n_init": 5},
        n_clusters_key="n_clusters",
        seed_key="random_state",
        stochastic=True,
    ),
    # KMeans on unit vectors: clusters by direction (cosine similarity), not magnitude
    "SphericalKMeans": Algorithm(
        _estimator(skcluster.KMeans, "cluster_centers_"),
        defaults=_KMEANS,
        n_clusters_key="n_clusters",
        seed_key="random_state",
        stochastic=True,
        view=_l2,
    ),
    # PAM holds the n x n distance matrix (plus temporaries while computing it):
    # over budget it runs on a subsample and the rest joins the nearest medoid
    "KMedoids": Algorithm(
        _fit_kmedoids,
        defaults={"method": "pam", "init": "build", "metric": "euclidean", "max_iter": 300},
        n_clusters_key="n_clusters",
        seed_key="random_state",
        stochastic=lambda p: p.get("init") in ("random", "k-medoids++"),
        memory=_quadratic(3),
    ),
    "FuzzyCMeans": Algorithm(
        _fit_fuzzy_cmeans,
        # a fuzzifier of 2 drives every centre to the overall mean in high dimensions
        defaults={"m": 1.5, "error": 1e-5, "maxiter": 300},
        n_clusters_key="c",
        seed_key="seed",
        stochastic=True,
    ),
    "AgglomerativeWard": _agglomerative("ward"),
    "AgglomerativeComplete": _agglomerative("complete"),
    "AgglomerativeAverage": _agglomerative("average"),
    "AgglomerativeSingle": _agglomerative("single"),
    "Spectral": Algorithm(
        _estimator(skcluster.SpectralClustering),
        # the default RBF affinity with gamma=1 is zero between all deep features
        defaults={"affinity": "nearest_neighbors", "n_neighbors": 15, "assign_labels": "cluster_qr"},
        n_clusters_key="n_clusters",
        seed_key="random_state",
        stochastic=True,
        memory=_spectral_bytes,
    ),
    # checks its neighbourhood memory itself once eps is known, and is skipped over budget
    "DBSCAN": Algorithm(_fit_dbscan, defaults={"eps": "knee", "min_samples": 10, "metric": "euclidean"}),
    # sklearn's OPTICS computes core distances in chunks and reachabilities one point
    # at a time: memory linear in n, time quadratic
    "OPTICS": Algorithm(_fit_optics, defaults={"min_samples": 10, "xi": 0.05, "min_cluster_size": 0.05}),
    "HDBSCAN": Algorithm(
        _fit_hdbscan,
        defaults={"min_cluster_size": 0.02, "min_samples": 10},
        memory=_hdbscan_bytes,
        over_budget="skip",
    ),
    "MeanShift": Algorithm(
        _fit_meanshift,
        defaults={"bandwidth": "estimate", "quantile": 0.3, "bin_seeding": False, "cluster_all": True},
    ),
    "GaussianMixture": Algorithm(
        _estimator(mixture.GaussianMixture, "means_"),
        defaults={"covariance_type": "full", "reg_covar": 1e-3, "max_iter": 200},
        n_clusters_key="n_components",
        seed_key="random_state",
        stochastic=True,
    ),
    "BayesianGaussianMixture": Algorithm(
        _estimator(mixture.BayesianGaussianMixture, "means_"),
        defaults={
            "covariance_type": "full",
            "weight_concentration_prior_type": "dirichlet_process",
            "reg_covar": 1e-3,
            "max_iter": 500,
        },
        n_clusters_key="n_components",
        seed_key="random_state",
        stochastic=True,
    ),
    # checks the size of its global step itself once the tree is built, and is skipped over budget
    "Birch": Algorithm(
        _fit_birch,
        defaults={
            "threshold": "auto",
            "threshold_neighbors": 10,
            "threshold_scale": 0.5,
            "branching_factor": 50,
        },
        n_clusters_key="n_clusters",
    ),
    # similarity, availability, responsibility and a working matrix, plus the
    # median's copy: over budget it runs on a subsample and the rest joins the nearest exemplar
    "AffinityPropagation": Algorithm(
        _fit_affinity_propagation,
        defaults={"damping": 0.9, "max_iter": 1000, "convergence_iter": 50, "preference": "min"},
        seed_key="random_state",
        memory=_quadratic(5),
    ),
}
"""Every algorithm the suite can run, by name.

Memory checked before the start (``memory_budget_gb``), and what happens over budget:

- KMedoids (PAM: the n x n distance matrix and temporaries, ~3 n^2 doubles),
  AffinityPropagation (similarity, responsibilities, availabilities, a working
  matrix and the median's copy, ~5 n^2), Spectral (k-NN affinity: the
  shift-invert eigensolver's factor fills in, bounded by n^2; dense affinities
  ~3 n^2) and Agglomerative ward, complete and average (scipy's condensed
  distance matrix and its working copy, ~n^2): fitted on the largest seeded
  subsample within budget, the other images assigned to the nearest medoid or
  exemplar (KMedoids, AffinityPropagation) or subsample-cluster centroid
  (Spectral, Agglomerative).
- DBSCAN (every eps-neighbourhood at once, estimated from 1000 points once eps
  is chosen), Birch (the agglomerative global step on its subclusters, checked
  once the tree is built) and HDBSCAN with ``algorithm: generic`` (a distance
  matrix): skipped with the reason; density on a subsample is not the
  density of the data, and Birch's remedy is a larger threshold.
- Linear memory, not checked: the k-means family, fuzzy c-means, Gaussian
  mixtures, AgglomerativeSingle (minimum spanning tree), OPTICS (core
  distances in chunks, reachabilities one point at a time), HDBSCAN's tree
  algorithms and MeanShift. OPTICS, MeanShift and single linkage take time
  quadratic in n.

Time, not memory, limits some algorithms first; the shipped configuration caps
them with ``max_samples`` (measured on two cores by ``python -m
cxrcluster.bench``): AffinityPropagation (1,000: its quadratic iterations took
2 minutes at 5,228 images), OPTICS and MeanShift (10,000), Spectral (10,000:
its eigensolver took 1.5 minutes at 20,000), KMedoids (10,000), ward,
complete and average linkage (15,000: 1.5-2 minutes and 8.2 GiB at 32,768),
single linkage (20,000: 1.5 minutes at 50,000) and Birch (20,000: its
data-scaled threshold leaves too many subclusters for the global step at
50,000). OPTICS and MeanShift
run on one thread: their many one-row distance computations only pay thread
synchronisation, which turned seconds into minutes on shared cores.
"""


# ---------------------------------------------------------------- configuration


def load_config(path: str | PathLike) -> dict:
    """Read and validate the clustering configuration.

    Parameters
    ----------
    path : path-like
        A YAML file (``config/clustering.yaml``).

    Returns
    -------
    dict
        The configuration with defaults filled in: ``seed``, ``seeds``,
        ``memory_budget_gb``, ``silhouette_max_n``, ``preparation`` and
        ``algorithms`` (name -> parameters, each with ``enabled``).

    Raises
    ------
    ValueError
        On unknown keys or algorithm names (named in the message) and on
        values of the wrong type. Algorithm parameters are passed through: a
        wrong one fails that algorithm alone when the suite runs.
    """
    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh)
    return validate_config(raw, source=str(path))


def validate_config(config: Mapping, *, source: str = "the clustering configuration") -> dict:
    """Check a configuration mapping and fill in defaults (see :func:`load_config`)."""
    if not isinstance(config, Mapping):
        raise ValueError(f"{source} must be a mapping, not {type(config).__name__}")
    unknown = sorted(set(config) - set(DEFAULTS) - {"algorithms"})
    if unknown:
        raise ValueError(
            f"unknown key(s) in {source}: {', '.join(map(str, unknown))} "
            f"(known: {', '.join([*DEFAULTS, 'algorithms'])})"
        )
    cfg = {**copy.deepcopy(DEFAULTS), **copy.deepcopy(dict(config))}
    _require(_is_int(cfg["seed"]) and cfg["seed"] >= 0, source, "seed must be a non-negative integer")
    _require(_is_int(cfg["seeds"]) and cfg["seeds"] >= 1, source, "seeds must be a positive integer")
    _require(
        _is_number(cfg["memory_budget_gb"]) and cfg["memory_budget_gb"] > 0,
        source,
        "memory_budget_gb must be a positive number",
    )
    _require(
        _is_int(cfg["silhouette_max_n"]) and cfg["silhouette_max_n"] >= 2,
        source,
        "silhouette_max_n must be an integer of at least 2",
    )
    cfg["preparation"] = _validate_preparation(cfg["preparation"], source)

    algorithms = cfg.get("algorithms")
    _require(isinstance(algorithms, Mapping) and algorithms, source, "algorithms must be a non-empty mapping")
    unknown = [str(name) for name in algorithms if name not in ALGORITHMS]
    if unknown:
        raise ValueError(
            f"unknown algorithm(s) in {source}: {', '.join(unknown)} (known: {', '.join(ALGORITHMS)})"
        )
    checked = {}
    for name, spec in algorithms.items():
        spec = {} if spec is None else spec
        _require(isinstance(spec, Mapping), source, f"algorithms.{name} must be a mapping of parameters")
        spec = {"enabled": True, **spec}
        _require(
            isinstance(spec["enabled"], bool), source, f"algorithms.{name}.enabled must be true or false"
        )
        cap = spec.get("max_samples")
        _require(
            cap is None or (_is_int(cap) and cap >= 2),
            source,
            f"algorithms.{name}.max_samples must be an integer of at least 2",
        )
        checked[name] = spec
    cfg["algorithms"] = checked
    return cfg


def _validate_preparation(preparation: Mapping | None, source: str = "the preparation") -> dict:
    preparation = {} if preparation is None else preparation
    _require(isinstance(preparation, Mapping), source, "preparation must be a mapping")
    unknown = sorted(set(preparation) - set(PREPARATION_KEYS))
    if unknown:
        raise ValueError(
            f"unknown preparation key(s) in {source}: {', '.join(map(str, unknown))} "
            f"(known: {', '.join(PREPARATION_KEYS)})"
        )
    prep = {"standardize": False, "l2_normalize": False, "pca": None, **preparation}
    for key in ("standardize", "l2_normalize"):
        _require(isinstance(prep[key], bool), source, f"preparation.{key} must be true or false")
    pca = prep["pca"]
    _require(
        pca is None or (_is_int(pca) and pca >= 1) or (isinstance(pca, float) and 0 < pca < 1),
        source,
        "preparation.pca must be empty, a number of components or a variance fraction in (0, 1)",
    )
    return prep


def _require(ok: bool, source: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{source}: {message}")


def _is_int(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool)


# ---------------------------------------------------------------- features


def prepare_features(X: np.ndarray, preparation: dict) -> tuple[np.ndarray, str]:
    """Standardise, reduce and normalise features before clustering.

    Steps run in this order, each only if configured: standardisation (zero
    mean, unit variance per feature), PCA, L2 normalisation (last, so that the
    algorithms see unit vectors when it is asked for). PCA uses the exact
    covariance eigendecomposition, which is deterministic, so no seed is
    needed; the number of components is capped at ``min(n, d)``.

    Parameters
    ----------
    X : numpy.ndarray, shape (n, d)
        Features, no NaN.
    preparation : dict
        ``standardize`` (bool), ``l2_normalize`` (bool), ``pca`` (empty, a
        number of components, or a fraction of variance to explain).

    Returns
    -------
    X_prepared : numpy.ndarray of float64, shape (n, d')
    description : str
        Short record of what was done, e.g. ``standardize+pca(50)``,
        ``pca(0.9:37)`` (fraction: components kept) or ``none``.
    """
    prep = _validate_preparation(preparation)
    X = np.asarray(X, dtype=np.float64)
    steps = []
    if prep["standardize"]:
        X = StandardScaler().fit_transform(X)
        steps.append("standardize")
    if prep["pca"] is not None:
        wanted = prep["pca"]
        n_components = min(wanted, *X.shape) if _is_int(wanted) else wanted
        pca = PCA(n_components=n_components, svd_solver="covariance_eigh")
        X = pca.fit_transform(X)
        steps.append(
            f"pca({pca.n_components_})" if _is_int(wanted) else f"pca({wanted:g}:{pca.n_components_})"
        )
    if prep["l2_normalize"]:
        X = normalize(X)
        steps.append("l2")
    return X, "+".join(steps) or "none"


# ---------------------------------------------------------------- the suite


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

    Returns
    -------
    results : pandas.DataFrame
        One row per enabled algorithm, in configuration order, with columns
        :data:`RESULT_COLUMNS`: the metrics of
        :func:`cxrcluster.metrics.score_clustering` for the first seed (the
        run whose cluster ids are returned and written to the label CSVs, so
        that the table can be recomputed from them), ``*_mean`` and ``*_std``
        (mean and standard deviation over seeds; the std is 0 for a single run),
        ``n_seeds`` (runs made), ``n_images``, ``preparation``
        (:func:`prepare_features`), ``params`` (compact JSON of the parameters
        used, with values chosen from the data, ``seeds`` and, when
        subsampled, ``subsample`` and ``assign``), ``wall_time_s`` (fitting
        time of all runs, scoring excluded) and ``status`` (``ok``,
        ``failed: <reason>`` or ``skipped: <reason>``; metrics are NaN unless ok).
    cluster_ids : dict of str to numpy.ndarray
        Cluster ids (``-1`` noise) of the first seed of every algorithm whose
        status is ok.
    """
    cfg = validate_config(config)
    X = np.asarray(X, dtype=np.float64)
    labels = np.asarray(labels)
    if X.ndim != 2 or X.shape[0] != labels.shape[0]:
        raise ValueError(f"features of shape {X.shape} for {labels.shape[0]} labels")
    if np.isnan(X).any():
        raise ValueError("features contain NaN; drop those images before clustering")
    n_classes = int(np.unique(labels).size)
    X_prepared, preparation = prepare_features(X, cfg["preparation"])
    seeds = derive_seeds(cfg["seed"], cfg["seeds"])
    budget = float(cfg["memory_budget_gb"]) * GIB

    rows, cluster_ids = [], {}
    names = [name for name, spec in cfg["algorithms"].items() if spec["enabled"]]
    bar = tqdm(names, desc=model or "clustering", unit="algorithm", disable=not progress)
    for name in bar:
        bar.set_postfix_str(name)
        row, clusters = _run_algorithm(
            name, cfg["algorithms"][name], X_prepared, labels, n_classes, seeds, budget, cfg
        )
        rows.append({"model": model, "preparation": preparation, **row})
        if clusters is not None:
            cluster_ids[name] = clusters
    return pd.DataFrame(rows, columns=RESULT_COLUMNS), cluster_ids


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
        **{f"{m}_{stat}": math.nan for m in SPREAD for stat in ("mean", "std")},
        "n_seeds": 0,
        "n_images": X.shape[0],
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
            scores = metrics.score_clustering(
                labels, clusters, view, silhouette_max_n=cfg["silhouette_max_n"], seed=cfg["seed"]
            )
            runs.append((clusters, scores))
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

    table = pd.DataFrame([scores for _, scores in runs])
    row.update({m: float(table[m].iloc[0]) for m in METRICS})
    row.update({f"{m}_mean": float(table[m].mean()) for m in SPREAD})
    row.update({f"{m}_std": float(table[m].std(ddof=1)) if len(runs) > 1 else 0.0 for m in SPREAD})
    row.update(n_seeds=len(runs), params=_to_json(used), wall_time_s=round(fit_time, 3), status="ok")
    return row, runs[0][0]


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
