"""Grad-CAM and gradient saliency maps: where in an image a decision comes from.

Two differentiable decisions are explained, both built on a frozen backbone
without any fine-tuning:

- the *class* decision of the linear probe (:mod:`cxrcluster.probe`), folded
  into one dense layer on top of the backbone (:func:`classifier_model`);
- the *cluster* decision of KMeans: output ``k`` of
  :func:`cluster_score_model` compares the distances of the image's prepared
  features to the centroids (by default the margin of centroid ``k`` over the
  runner-up; minus the distance is available). The preparation used before
  clustering (standardisation, PCA) is linear, so it is one more dense layer
  (:func:`preparation_dense`); the optional L2 normalisation is a layer too.
  The largest score is the assigned cluster, and its Grad-CAM shows what in
  the image sends it there.

Both models take images as :func:`cxrcluster.images.load_image` returns them
(0-255, the model's input size) and apply the backbone's own
``preprocess_input`` inside, so gradients are taken with respect to the
image's pixels.

Maps (all ``(H, W)`` float arrays in [0, 1] at the input's size):

- :func:`grad_cam`: class-discriminative, coarse (the resolution of the last
  convolutional block, 7 x 7 for 224-pixel MobileNetV2 inputs, upsampled
  bilinearly). The score differentiated is the pre-softmax logit when the
  model ends with a ``Softmax`` layer.
- :func:`vanilla_saliency`: the absolute gradient of the score with respect
  to each pixel's luminance; fine but noisy.
- :func:`smoothgrad`: the vanilla gradient averaged over noisy copies of the
  image (Smilkov et al., 2017); less noisy.

What they cannot show: that the model is right, or why in clinical terms. A
map says which pixels changed the score, for this model, on this image.
"""

from __future__ import annotations

import textwrap
import weakref
from collections.abc import Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler, normalize

from cxrcluster import models
from cxrcluster.figures import with_data_note

# ---------------------------------------------------------------- models


def _head_input(backbone_name: str, weights: str, seed: int, backbone):
    spec = models.get_backbone(backbone_name)
    if backbone is None:
        backbone, _ = models.build_backbone(backbone_name, weights, seed=seed)
    size = spec.input_size
    inputs = keras.Input((size, size, 3), name="image_0_255")
    x = keras.layers.Lambda(spec.preprocess_input(), name="preprocess_input")(inputs)
    return inputs, backbone(x)


