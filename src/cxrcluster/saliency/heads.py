"""The differentiable decisions explained: a frozen backbone with a linear head.

- :func:`classifier_model`: the linear probe (:mod:`cxrcluster.probe`) as one
  dense layer on top of the backbone.
- :func:`cluster_score_model`: output ``k`` scores how near the image's
  prepared features are to centroid ``k`` (layer :class:`CentroidScores`);
  the preparation before clustering (standardisation, PCA) is linear, so it
  is one more dense layer (:func:`preparation_dense`), and the centroids can
  be computed from the cluster ids (:func:`cluster_centroids`).

Both models take images as :func:`cxrcluster.images.load_image` returns them
(0-255, the model's input size) and apply the backbone's own
``preprocess_input`` inside, so gradients are taken with respect to the
image's pixels.
"""

from __future__ import annotations

import keras
import numpy as np
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from cxrcluster import models


def _head_input(backbone_name, weights: str, seed: int, backbone):
    """Images in 0-255, three channels (a one-channel model's preprocessing keeps one), through the backbone."""
    spec = models.get_backbone(backbone_name)
    if backbone is None:
        backbone, _ = models.build_backbone(spec, weights, seed=seed)
    size = spec.input_size
    inputs = keras.Input((size, size, 3), name="image_0_255")
    x = keras.layers.Lambda(spec.preprocess_input(), name="preprocess_input")(inputs)
    return inputs, backbone(x), spec.name


