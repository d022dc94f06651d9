"""The registry of clustering algorithms: how to fit each one and how much memory it needs.

:data:`ALGORITHMS` maps a name (no underscore: label files are named
``<Model>_<Algo>.csv``) to an :class:`Algorithm`, which says how to fit it
(a fit function returning a :class:`Fit`), which parameters it starts from,
whether it is stochastic and how much memory it needs. Values chosen from the
data (DBSCAN's eps by :func:`choose_eps`, MeanShift's bandwidth, Birch's
threshold, ...) are recorded in the fit's parameters. An algorithm whose need
can only be estimated from the data raises :class:`MemoryBudgetExceeded`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import sklearn
from sklearn import cluster as skcluster
from sklearn import mixture
from sklearn.metrics import euclidean_distances
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import normalize
from threadpoolctl import threadpool_limits

from cxrcluster.clustering.spherical import spherical_kmeans

GIB = 2**30


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
    objective : float, optional
        The algorithm's own measure of fit, lower is better (inertia, medoid
        cost, fuzzy objective, minus the likelihood bound): among the runs of
        several seeds the lowest is the one reported, chosen without labels.
        None for algorithms without one.
    diagnostics : dict
        What the fit says about itself beyond its labels (fuzzy c-means'
        partition coefficient), read by the degeneracy rule.
    """

    labels: np.ndarray
    params: dict
    centres: np.ndarray | None = None
    objective: float | None = None
    diagnostics: dict = field(default_factory=dict)


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


def _estimator(cls, centres: str | None = None, objective: Callable | None = None) -> FitFunction:
    """Fit function of an estimator with ``fit_predict``.

    ``centres`` names its exemplar attribute; ``objective(est)`` gives its own
    measure of fit, lower is better (see :class:`Fit`).
    """

    def fit(X: np.ndarray, params: dict, budget: float) -> Fit:
        est = cls(**params)
        labels = est.fit_predict(X)
        return Fit(labels, params, getattr(est, centres) if centres else None,
                   objective=float(objective(est)) if objective else None)

    return fit


def _inertia(est) -> float:
    return est.inertia_


def _minus_likelihood(est) -> float:
    return -est.lower_bound_


def _fit_kmedoids(X: np.ndarray, params: dict, budget: float) -> Fit:
    # imported here so that a missing optional package fails this algorithm only
    from sklearn_extra.cluster import KMedoids

    est = KMedoids(**params).fit(X)
    return Fit(est.labels_, params, est.cluster_centers_, objective=float(est.inertia_))


def _fit_spherical_kmeans(X: np.ndarray, params: dict, budget: float) -> Fit:
    labels, centres, objective = spherical_kmeans(X, **params)
    return Fit(labels, params, centres, objective=objective)


def _fit_fuzzy_cmeans(X: np.ndarray, params: dict, budget: float) -> Fit:
    from skfuzzy.cluster import cmeans

    used = dict(params)
    if used.get("m") == "auto":
        used["m"] = _round(fuzzifier(*X.shape))
    centres, membership, _, _, history, _, partition = cmeans(X.T, **used)
    return Fit(np.argmax(membership, axis=0), used, centres, objective=float(history[-1]),
               diagnostics={"partition_coefficient": float(partition), "n_centres": int(centres.shape[0])})


def fuzzifier(n: int, d: int) -> float:
    """The fuzzifier ``m`` suited to ``n`` points in ``d`` dimensions (Schwämmle and Jensen, 2010).

    ``m = 1 + (1418 / n + 22.05) d^-2 + (12.33 / n + 0.243) d^(-0.0406 ln n - 0.1134)``,
    fitted on random data so that fuzzy c-means does not collapse every centre
    onto the data's mean: the usual ``m = 2`` does in high dimensions.

    Parameters
    ----------
    n : int
        Number of points.
    d : int
        Number of dimensions (after the feature preparation).

    Returns
    -------
    float
        The fuzzifier, above 1.
    """
    return float(1 + (1418 / n + 22.05) * d ** -2.0
                 + (12.33 / n + 0.243) * d ** (-0.0406 * np.log(n) - 0.1134))


def _fit_hdbscan(X: np.ndarray, params: dict, budget: float) -> Fit:
    import hdbscan

    used = dict(params)
    used["min_cluster_size"] = _count(used["min_cluster_size"], X.shape[0])
    return Fit(hdbscan.HDBSCAN(**used).fit_predict(X), used)


def _fit_optics(X: np.ndarray, params: dict, budget: float) -> Fit:
    # OPTICS visits the points one at a time, each with a one-row distance
    # computation: BLAS and OpenMP threads only add synchronisation (4x slower on
    # two cores, and unbounded when the cores are shared), so it runs on one thread.
    # Its loop calls scikit-learn's validated functions 2n times: the parameters are checked once
    # here, and the checks inside the loop skipped (6.2 s against 8.1 s on a 10-d UMAP of 5,228
    # synthetic images, identical ordering and labels).
    est = skcluster.OPTICS(**params)
    est._validate_params()
    with threadpool_limits(1), sklearn.config_context(skip_parameter_validation=True, assume_finite=True):
        return Fit(est.fit_predict(X), params)


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
        _estimator(skcluster.KMeans, "cluster_centers_", _inertia),
        defaults=_KMEANS,
        n_clusters_key="n_clusters",
        seed_key="random_state",
        stochastic=True,
    ),
    "MiniBatchKMeans": Algorithm(
        _estimator(skcluster.MiniBatchKMeans, "cluster_centers_", _inertia),
        defaults={"n_init": 10, "batch_size": 1024},
        n_clusters_key="n_clusters",
        seed_key="random_state",
        stochastic=True,
    ),
    "BisectingKMeans": Algorithm(
        _estimator(skcluster.BisectingKMeans, "cluster_centers_", _inertia),
        defaults={"n_init": 5},
        n_clusters_key="n_clusters",
        seed_key="random_state",
        stochastic=True,
    ),
    # k-means by cosine similarity with unit-length centroids (cxrcluster.clustering.spherical)
    "SphericalKMeans": Algorithm(
        _fit_spherical_kmeans,
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
        # the seed only starts the eigensolver, and cluster_qr reads the eigenvectors' span, not the
        # vectors: five seeds gave identical labels on the sample and at 5,228 synthetic images
        # (SPECTRAL_SEEDS in tests/test_clustering.py), so one run; k-means labels depend on the seed
        stochastic=lambda p: p.get("assign_labels") != "cluster_qr",
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
        _estimator(mixture.GaussianMixture, "means_", _minus_likelihood),
        defaults={"covariance_type": "full", "reg_covar": 1e-3, "max_iter": 200},
        n_clusters_key="n_components",
        seed_key="random_state",
        stochastic=True,
    ),
    # chooses its own number of clusters: n_components is an upper bound, not the class count
    "BayesianGaussianMixture": Algorithm(
        _estimator(mixture.BayesianGaussianMixture, "means_", _minus_likelihood),
        defaults={
            "n_components": 10,
            "covariance_type": "full",
            "weight_concentration_prior_type": "dirichlet_process",
            "reg_covar": 1e-3,
            "max_iter": 500,
        },
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