def classifier_model(backbone_name: str, weights: str, W: np.ndarray, b: np.ndarray, seed: int = 0,
                     backbone: keras.Model | None = None) -> keras.Model:
    """The backbone with a linear probe as its differentiable head.

    Parameters
    ----------
    backbone_name : str
        A key of :data:`cxrcluster.models.BACKBONES`.
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
    inputs, features = _head_input(backbone_name, weights, seed, backbone)
    if W.shape != (features.shape[-1], b.shape[0]):
        raise ValueError(f"W of shape {W.shape} and b of shape {b.shape} do not fit {features.shape[-1]} features")
    dense = keras.layers.Dense(W.shape[1], name="probe")
    logits = dense(features)
    dense.set_weights([W, b])
    outputs = keras.layers.Softmax(name="probabilities")(logits)
    return keras.Model(inputs, outputs, name=f"{backbone_name}-probe")


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
    inputs, z = _head_input(backbone_name, weights, seed, backbone)
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
    return keras.Model(inputs, scores, name=f"{backbone_name}-cluster-scores")


def fit_preparation(X: np.ndarray, preparation: Mapping) -> tuple[np.ndarray, StandardScaler | None,
                                                                     PCA | None, bool]:
    """Fit the clustering's feature preparation as scikit-learn objects.

    Gives the same prepared features as
    :func:`cxrcluster.clustering.prepare_features` with the same
    configuration (standardise, then PCA with the exact covariance solver,
    then L2 normalisation), and keeps the fitted steps so that
    :func:`preparation_dense` can turn them into a layer.

    Parameters
    ----------
    X : numpy.ndarray, shape (n, d)
        Features without non-finite rows.
    preparation : mapping
        The ``preparation`` section of the clustering configuration:
        ``standardize`` (bool), ``pca`` (None, a number of components or a
        fraction of variance), ``l2_normalize`` (bool).

    Returns
    -------
    X_prepared : numpy.ndarray of float64
    scaler : StandardScaler or None
    pca : PCA or None
    l2_normalize : bool
    """
    X = np.asarray(X, dtype=np.float64)
    scaler = pca = None
    if preparation.get("standardize"):
        scaler = StandardScaler().fit(X)
        X = scaler.transform(X)
    wanted = preparation.get("pca")
    if wanted not in (None, 0, False):
        is_count = isinstance(wanted, int | np.integer) and not isinstance(wanted, bool)
        pca = PCA(n_components=min(wanted, *X.shape) if is_count else wanted, svd_solver="covariance_eigh")
        X = pca.fit_transform(X)
    l2 = bool(preparation.get("l2_normalize"))
    if l2:
        X = normalize(X)
    return X, scaler, pca, l2


def preparation_dense(scaler: StandardScaler | None = None, pca: PCA | None = None,
                      n_features: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Express fitted standardisation and PCA as one dense layer ``x @ W + b``.

    ``((x - mean) / scale - pca.mean_) @ components_.T`` (divided by
    ``sqrt(explained_variance_)`` when the PCA whitens) is affine in ``x``.

    Parameters
    ----------
    scaler : StandardScaler, optional
        Fitted; skipped when None.
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
        Prepared features (:func:`fit_preparation`).
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


# ---------------------------------------------------------------- differentiating a model


def _is_softmax(layer) -> bool:
    if isinstance(layer, keras.layers.Softmax):
        return True
    return isinstance(layer, keras.layers.Activation) and getattr(layer.activation, "__name__", "") == "softmax"


def _inner_models(model: keras.Model):
    return [layer for layer in model.layers if isinstance(layer, keras.Model)]


def _spatial_layers(model: keras.Model) -> list:
    """Layers with a 4-D output of more than one position, in order, nested models opened."""
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.Model):
            out.extend(_spatial_layers(layer))
            continue
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):  # a layer called more than once has no single output
            continue
        if len(shape) == 4 and (shape[1] or 2) * (shape[2] or 2) > 1:
            out.append(layer)
    return out


def find_last_conv_layer(model: keras.Model) -> str:
    """Name of the last layer with a spatial (4-D, more than 1 x 1) output, nested models included.

    For the registered backbones this is the activation after the last
    convolution (``out_relu`` for MobileNetV2), the usual Grad-CAM layer.
    """
    layers = [layer for layer in _spatial_layers(model) if not isinstance(layer, keras.layers.Lambda)]
    if not layers:
        raise ValueError(f"model {model.name!r} has no layer with a spatial output")
    return layers[-1].name


def _find_layer(model: keras.Model, name: str):
    for layer in model.layers:
        if layer.name == name:
            return layer
    for inner in _inner_models(model):
        found = _find_layer(inner, name)
        if found is not None:
            return found
    return None


_SPLITS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _split(model: keras.Model, layer_name: str | None, logits: bool):
    """:func:`_make_split`, built once per model, layer and score."""
    try:
        cache = _SPLITS.setdefault(model, {})
    except TypeError:  # not weak-referenceable: build every time
        return _make_split(model, layer_name, logits)
    key = (layer_name, logits)
    if key not in cache:
        cache[key] = _make_split(model, layer_name, logits)
    return cache[key]


def _make_split(model: keras.Model, layer_name: str | None, logits: bool):
    """A function ``x -> (activations of layer_name or None, scores)``.

    Scores are the model's output, or the input of its final ``Softmax`` layer
    when ``logits``. A layer inside a nested model (the backbone inside the
    classifier) is reached by running the outer model's layers as a chain,
    which is checked against the model's own output.
    """
    last = model.layers[-1]
    out = last.input if logits and _is_softmax(last) else model.output
    target = None
    if layer_name is not None:
        target = _find_layer(model, layer_name)
        if target is None:
            raise ValueError(f"model {model.name!r} has no layer {layer_name!r}")
    if target is None or any(layer is target for layer in model.layers):
        sub = keras.Model(model.inputs, [target.output if target is not None else out, out])
        return lambda x: sub(x, training=False)

    holder = next(inner for inner in _inner_models(model) if _find_layer(inner, layer_name) is not None)
    inner_split = _make_split(holder, layer_name, logits=False)
    steps = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    if logits and _is_softmax(last):
        steps = steps[:-1]

    def run(x):
        activations = None
        for layer in steps:
            if layer is holder:
                activations, x = inner_split(x)
            else:
                x = layer(x, training=False)
        return activations, x

    reference = keras.Model(model.inputs, out)
    verified = []

    def checked(x):
        activations, scores = run(x)
        if not verified:  # once per model: the chain gives the model's own output
            expected = reference(x, training=False)
            if not np.allclose(np.asarray(scores), np.asarray(expected), rtol=1e-3, atol=1e-4):
                raise ValueError(f"model {model.name!r} is not a chain of layers around {holder.name!r}: "
                                 f"cannot reach layer {layer_name!r} inside it")
            verified.append(True)
        return activations, scores

    return checked


def _batch(image: np.ndarray) -> tf.Tensor:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"expected one (H, W, 3) image, got shape {image.shape}")
    return tf.convert_to_tensor(image)


def _resize(heatmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if heatmap.shape == shape:
        return heatmap.astype(np.float32)
    resized = Image.fromarray(heatmap.astype(np.float32), mode="F").resize(
        (shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def _unit(heatmap: np.ndarray, clip_percentile: float | None = None) -> np.ndarray:
    heatmap = np.maximum(np.asarray(heatmap, dtype=np.float32), 0.0)
    top = float(np.percentile(heatmap, clip_percentile)) if clip_percentile else float(heatmap.max())
    if not np.isfinite(top) or top <= 0:
        return np.zeros_like(heatmap)
    return np.clip(heatmap / top, 0.0, 1.0)


def grad_cam(model: keras.Model, image: np.ndarray, class_index: int, layer_name: str | None = None,
             logits: bool = True) -> np.ndarray:
    """Grad-CAM map of one output of ``model`` for one image (Selvaraju et al., 2017).

    The activations ``A`` of a convolutional layer are weighted by the mean
    gradient of the score over each channel's positions, summed over
    channels, passed through a ReLU (only evidence *for* the output counts),
    upsampled bilinearly to the image's size and divided by their maximum.

    Parameters
    ----------
    model : keras.Model
        E.g. :func:`classifier_model` or :func:`cluster_score_model`.
    image : numpy.ndarray
        ``(H, W, 3)`` (or ``(H, W)`` luminance) in the model's input scale.
    class_index : int
        The output explained (class, or cluster column).
    layer_name : str, optional
        The convolutional layer; by default :func:`find_last_conv_layer`.
    logits : bool, default True
        Differentiate the input of a final ``Softmax`` layer (the logit), as
        in the Grad-CAM paper, rather than the probability.

    Returns
    -------
    numpy.ndarray of float32, shape (H, W)
        In [0, 1]; all zeros when no position has positive evidence.
    """
    x = _batch(image)
    run = _split(model, layer_name or find_last_conv_layer(model), logits)
    with tf.GradientTape() as tape:
        activations, scores = run(x)
        score = scores[:, class_index]
    grads = tape.gradient(score, activations)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * activations, axis=-1))[0].numpy()
    return _unit(_resize(cam, tuple(x.shape[1:3])))


def _input_gradients(model: keras.Model, images: np.ndarray, class_index: int, logits: bool,
                     batch_size: int) -> np.ndarray:
    run = _split(model, None, logits)
    out = []
    for start in range(0, len(images), batch_size):
        x = tf.convert_to_tensor(images[start:start + batch_size])
        with tf.GradientTape() as tape:
            tape.watch(x)
            _, scores = run(x)
            score = tf.reduce_sum(scores[:, class_index])  # samples are independent: sum = per-sample grads
        out.append(tape.gradient(score, x).numpy())
    # the three channels are one grey pixel repeated: its gradient is their sum
    return np.concatenate(out).sum(axis=-1)


def vanilla_saliency(model: keras.Model, image: np.ndarray, class_index: int, logits: bool = True,
                     clip_percentile: float = 99.0) -> np.ndarray:
    """Absolute gradient of one output with respect to each pixel (Simonyan et al., 2014).

    Parameters
    ----------
    model, image, class_index, logits
        As for :func:`grad_cam`.
    clip_percentile : float, default 99.0
        The map is divided by this percentile and clipped to 1, so that a few
        extreme pixels do not make the rest invisible.

    Returns
    -------
    numpy.ndarray of float32, shape (H, W)
        In [0, 1].
    """
    x = _batch(image).numpy()
    grads = _input_gradients(model, x, class_index, logits, batch_size=1)[0]
    return _unit(np.abs(grads), clip_percentile)


def smoothgrad(model: keras.Model, image: np.ndarray, class_index: int, n: int = 25, sigma: float = 0.15,
               seed: int = 0, logits: bool = True, clip_percentile: float = 99.0,
               batch_size: int = 8) -> np.ndarray:
    """Gradient averaged over noisy copies of the image (SmoothGrad, Smilkov et al., 2017).

    Parameters
    ----------
    model, image, class_index, logits, clip_percentile
        As for :func:`vanilla_saliency`.
    n : int, default 25
        Noisy copies.
    sigma : float, default 0.15
        Standard deviation of the Gaussian noise, as a fraction of the image's
        value range (the paper finds 10-20 % best).
    seed : int, default 0
        Seeds the noise.
    batch_size : int, default 8
        Copies per forward pass.

    Returns
    -------
    numpy.ndarray of float32, shape (H, W)
        The absolute value of the mean gradient, in [0, 1].
    """
    x = _batch(image).numpy()[0]
    spread = float(x.max() - x.min()) or 1.0
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, sigma * spread, size=(n, *x.shape[:2], 1)).astype(np.float32)
    noisy = x[None] + noise  # the same noise on the three channels: the copies stay grey images
    grads = _input_gradients(model, noisy, class_index, logits, batch_size)
    return _unit(np.abs(grads.mean(axis=0)), clip_percentile)


#: The maps :func:`saliency_maps` can compute, by name.
METHODS = {"Grad-CAM": grad_cam, "vanilla gradient": vanilla_saliency, "SmoothGrad": smoothgrad}


def saliency_maps(model: keras.Model, images: Sequence[np.ndarray], class_indices: Sequence[int],
                  methods: Sequence[str] = tuple(METHODS), **kwargs) -> dict[str, list[np.ndarray]]:
    """Compute several maps for several images, each for its own output.

    Parameters
    ----------
    model : keras.Model
        The model explained.
    images : sequence of numpy.ndarray
        ``(H, W, 3)`` inputs.
    class_indices : sequence of int
        The output explained for each image.
    methods : sequence of str
        Keys of :data:`METHODS`.
    **kwargs
        Passed to :func:`smoothgrad` (``n``, ``sigma``, ``seed``).

    Returns
    -------
    dict of str to list of numpy.ndarray
        Method name -> one map per image, in order; ready for
        :func:`saliency_grid`.
    """
    if len(images) != len(class_indices):
        raise ValueError(f"{len(images)} images for {len(class_indices)} class indices")
    out = {}
    for name in methods:
        fn = METHODS[name]
        extra = kwargs if fn is smoothgrad else {}
        out[name] = [fn(model, img, int(k), **extra) for img, k in zip(images, class_indices, strict=True)]
    return out


def choose_examples(labels, per_class: int = 2, seed: int = 0) -> list[int]:
    """Row indices of ``per_class`` randomly chosen images of each class, classes in sorted order.

    Parameters
    ----------
    labels : array-like of str
        Class of each image.
    per_class : int, default 2
        Images per class (fewer when a class has fewer).
    seed : int, default 0
        Seeds the choice.

    Returns
    -------
    list of int
    """
    labels = np.asarray(labels).astype(str)
    rng = np.random.default_rng(seed)
    rows = []
    for c in sorted(np.unique(labels)):
        members = np.flatnonzero(labels == c)
        rows.extend(sorted(rng.choice(members, size=min(per_class, len(members)), replace=False).tolist()))
    return [int(r) for r in rows]


# ---------------------------------------------------------------- figure


def saliency_grid(images: Sequence[np.ndarray], maps: Sequence[np.ndarray] | Mapping[str, Sequence[np.ndarray]],
                  titles: Sequence[str] | None = None, data_note: str = "",
                  title: str = "Saliency maps", alpha: float = 0.5, cmap: str = "jet") -> Figure:
    """Draw each image beside its maps, overlaid in colour.

    Parameters
    ----------
    images : sequence of numpy.ndarray
        ``(H, W)`` or ``(H, W, 3)`` images in 0-255, one row each.
    maps : sequence of numpy.ndarray, or mapping of str to sequence
        One ``(H, W)`` map in [0, 1] per image, or several kinds of map by
        name (one column each, e.g. from :func:`saliency_maps`).
    titles : sequence of str, optional
        One line per row, e.g. ``"COVID/x.png: label COVID, probe NORMAL (0.71)"``.
    data_note : str, default ""
        Which data, appended to the title.
    title : str, default "Saliency maps"
        What is shown (model, decision explained).
    alpha : float, default 0.5
        Opacity of the maps where they are 1; it falls with the map's value,
        so that pixels of no relevance show the image unchanged.
    cmap : str, default "jet"
        Colour map of the maps.

    Returns
    -------
    matplotlib.figure.Figure
        One subfigure per image (its title above it), each ``1 + number of
        kinds`` axes and a colour bar.
    """
    columns = dict(maps) if isinstance(maps, Mapping) else {"map": list(maps)}
    for name, column in columns.items():
        if len(column) != len(images):
            raise ValueError(f"{len(column)} {name} maps for {len(images)} images")
    n_rows, n_cols = len(images), 1 + len(columns)
    fig = Figure(figsize=(2.4 * n_cols + 1.0, 2.7 * n_rows + 1.0), layout="constrained")
    # one subfigure per image: its line of text sits above its own row, never over a column heading
    rows = np.atleast_1d(fig.subfigures(n_rows, 1))
    colour_map = colormaps[cmap]
    for i, (row, image) in enumerate(zip(rows, images, strict=True)):
        axes = np.atleast_1d(row.subplots(1, n_cols))
        grey = np.asarray(image, dtype=np.float32)
        grey = grey.mean(axis=-1) if grey.ndim == 3 else grey
        axes[0].imshow(grey, cmap="gray", vmin=0, vmax=255)
        if i == 0:
            axes[0].set_title("image", fontsize="small")
        shown = None
        for j, (name, column) in enumerate(columns.items(), start=1):
            axes[j].imshow(grey, cmap="gray", vmin=0, vmax=255)
            heat = np.clip(np.asarray(column[i], dtype=np.float32), 0.0, 1.0)
            # opacity follows relevance: irrelevant pixels stay visible as they are
            shown = axes[j].imshow(heat, cmap=colour_map, vmin=0, vmax=1, alpha=alpha * heat)
            if i == 0:
                axes[j].set_title(textwrap.fill(name, 24), fontsize="small")
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
        if shown is not None:
            row.colorbar(shown, ax=axes.tolist(), shrink=0.8, aspect=15)
        if titles is not None:
            row.suptitle(titles[i], fontsize="small", x=0.01, ha="left")
    fig.suptitle(with_data_note(f"{title}\n(colour: relevance, 1 = the map's maximum, 0 = none)", data_note))
    return fig