def classifier_model(backbone_name: str, weights: str, W: np.ndarray, b: np.ndarray, seed: int = 0,
                     backbone: keras.Model | None = None) -> keras.Model:
    """The backbone with a linear probe as its differentiable head.

    Parameters
    ----------
    backbone_name : str or a resolved backbone
        A key of :data:`cxrcluster.models.BACKBONES`, or what
        :func:`cxrcluster.models.get_backbone` returns (a whole model file among them).
    weights : str
        As for :func:`cxrcluster.models.build_backbone`: the weights the
        probe's features were extracted with.
    W, b : numpy.ndarray
        ``(feature_dim, n_classes)`` and ``(n_classes,)`` from
        :func:`cxrcluster.probe.probe_as_dense`.
    seed : int, default 0
        Passed to :func:`cxrcluster.models.build_backbone`.
    backbone : keras.Model, optional
        An already built backbone (from
        :func:`cxrcluster.models.build_backbone`), to share between models;
        ``weights`` and ``seed`` are then not used.

    Returns
    -------
    keras.Model
        ``(batch, size, size, 3)`` images in 0-255 -> ``preprocess_input`` ->
        backbone features -> dense layer ``probe`` (logits) -> ``Softmax``
        layer ``probabilities``.
    """
    W = np.asarray(W, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    inputs, features, name = _head_input(backbone_name, weights, seed, backbone)
    if W.shape != (features.shape[-1], b.shape[0]):
        raise ValueError(f"W of shape {W.shape} and b of shape {b.shape} do not fit {features.shape[-1]} features")
    dense = keras.layers.Dense(W.shape[1], name="probe")
    logits = dense(features)
    dense.set_weights([W, b])
    outputs = keras.layers.Softmax(name="probabilities")(logits)
    return keras.Model(inputs, outputs, name=f"{name}-probe")


class CentroidScores(keras.layers.Layer):
    """Scores of each input row against ``k`` fixed centroids; the largest is the nearest centroid.

    ``score="distance"``: minus the Euclidean distance. ``"linear"``:
    ``z . c_k - |c_k|^2 / 2``, which is ``-|z - c_k|^2 / 2`` plus a term common
    to all clusters. ``"margin"``: the linear score minus the best other
    cluster's, i.e. half the difference of squared distances to the runner-up
    and to cluster ``k``.
    """

    def __init__(self, centroids, score: str = "distance", **kwargs):
        super().__init__(**kwargs)
        self._centroids = np.asarray(centroids, dtype=np.float32)
        self.score = score

    def build(self, input_shape):
        self.centroids = self.add_weight(shape=self._centroids.shape, name="centroids", trainable=False,
                                         initializer=keras.initializers.Constant(self._centroids))

    def call(self, z):
        if self.score == "distance":
            diff = keras.ops.expand_dims(z, 1) - keras.ops.expand_dims(self.centroids, 0)
            # the small constant keeps the gradient finite if a point sits exactly on a centroid
            return -keras.ops.sqrt(keras.ops.sum(keras.ops.square(diff), axis=-1) + 1e-30)
        linear = keras.ops.matmul(z, keras.ops.transpose(self.centroids)) - 0.5 * keras.ops.sum(
            keras.ops.square(self.centroids), axis=-1)
        if self.score == "linear":
            return linear
        k = self._centroids.shape[0]
        others = keras.ops.expand_dims(linear, 1) + keras.ops.expand_dims(
            keras.ops.convert_to_tensor(np.where(np.eye(k, dtype=bool), -np.inf, 0.0).astype(np.float32)), 0)
        return linear - keras.ops.max(others, axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self._centroids.shape[0])


def cluster_score_model(backbone_name: str, weights: str, centroids: np.ndarray,
                        preparation: tuple[np.ndarray, np.ndarray] | None = None,
                        l2_normalize: bool = False, score: str = "margin", seed: int = 0,
                        backbone: keras.Model | None = None) -> keras.Model:
    """A model whose output ``k`` scores how near an image's prepared features are to centroid ``k``.

    With every ``score``, the largest output is the nearest centroid: KMeans'
    assignment when ``centroids`` are the fitted ``cluster_centers_`` (or the
    means of each cluster's prepared features, :func:`cluster_centroids`).
    Grad-CAM of the assigned cluster's output shows what sends the image
    there.

    ``score="margin"`` (the default) is the one to explain: half the
    difference between the squared distances to the runner-up centroid and to
    centroid ``k`` (positive only for the assigned cluster), i.e. what sets
    this cluster apart from the closest alternative. ``"distance"`` (minus the
    Euclidean distance) answers "what brings the image closer to centroid
    ``k``", and moving towards *any* centroid mostly means shrinking the
    features towards the data's mean: its Grad-CAM channel weights are mostly
    negative and, after the ReLU, the map is often empty (it was for three of
    five images tried on the real sample). ``"linear"`` is
    ``z . c_k - |c_k|^2 / 2``, minus half the squared distance up to a term
    common to all clusters, like a linear classifier's logit.

    Parameters
    ----------
    backbone_name, weights, seed, backbone
        As for :func:`classifier_model`.
    centroids : numpy.ndarray, shape (k, d')
        Cluster centroids in the prepared feature space.
    preparation : (W, b), optional
        The linear preparation (standardisation, PCA) as a dense layer, from
        :func:`preparation_dense`; None when clustering used raw features.
    l2_normalize : bool, default False
        Whether the preparation ended with L2 normalisation.
    score : {"margin", "distance", "linear"}, default "margin"
        What output ``k`` is (see above).

    Returns
    -------
    keras.Model
        ``(batch, size, size, 3)`` images in 0-255 -> ``(batch, k)`` scores
        (layer ``cluster_scores``).
    """
    if score not in ("margin", "distance", "linear"):
        raise ValueError(f"score must be 'margin', 'distance' or 'linear', not {score!r}")
    inputs, z, name = _head_input(backbone_name, weights, seed, backbone)
    if preparation is not None:
        W, b = (np.asarray(a, dtype=np.float32) for a in preparation)
        dense = keras.layers.Dense(W.shape[1], name="preparation")
        z = dense(z)
        dense.set_weights([W, b])
    if l2_normalize:
        z = keras.layers.UnitNormalization(name="l2_normalize")(z)
    centroids = np.asarray(centroids, dtype=np.float32)
    if centroids.ndim != 2 or centroids.shape[1] != z.shape[-1]:
        raise ValueError(f"centroids of shape {centroids.shape} do not fit prepared features of {z.shape[-1]} "
                         "dimensions")
    scores = CentroidScores(centroids, score=score, name="cluster_scores")(z)
    return keras.Model(inputs, scores, name=f"{name}-cluster-scores")


def preparation_dense(scaler: StandardScaler | None = None, pca: PCA | None = None,
                      n_features: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Express fitted standardisation and PCA as one dense layer ``x @ W + b``.

    ``((x - mean) / scale - pca.mean_) @ components_.T`` (divided by
    ``sqrt(explained_variance_)`` when the PCA whitens) is affine in ``x``.

    Parameters
    ----------
    scaler : StandardScaler, optional
        Fitted (the ``scaler`` of :func:`cxrcluster.clustering.fit_preparation`'s
        fitted preparation); skipped when None.
    pca : PCA, optional
        Fitted on the scaler's output; skipped when None.
    n_features : int, optional
        Input dimension; needed only when both are None (identity layer).

    Returns
    -------
    W : numpy.ndarray of float64, shape (d, d')
    b : numpy.ndarray of float64, shape (d',)
    """
    if scaler is not None:
        d = int(scaler.n_features_in_)
    elif pca is not None:
        d = int(pca.n_features_in_)
    elif n_features is not None:
        d = int(n_features)
    else:
        raise ValueError("give a scaler, a PCA or n_features")
    W, b = np.eye(d), np.zeros(d)
    if scaler is not None:
        mean = scaler.mean_ if scaler.mean_ is not None else np.zeros(d)
        scale = scaler.scale_ if scaler.scale_ is not None else np.ones(d)
        W, b = np.diag(1.0 / scale), -mean / scale
    if pca is not None:
        P = pca.components_.T
        if pca.whiten:
            P = P / np.sqrt(pca.explained_variance_)
        W, b = W @ P, (b - pca.mean_) @ P
    return W, b


def cluster_centroids(X_prepared: np.ndarray, clusters) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the prepared features of each cluster (noise, negative ids, left out).

    For KMeans these are its centres at convergence, computed from the
    cluster ids alone (e.g. read back from ``clustering_labels/``); for
    another algorithm, the nearest-centroid rule they define approximates its
    assignment (check the agreement before trusting its maps).

    Parameters
    ----------
    X_prepared : numpy.ndarray, shape (n, d')
        Prepared features (:func:`cxrcluster.clustering.fit_preparation`).
    clusters : array-like of int, shape (n,)
        Cluster id of each row.

    Returns
    -------
    centroids : numpy.ndarray, shape (k, d')
        Row ``j`` is the centroid of cluster ``ids[j]``.
    ids : numpy.ndarray of int, shape (k,)
        The cluster ids, sorted.
    """
    X_prepared = np.asarray(X_prepared, dtype=np.float64)
    clusters = np.asarray(clusters).astype(int)
    ids = np.unique(clusters[clusters >= 0])
    return np.stack([X_prepared[clusters == c].mean(axis=0) for c in ids]), ids
