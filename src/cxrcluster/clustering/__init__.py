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

The package is in six modules, and every name below is re-exported here, so
``from cxrcluster import clustering; clustering.run_suite(...)`` works:

- :mod:`~cxrcluster.clustering.registry`: :data:`ALGORITHMS`, the
  :class:`Algorithm` and :class:`Fit` types, the fit functions,
  :func:`choose_eps`, :func:`fuzzifier`, the memory estimates,
  :class:`MemoryBudgetExceeded` and :data:`GIB`;
  :mod:`~cxrcluster.clustering.spherical`: :func:`spherical_kmeans`.
- :mod:`~cxrcluster.clustering.config`: :func:`load_config`,
  :func:`validate_config`, :func:`algorithm_preparation`, :data:`DEFAULTS`
  and :data:`RUNNER_KEYS`.
- :mod:`~cxrcluster.clustering.preparation`: :func:`prepare_features`,
  :func:`fit_preparation`, :class:`FittedPreparation`,
  :data:`PREPARATION_KEYS` and :data:`UMAP_DEFAULTS` (with the check of the
  ``preparation`` section).
- :mod:`~cxrcluster.clustering.verdict`: :func:`degenerate_reason`,
  :func:`choose_representative`, :func:`stability` and
  :data:`DEGENERACY_DEFAULTS`.
- :mod:`~cxrcluster.clustering.suite`: :func:`run_suite`,
  :func:`derive_seeds`, :data:`RESULT_COLUMNS`, :data:`METRICS`,
  :data:`SPREAD` and :data:`MIN_SUBSAMPLE`.
"""

from cxrcluster.clustering.config import (
    DEFAULTS,
    RUNNER_KEYS,
    algorithm_preparation,
    load_config,
    validate_config,
)
from cxrcluster.clustering.preparation import (
    PREPARATION_KEYS,
    UMAP_DEFAULTS,
    FittedPreparation,
    fit_preparation,
    prepare_features,
)
from cxrcluster.clustering.registry import (
    ALGORITHMS,
    GIB,
    Algorithm,
    Fit,
    FitFunction,
    MemoryBudgetExceeded,
    MemoryEstimate,
    choose_eps,
    fuzzifier,
)
from cxrcluster.clustering.spherical import spherical_kmeans
from cxrcluster.clustering.suite import (
    CHANCE,
    METRICS,
    MIN_SUBSAMPLE,
    RESULT_COLUMNS,
    SPREAD,
    derive_seeds,
    run_suite,
)
from cxrcluster.clustering.verdict import (
    DEGENERACY_DEFAULTS,
    choose_representative,
    degenerate_reason,
    stability,
)

__all__ = [
    "ALGORITHMS",
    "CHANCE",
    "DEFAULTS",
    "DEGENERACY_DEFAULTS",
    "UMAP_DEFAULTS",
    "GIB",
    "METRICS",
    "MIN_SUBSAMPLE",
    "PREPARATION_KEYS",
    "RESULT_COLUMNS",
    "RUNNER_KEYS",
    "SPREAD",
    "Algorithm",
    "Fit",
    "FitFunction",
    "FittedPreparation",
    "MemoryBudgetExceeded",
    "MemoryEstimate",
    "algorithm_preparation",
    "choose_eps",
    "choose_representative",
    "degenerate_reason",
    "derive_seeds",
    "fit_preparation",
    "fuzzifier",
    "load_config",
    "prepare_features",
    "run_suite",
    "spherical_kmeans",
    "stability",
    "validate_config",
]
