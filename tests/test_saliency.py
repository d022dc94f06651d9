"""Grad-CAM and saliency: maps at the input's size that find what decides, and heads that equal their sources."""

import keras
import numpy as np
import pytest
from conftest import SAMPLE_DIR, needs_sample, needs_weights
from matplotlib.figure import Figure
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import euclidean_distances

from cxrcluster import clustering, data, demo, features, images, models, probe, saliency

pytestmark = pytest.mark.filterwarnings("ignore:.*RANDOM weights:UserWarning")

SIZE = 64


def square_model(nested: bool) -> keras.Model:
    """A toy CNN in which a bright square decides the class, with hand-set weights.

    Filter 0 fires only where a 4 x 4 block is brighter than 200 (the square); filter 1 fires
    everywhere in proportion to brightness. Class 1's logit is 2 x the mean of filter 0 plus a
    little of filter 1, against a constant for class 0: with the square the image is class 1,
    without it class 0. ``nested`` wraps the convolutional part in an inner model, as the
    backbone is inside :func:`cxrcluster.saliency.classifier_model`.
    """
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(2, 4, strides=4, name="conv")(inputs)
    x = keras.layers.ReLU(name="relu")(x)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    if nested:
        inner = keras.Model(inputs, pooled, name="backbone")
        outer_in = keras.Input((SIZE, SIZE, 3))
        top = inner(keras.layers.Lambda(lambda t: t * 1.0, name="identity")(outer_in))
    else:
        outer_in, top = inputs, pooled
    dense = keras.layers.Dense(2, name="head")
    out = keras.layers.Softmax(name="probabilities")(dense(top))
    model = keras.Model(outer_in, out)
    conv = (model.get_layer("backbone") if nested else model).get_layer("conv")
    kernel = np.zeros((4, 4, 3, 2), np.float32)
    kernel[..., 0] = kernel[..., 1] = 1 / 48  # block means
    conv.set_weights([kernel, np.array([-200.0, 0.0], np.float32)])
    dense.set_weights([np.array([[0.0, 2.0], [0.0, 0.002]], np.float32), np.array([1.0, 0.0], np.float32)])
    return model


