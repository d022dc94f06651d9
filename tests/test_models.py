"""The backbone registry: architectures, feature sizes, preprocessing and weights handling.

No ImageNet weights but MobileNetV2-0.35's are available offline, so every architecture is
checked here with random weights (weights=None); real weights are exercised in test_features.
"""

import numpy as np
import pytest

from cxrcluster import models

IMAGENET_MEAN_RGB = np.array([123.68, 116.779, 103.939], np.float32)


def expected_preprocessing(kind, x):
    """Independent statement of each family's documented preprocessing."""
    if kind == "none":
        return x
    if kind == "tf":
        return x / 127.5 - 1.0
    if kind == "caffe":
        return (x - IMAGENET_MEAN_RGB)[..., ::-1]
    if kind == "torch":
        return (x / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    raise AssertionError(kind)


def test_registry_lists_the_ten_backbones():
    assert models.expand_models("all") == [
        "EfficientNetB0", "ResNet50", "ResNet152", "VGG19", "DenseNet121", "InceptionV3", "Xception",
        "MobileNetV2", "MobileNetV2-0.35", "MobileNetV3Large"]
    assert models.expand_models("ResNet50, VGG19") == ["ResNet50", "VGG19"]
    with pytest.raises(KeyError, match="unknown model 'ResNet18'"):
        models.expand_models("ResNet50 ResNet18")
    assert all("_" not in name for name in models.BACKBONES)  # file names are <Model>_<Algo>.csv


@pytest.mark.parametrize("name", list(models.BACKBONES))
def test_preprocessing_matches_keras_family_and_documented_formula(name):
    import keras

    b = models.BACKBONES[name]
    pixels = np.array([[[[0.0, 0.0, 0.0], [255.0, 128.0, 7.0]], [[30.0, 60.0, 90.0], [255.0, 255.0, 255.0]]]],
                      np.float32)
    ours = np.asarray(b.preprocess_input()(pixels.copy()))
    keras_family = np.asarray(getattr(keras.applications, b.family).preprocess_input(pixels.copy()))
    np.testing.assert_allclose(ours, keras_family, rtol=1e-6)
    np.testing.assert_allclose(ours, expected_preprocessing(b.preprocessing, pixels), rtol=1e-5, atol=1e-5)
    assert not np.allclose(ours, pixels / 255.0)  # the original study's bug


@pytest.mark.slow
@pytest.mark.parametrize("name", list(models.BACKBONES))
def test_every_backbone_builds_and_yields_its_dimension(name):
    b = models.BACKBONES[name]
    with pytest.warns(UserWarning, match="RANDOM weights"):
        model, prov = models.build_backbone(name, "none", seed=0)
    x = np.random.default_rng(0).uniform(0, 255, (2, b.input_size, b.input_size, 3)).astype(np.float32)
    out = np.asarray(model(b.preprocess_input()(x), training=False))
    assert out.shape == (2, b.feature_dim)
    assert model.input_shape == (None, b.input_size, b.input_size, 3)
    assert prov == {"weights": "none", "weights_file": None, "weights_sha256": None, "trained": False}


def test_missing_imagenet_weights_stop_with_a_message_naming_the_way_out(monkeypatch):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: no network")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(models.WeightsUnavailableError) as err:
        models.build_backbone("ResNet50", "imagenet")
    msg = str(err.value)
    for needle in ["resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", str(models.keras_cache_dir()),
                   "KERAS_HOME", "WEIGHTS=none"]:
        assert needle in msg


@pytest.mark.slow  # three full-size builds
def test_weights_file_path_loads_those_weights(tmp_path):
    with pytest.warns(UserWarning):
        source, _ = models.build_backbone("MobileNetV2-0.35", "none", seed=1)
    path = tmp_path / "mine.weights.h5"
    source.save_weights(path)
    with pytest.warns(UserWarning):
        other, _ = models.build_backbone("MobileNetV2-0.35", "none", seed=2)
    loaded, prov = models.build_backbone("MobileNetV2-0.35", str(path))
    x = np.random.default_rng(0).uniform(-1, 1, (1, 224, 224, 3)).astype(np.float32)
    # random-weight features are tiny (about 1e-10), so compare relatively
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(source(x)), rtol=1e-4, atol=0)
    assert not np.allclose(np.asarray(other(x)), np.asarray(source(x)), rtol=1e-2, atol=0)
    assert prov["weights"] == "file" and prov["weights_sha256"] == models.sha256_file(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.build_backbone("MobileNetV2-0.35", str(tmp_path / "nope.h5"))
