"""Feature preparation before clustering: standardisation, PCA and L2 normalisation.

:func:`fit_preparation` fits the configured steps on the features and returns
them as a :class:`FittedPreparation`, which applies the same steps to other
features (:meth:`FittedPreparation.transform`). :func:`prepare_features` is
the suite's entry point: the prepared features and a short description.
The ``preparation`` mapping is checked here (:data:`PREPARATION_KEYS`), for
the configuration reader as well. :func:`prepare_on_one_thread` is how the
suite calls it, here or in another process alike, and
:class:`BackgroundPreparations` computes the algorithms' own preparations
(UMAP) in a worker process while the suite runs the others.
"""

from __future__ import annotations

import multiprocessing
import warnings
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler, normalize
from threadpoolctl import threadpool_limits

PREPARATION_KEYS = ("l2_first", "standardize", "pca", "umap", "l2_normalize")

UMAP_DEFAULTS: dict = {"n_components": 10, "n_neighbors": 15, "min_dist": 0.0}
"""UMAP settings used for what ``preparation.umap`` leaves out: ``min_dist`` 0 packs neighbours
tightly, as recommended for clustering rather than for drawing."""
"""Keys of the ``preparation`` mapping: ``standardize``, ``l2_normalize`` (bool) and ``pca``."""