def square_image(top: int, left: int, side: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = np.repeat(rng.uniform(0, 120, (SIZE, SIZE, 1)), 3, axis=2).astype(np.float32)
    where = np.zeros((SIZE, SIZE), bool)
    where[top:top + side, left:left + side] = True
    image[where] = 250.0
    return image, where


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
def test_the_square_decides_the_class(nested):
    model = square_model(nested)
    with_square, _ = square_image(20, 36)
    without = square_image(20, 36)[0].copy()
    without[without == 250.0] = 60.0
    assert model.predict(np.stack([with_square, without]), verbose=0).argmax(axis=1).tolist() == [1, 0]
    assert saliency.find_last_conv_layer(model) == "relu"


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
@pytest.mark.parametrize("top, left", [(20, 36), (40, 8)])
def test_grad_cam_is_at_input_size_and_larger_over_the_square(nested, top, left):
    model = square_model(nested)
    image, square = square_image(top, left)
    cam = saliency.grad_cam(model, image, class_index=1)
    assert cam.shape == (SIZE, SIZE) and cam.dtype == np.float32
    assert cam.min() >= 0 and cam.max() == pytest.approx(1.0)
    assert cam.std() > 0.05  # not constant
    assert cam[square].mean() > 3 * cam[~square].mean()
    peak = np.unravel_index(np.argmax(cam), cam.shape)
    assert square[peak]


@pytest.mark.parametrize("method", [saliency.vanilla_saliency, saliency.smoothgrad])
def test_gradient_maps_are_at_input_size_and_larger_over_the_square(method):
    model = square_model(nested=True)
    image, square = square_image(36, 12)
    heat = method(model, image, class_index=1)
    assert heat.shape == (SIZE, SIZE) and 0 <= heat.min() and heat.max() <= 1
    assert heat.std() > 0.05
    assert heat[square].mean() > 3 * heat[~square].mean()


def test_smoothgrad_is_seeded_and_saliency_maps_collects_per_image():
    model = square_model(nested=False)
    image, _ = square_image(8, 8)
    a = saliency.smoothgrad(model, image, 1, n=6, seed=3)
    assert np.array_equal(a, saliency.smoothgrad(model, image, 1, n=6, seed=3))
    maps = saliency.saliency_maps(model, [image, image], [1, 0], n=4)
    assert list(maps) == list(saliency.METHODS) and all(len(v) == 2 for v in maps.values())
    assert all(m.shape == (SIZE, SIZE) for v in maps.values() for m in v)


def test_grad_cam_refuses_an_unknown_layer():
    with pytest.raises(ValueError, match="no layer 'nope'"):
        saliency.grad_cam(square_model(nested=True), square_image(0, 0)[0], 1, layer_name="nope")


# ---------------------------------------------------------------- heads on a real architecture


@pytest.fixture(scope="module")
def small_backbone():
    """A small seeded CNN standing in for a backbone (224-pixel input, 16 pooled features), and the
    features of a few synthetic chests through it with MobileNetV2-0.35's preprocessing. Random
    MobileNetV2 weights give features of about 1e-11, too degenerate to test anything with; the real
    architecture is tested with its ImageNet weights below."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((224, 224, 3))
    x = keras.layers.Conv2D(8, 5, strides=4, activation="relu")(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu", name="last_conv")(x)
    backbone = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name="small_backbone")
    spec = models.get_backbone("MobileNetV2-0.35")
    rng = np.random.default_rng(0)
    labels = np.repeat(demo.CLASSES, 4)
    batch = np.stack([images.to_model_input(demo.synthetic_xray(c, rng, size=96).astype(np.float32), 224)
                      for c in labels])
    feats = np.asarray(backbone(spec.preprocess_input()(batch.copy()))).astype(np.float64)
    return backbone, batch, feats, labels


def test_probe_head_gives_the_pipeline_probabilities(small_backbone):
    backbone, batch, feats, labels = small_backbone
    pipeline = probe.fit_probe(feats, labels, C=0.05)
    W, b, classes = probe.probe_as_dense(pipeline)
    model = saliency.classifier_model("MobileNetV2-0.35", "none", W, b, backbone=backbone)
    got = np.asarray(model(batch, training=False))
    expected = pipeline.predict_proba(feats)
    assert expected.max(axis=1).min() < 0.99  # not saturated
    np.testing.assert_allclose(got, expected, atol=2e-4)
    assert saliency.find_last_conv_layer(model) == "last_conv"
    cam = saliency.grad_cam(model, batch[0], class_index=classes.index(labels[0]))
    assert cam.shape == (224, 224) and cam.std() > 0


def expected_scores(distances: np.ndarray, score: str) -> np.ndarray:
    """What each kind of cluster score is, from the distances (up to the linear score's common term)."""
    if score == "distance":
        return -distances
    half = -0.5 * distances**2
    if score == "linear":
        return half - half.mean(axis=1, keepdims=True)
    k = distances.shape[1]
    return np.stack([half[:, j] - np.delete(half, j, axis=1).max(axis=1) for j in range(k)], axis=1)


@pytest.mark.parametrize("score", ["margin", "distance", "linear"])
@pytest.mark.parametrize("preparation", [
    {"standardize": True, "pca": 4, "l2_normalize": False},
    {"standardize": True, "pca": 4, "l2_normalize": True},
    {"standardize": False, "pca": None, "l2_normalize": False},
], ids=["standardize+pca", "standardize+pca+l2", "none"])
def test_cluster_score_argmax_is_the_kmeans_assignment(small_backbone, preparation, score):
    backbone, batch, feats, _ = small_backbone
    X_prepared, fitted = clustering.fit_preparation(feats, preparation)
    scaler, pca, l2 = fitted.scaler, fitted.pca, fitted.l2_normalize
    kmeans = KMeans(3, n_init=10, random_state=0).fit(X_prepared)
    W, b = saliency.preparation_dense(scaler, pca, n_features=feats.shape[1])
    model = saliency.cluster_score_model("MobileNetV2-0.35", "none", kmeans.cluster_centers_, (W, b),
                                         l2_normalize=l2, score=score, backbone=backbone)
    scores = np.asarray(model(batch, training=False), dtype=np.float64)
    assert len(set(kmeans.labels_)) == 3
    assert scores.argmax(axis=1).tolist() == kmeans.predict(X_prepared).tolist()
    expected = expected_scores(euclidean_distances(X_prepared, kmeans.cluster_centers_), score)
    if score == "linear":
        scores = scores - scores.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(scores, expected, rtol=2e-3, atol=2e-3 * np.abs(expected).mean())
    cam = saliency.grad_cam(model, batch[1], class_index=int(kmeans.labels_[1]))
    assert cam.shape == (224, 224) and cam.std() > 0


@pytest.mark.parametrize("whiten", [False, True])
def test_preparation_dense_equals_the_fitted_steps(whiten):
    X, _ = make_blobs(n_samples=80, n_features=10, centers=3, random_state=1)
    X = X * np.arange(1, 11)
    prepared, fitted = clustering.fit_preparation(X, {"standardize": True, "pca": 5})
    scaler, pca = fitted.scaler, fitted.pca
    if whiten:
        from sklearn.decomposition import PCA
        pca = PCA(5, whiten=True, svd_solver="covariance_eigh").fit(scaler.transform(X))
        prepared = pca.transform(scaler.transform(X))
    W, b = saliency.preparation_dense(scaler, pca)
    np.testing.assert_allclose(X @ W + b, prepared, atol=1e-9)


def test_fit_preparation_matches_the_clustering_suite():
    X, _ = make_blobs(n_samples=120, n_features=30, centers=4, random_state=5)
    for preparation in ({"standardize": True, "pca": 10}, {"standardize": True, "pca": 0.8, "l2_normalize": True}):
        ours = clustering.fit_preparation(X, preparation)[0]
        theirs, _ = clustering.prepare_features(X, preparation)
        np.testing.assert_allclose(ours, theirs, atol=1e-9)


def test_cluster_centroids_are_kmeans_centres():
    X, _ = make_blobs(n_samples=150, n_features=5, centers=3, random_state=0)
    kmeans = KMeans(3, n_init=10, random_state=0).fit(X)
    centroids, ids = saliency.cluster_centroids(X, kmeans.labels_)
    assert ids.tolist() == [0, 1, 2]
    np.testing.assert_allclose(centroids, kmeans.cluster_centers_, atol=1e-8)
    _, ids = saliency.cluster_centroids(X, np.where(kmeans.labels_ == 2, -1, kmeans.labels_))
    assert ids.tolist() == [0, 1]


def test_choose_examples_is_per_class_and_seeded():
    labels = np.array(["B"] * 5 + ["A"] * 3 + ["C"] * 1)
    rows = saliency.choose_examples(labels, per_class=2, seed=1)
    assert [labels[r] for r in rows] == ["A", "A", "B", "B", "C"]
    assert rows == saliency.choose_examples(labels, per_class=2, seed=1)


def test_saliency_grid_draws_one_row_per_image_and_one_column_per_kind():
    image, square = square_image(8, 8)
    maps = {"Grad-CAM": [square.astype(float)] * 2, "SmoothGrad": [square * 0.5] * 2}
    fig = saliency.saliency_grid([image, image[..., 0]], maps, ["first", "second"], data_note="toy data")
    assert isinstance(fig, Figure)
    assert "toy data" in fig._suptitle.get_text()
    rows = fig.subfigs
    assert [row._suptitle.get_text() for row in rows] == ["first", "second"]
    assert [len([ax for ax in row.axes if ax.images]) for row in rows] == [3, 3]
    assert [ax.get_title() for ax in rows[0].axes if ax.images] == ["image", "Grad-CAM", "SmoothGrad"]
    with pytest.raises(ValueError, match="1 Grad-CAM maps for 2 images"):
        saliency.saliency_grid([image, image], {"Grad-CAM": [square]})


@pytest.mark.shared
@needs_sample
@needs_weights
def test_real_backbone_heads_match_extracted_features():
    """The models see what feature extraction saw: the probe's probabilities and KMeans' clusters
    come out the same from images as from the extracted features."""
    labels = data.scan_dataset(SAMPLE_DIR)
    rows = saliency.choose_examples(labels["label"], per_class=2, seed=0)
    paths = data.resolve_image_paths(labels.iloc[rows], SAMPLE_DIR)
    feats, _ = features.extract_features(paths, "MobileNetV2-0.35", "imagenet", batch_size=6, progress=False)
    pipeline = probe.fit_probe(feats, labels["label"].iloc[rows], C=0.01)
    W, b, classes = probe.probe_as_dense(pipeline)
    backbone, _ = models.build_backbone("MobileNetV2-0.35", "imagenet")
    model = saliency.classifier_model("MobileNetV2-0.35", "imagenet", W, b, backbone=backbone)
    batch = np.stack([images.load_image(p, 224) for p in paths])
    np.testing.assert_allclose(np.asarray(model(batch)), pipeline.predict_proba(feats), atol=1e-4)
    assert saliency.find_last_conv_layer(model) == "out_relu"
    cam = saliency.grad_cam(model, batch[0], classes.index(labels["label"].iloc[rows[0]]))
    assert cam.shape == (224, 224) and cam.std() > 0.05

    X_prepared, fitted = clustering.fit_preparation(feats, {"standardize": True, "pca": 4})
    scaler, pca = fitted.scaler, fitted.pca
    kmeans = KMeans(3, n_init=10, random_state=0).fit(X_prepared)
    scores = saliency.cluster_score_model("MobileNetV2-0.35", "imagenet", kmeans.cluster_centers_,
                                          saliency.preparation_dense(scaler, pca), backbone=backbone)(batch)
    assert np.asarray(scores).argmax(axis=1).tolist() == kmeans.labels_.tolist()