@dataclass(frozen=True)
class FittedPreparation:
    """The preparation steps fitted on some features, ready to apply to others.

    Attributes
    ----------
    scaler : sklearn.preprocessing.StandardScaler or None
        Standardisation, if configured.
    pca : sklearn.decomposition.PCA or None
        PCA fitted on the standardised features, if configured.
    umap : umap.UMAP or None
        UMAP fitted on the PCA's output, if configured. It was fitted on an
        exact neighbour graph of the points themselves, so it embeds those
        points only: :meth:`transform` refuses new ones.
    l2_first : bool
        Whether each raw feature vector is scaled to unit length first.
    l2_normalize : bool
        Whether each row is scaled to unit length last.
    description : str
        Short record of what was done, as returned by
        :func:`prepare_features` (e.g. ``standardize+pca(50)``).
    """

    scaler: StandardScaler | None
    pca: PCA | None
    l2_normalize: bool
    description: str
    umap: object | None = None
    l2_first: bool = False

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Apply the fitted steps, in order, to features.

        Parameters
        ----------
        X : numpy.ndarray, shape (m, d)
            Features with as many columns as those the steps were fitted on,
            no NaN.

        Returns
        -------
        numpy.ndarray of float64, shape (m, d')
            Prepared features.
        """
        X = np.asarray(X, dtype=np.float64)
        if self.l2_first:
            X = normalize(X)
        if self.scaler is not None:
            X = self.scaler.transform(X)
        if self.pca is not None:
            X = self.pca.transform(X)
        if self.umap is not None:
            raise ValueError("a UMAP embedding fitted on its own points cannot place new ones; use the prepared "
                             "features fit_preparation returned")
        if self.l2_normalize:
            X = normalize(X)
        return X


def fit_preparation(
    X: np.ndarray, preparation: Mapping, seed: int = 0
) -> tuple[np.ndarray, FittedPreparation]:
    """Fit the preparation steps on features and prepare them.

    Steps run in this order, each only if configured: L2 normalisation of the
    raw features (``l2_first``: their directions, the cosine geometry),
    standardisation (zero mean, unit variance per feature), PCA, UMAP, L2
    normalisation (``l2_normalize``, last, so that the algorithms see unit
    vectors). PCA uses the
    exact covariance eigendecomposition, which is deterministic; the number of
    components is capped at ``min(n, d)``. UMAP (the ``umap-learn`` package) is
    seeded with ``seed``, which also makes it run on one thread and repeat
    exactly.

    Parameters
    ----------
    X : numpy.ndarray, shape (n, d)
        Features, no NaN.
    preparation : mapping
        ``l2_first`` (bool), ``standardize`` (bool), ``l2_normalize`` (bool), ``pca`` (empty, a
        number of components, or a fraction of variance to explain), ``umap``
        (empty, or a mapping of ``n_components``, ``n_neighbors`` and
        ``min_dist`` for ``umap.UMAP``); missing keys are off.
    seed : int, default 0
        Seed of UMAP.

    Returns
    -------
    X_prepared : numpy.ndarray of float64, shape (n, d')
        ``X`` prepared by the steps as they were fitted.
    fitted : FittedPreparation
        The fitted steps and their description.

    Raises
    ------
    ValueError
        On unknown keys or values of the wrong type.
    """
    prep = _validate_preparation(preparation)
    X = np.asarray(X, dtype=np.float64)
    steps = []
    scaler = pca = None
    if prep["l2_first"]:
        X = normalize(X)
        steps.append("l2")
    if prep["standardize"]:
        scaler = StandardScaler()
        X = scaler.fit_transform(X)
        steps.append("standardize")
    if prep["pca"] is not None:
        wanted = prep["pca"]
        n_components = min(wanted, *X.shape) if _is_int(wanted) else wanted
        pca = PCA(n_components=n_components, svd_solver="covariance_eigh")
        X = pca.fit_transform(X)
        steps.append(
            f"pca({pca.n_components_})" if _is_int(wanted) else f"pca({wanted:g}:{pca.n_components_})"
        )
    embedding = None
    if prep["umap"] is not None:
        settings = {**UMAP_DEFAULTS, **prep["umap"]}
        # Exact neighbours, given to UMAP: its own approximate search above 4,096 points compiles
        # for about a minute in every process, and the exact graph is cheap in 50 dimensions.
        k = min(int(settings["n_neighbors"]), X.shape[0])
        distances, indices = NearestNeighbors(n_neighbors=k).fit(X).kneighbors(X)
        embedding = _umap_class()(**settings, random_state=seed, precomputed_knn=(indices, distances, None))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*precomputed_knn.*")
            warnings.filterwarnings("ignore", message=".*n_jobs value.*")
            X = np.asarray(embedding.fit_transform(X), dtype=np.float64)
        steps.append(f"umap({settings['n_components']},{settings['n_neighbors']},{settings['min_dist']:g})")
    if prep["l2_normalize"]:
        X = normalize(X)
        steps.append("l2")
    fitted = FittedPreparation(scaler, pca, prep["l2_normalize"], "+".join(steps) or "none", embedding,
                               prep["l2_first"])
    return X, fitted


def prepare_features(X: np.ndarray, preparation: dict, seed: int = 0) -> tuple[np.ndarray, str]:
    """Standardise, reduce and normalise features before clustering.

    The steps of :func:`fit_preparation`, fitted on ``X`` and applied to it.

    Parameters
    ----------
    X : numpy.ndarray, shape (n, d)
        Features, no NaN.
    preparation : dict
        As for :func:`fit_preparation`.
    seed : int, default 0
        Seed of UMAP.

    Returns
    -------
    X_prepared : numpy.ndarray of float64, shape (n, d')
    description : str
        Short record of what was done, e.g. ``standardize+pca(50)``,
        ``pca(0.9:37)`` (fraction: components kept) or ``none``.
    """
    X_prepared, fitted = fit_preparation(X, preparation, seed=seed)
    return X_prepared, fitted.description


def _umap_class():
    """``umap.UMAP``, imported without umap's parametric variant.

    umap's package imports ``umap.parametric_umap`` whenever TensorFlow is
    installed, which loads TensorFlow: seconds and about 700 MiB in every
    process that clusters, for a variant this project never uses. Marking
    that submodule absent while umap is first imported makes umap skip it,
    as it does where TensorFlow is not installed.
    """
    import sys

    if "umap" not in sys.modules:
        blocked = "umap.parametric_umap" not in sys.modules
        if blocked:
            sys.modules["umap.parametric_umap"] = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ImportWarning)
                import umap  # noqa: F401
        finally:
            if blocked and sys.modules.get("umap.parametric_umap", 0) is None:
                del sys.modules["umap.parametric_umap"]
        _cache_compiled(("umap", "pynndescent"))
    return sys.modules["umap"].UMAP


def _cache_compiled(packages: tuple[str, ...]) -> int:
    """Keep the machine code numba compiles for these packages' functions on disk, for the next process.

    umap-learn compiles most of its functions without numba's ``cache=True``, so every process
    that first fits a UMAP compiled them again: about 20 s (measured on this project's 2-core
    machine, 150 images of 50 dimensions: first fit 20.7 s, in a later process 0.3 s with the cache),
    most of a small run's clustering, in every ``make cluster``, worker process and test. Numba keeps
    the cache beside the package (``__pycache__``; a user folder when that is read-only), keyed on
    the function's source and the CPU, and compiles again when either changes; the code is the
    same, so results are too. Returns the number of functions whose code is now kept.
    """
    import sys

    try:
        from numba.core.dispatcher import Dispatcher
    except ImportError:
        return 0
    kept = 0
    for name, module in list(sys.modules.items()):
        if module is None or name.split(".")[0] not in packages:
            continue
        for obj in list(vars(module).values()):
            if isinstance(obj, Dispatcher) and type(obj._cache).__name__ == "NullCache":
                try:
                    obj.enable_caching()
                    kept += 1
                except Exception:  # noqa: BLE001 - a function numba cannot cache is compiled as before
                    continue
    return kept


# ---------------------------------------------------------------- checking


def _validate_preparation(preparation: Mapping | None, source: str = "the preparation") -> dict:
    preparation = {} if preparation is None else preparation
    _require(isinstance(preparation, Mapping), source, "preparation must be a mapping")
    unknown = sorted(set(preparation) - set(PREPARATION_KEYS))
    if unknown:
        raise ValueError(
            f"unknown preparation key(s) in {source}: {', '.join(map(str, unknown))} "
            f"(known: {', '.join(PREPARATION_KEYS)})"
        )
    prep = {"l2_first": False, "standardize": False, "l2_normalize": False, "pca": None, "umap": None,
            **preparation}
    for key in ("l2_first", "standardize", "l2_normalize"):
        _require(isinstance(prep[key], bool), source, f"preparation.{key} must be true or false")
    pca = prep["pca"]
    _require(
        pca is None or (_is_int(pca) and pca >= 1) or (isinstance(pca, float) and 0 < pca < 1),
        source,
        "preparation.pca must be empty, a number of components or a variance fraction in (0, 1)",
    )
    umap = prep["umap"]
    _require(umap is None or isinstance(umap, Mapping), source, "preparation.umap must be empty or a mapping")
    if umap is not None:
        unknown = sorted(set(umap) - set(UMAP_DEFAULTS))
        _require(not unknown, source, f"unknown preparation.umap key(s) {unknown} (known: {list(UMAP_DEFAULTS)})")
        settings = {**UMAP_DEFAULTS, **umap}
        _require(_is_int(settings["n_components"]) and settings["n_components"] >= 1, source,
                 "preparation.umap.n_components must be a positive integer")
        _require(_is_int(settings["n_neighbors"]) and settings["n_neighbors"] >= 2, source,
                 "preparation.umap.n_neighbors must be an integer of at least 2")
        _require(isinstance(settings["min_dist"], int | float) and settings["min_dist"] >= 0, source,
                 "preparation.umap.min_dist must be a non-negative number")
    return prep


def _require(ok: bool, source: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{source}: {message}")


def _is_int(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


class BackgroundPreparations:
    """The algorithms' own feature preparations, computed while the suite runs the others.

    With ``background``, each is computed by :func:`prepare_features` in one
    worker process started by ``spawn`` (a fresh interpreter: forking a
    process whose BLAS and OpenMP threads are running can hang), so that
    UMAP's compilation and layout, single-threaded for reproducibility,
    use the second core while the algorithms on the shared preparation use
    the first. The worker computes exactly what the caller would: same
    function, inputs, seed and thread count (:func:`prepare_on_one_thread`). Without
    ``background``, or where no worker process can be started, each is
    computed in this process when first asked for.
    """

    def __init__(self, X: np.ndarray, preparations: Mapping[str, Mapping], seed: int, *, background: bool):
        self._X, self._preparations, self._seed = X, preparations, seed
        self._pool, self._futures = None, {}
        if background and preparations:
            try:
                self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
                self._futures = {key: self._pool.submit(prepare_on_one_thread, X, dict(prep), seed)
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
        return prepare_on_one_thread(self._X, dict(self._preparations[key]), self._seed)

    def _shutdown(self, wait: bool = False) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
        self._pool, self._futures = None, {}

    def __enter__(self) -> BackgroundPreparations:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        # after a normal end the worker is idle: wait, so that it has exited when the suite returns
        self._shutdown(wait=exc_type is None)


def prepare_on_one_thread(X: np.ndarray, preparation: Mapping, seed: int) -> tuple[np.ndarray, str]:
    """:func:`prepare_features` on one thread, in this process or a worker alike (on a fresh copy: :func:`fresh_copy`)."""
    with threadpool_limits(1):
        return prepare_features(fresh_copy(X), dict(preparation), seed=seed)


def fresh_copy(X: np.ndarray) -> np.ndarray:
    """A newly allocated copy of ``X``.

    An array received by a Dask task lives at whatever offset in the message
    buffer it came in, and that offset changes the last bits of some BLAS
    results: a UMAP embedding computed on a received array differed from the
    same computation in this process, and was equal after this copy (tested).
    """
    return np.array(X, dtype=np.float64, order="C", copy=True)
