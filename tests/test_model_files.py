"""Backbones from files: a weights file with a head for a registered architecture, and whole Keras models.

Every model here is built with random weights (no other weights exist offline): the checks are that the
pipeline's features equal the model's own chosen layer computed directly in Keras, and that every bad file
is refused, naming what is wrong, before anything is written.
"""

from __future__ import annotations

import sys
import textwrap
import warnings

import h5py
import keras
import numpy as np
import pytest

from cxrcluster import demo, features, images, model_files, models, saliency
from cxrcluster.model_files import ModelFileError


@pytest.fixture(scope="module")
def tiny_images(tmp_path_factory):
    root = demo.write_demo_dataset(tmp_path_factory.mktemp("data") / "demo", per_class=2, size=80)
    return sorted(root.rglob("*.png"))


def random_backbone(name="MobileNetV2-0.35", seed=1):
    with pytest.warns(UserWarning, match="RANDOM"):
        return models.build_backbone(name, "none", seed=seed)[0]


def grey_cnn(size=64, channels=1, name="grey"):
    """A small CNN of one input channel and its own input size, with a 3-class head."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((size, size, channels))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv_a")(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu", name="conv_b")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(12, activation="relu", name="embedding")(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="head")(x), name=name)


def direct(model_output, paths, size, scale, channels):
    """The model's own output for the images, computed here: load_image, the scaling, the channels."""
    x = np.stack([images.load_image(p, size) for p in paths]).astype(np.float32)
    x = scale(x)[..., :channels]
    return np.asarray(model_output(x))


# ---- a weights file with a head ---------------------------------------------------------------
@pytest.mark.slow  # a full-size network built and saved: these six tests take about 40 s
def test_keras3_saving_paths_are_those_keras_writes(tmp_path, source):
    backbone = source
    backbone.save_weights(tmp_path / "b.weights.h5")
    with h5py.File(tmp_path / "b.weights.h5") as f:
        written = set(model_files._keras3_arrays(f))
    ours = {path for path, layer in model_files._keras3_paths(backbone) if layer.weights}
    assert len(ours) > 100 and ours <= written


@pytest.fixture(scope="module")
def source():
    """A MobileNetV2-0.35 with random weights (seed 1), built once for the weights-file tests."""
    return random_backbone(seed=1)


def with_head(backbone, n=14):
    out = keras.layers.Dense(n, activation="sigmoid", name="predictions")(backbone.output)
    return keras.Model(backbone.input, out)


@pytest.mark.slow
@pytest.mark.parametrize("form", ["legacy h5 (Keras 2 save_weights)", "keras3 flat", "keras3 nested"])
def test_a_weights_file_with_a_head_loads_the_backbone_and_ignores_the_head(tmp_path, form, source):
    path = tmp_path / ("chexnet.h5" if form.startswith("legacy") else "chexnet.weights.h5")
    if form.startswith("legacy"):
        from keras.src.legacy.saving import legacy_h5_format

        with h5py.File(path, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, with_head(source))
    elif form == "keras3 flat":
        with_head(source).save_weights(path)
    else:
        keras.Sequential([keras.Input((224, 224, 3)), source, keras.layers.Dense(14, name="predictions")]
                         ).save_weights(path)
    loaded, prov = models.build_backbone("MobileNetV2-0.35", str(path))
    x = np.random.default_rng(0).uniform(-1, 1, (2, 224, 224, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(source(x)), rtol=1e-5, atol=0)
    assert prov["tensors_loaded"] == len(source.weights) and prov["tensors_ignored"] == 2  # the head's kernel, bias
    assert prov["trained"] is True and "not ImageNet's" in prov["weights_note"]
    assert prov["weights_sha256"] == models.sha256_file(path)
    assert ("by layer name" in prov["weights_format"]) == form.startswith("legacy")


@pytest.mark.slow  # builds DenseNet121 twice
def test_a_densenet121_chexnet_style_weights_file_loads(tmp_path):
    """The common CheXNet release: DenseNet121 with a 14-output sigmoid layer, saved by Keras 2's save_weights."""
    from keras.src.legacy.saving import legacy_h5_format

    source = random_backbone("DenseNet121", seed=4)
    path = tmp_path / "brucechou1983_CheXNet_Keras_0.3.0_weights.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, with_head(source))
    loaded, prov = models.build_backbone("DenseNet121", str(path))
    x = np.random.default_rng(0).uniform(-2, 2, (1, 224, 224, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(source(x)), rtol=1e-5, atol=1e-7)
    assert prov["tensors_ignored"] == 2 and prov["tensors_loaded"] == len(source.weights)


@pytest.mark.slow
def test_a_weights_file_missing_or_misshaping_backbone_layers_is_refused_naming_them(tmp_path, source):
    path = tmp_path / "w.h5"
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, source)
    with h5py.File(path, "a") as f:
        del f["Conv1"]
        names = [n for n in f.attrs["layer_names"] if n != b"Conv1"]
        f.attrs["layer_names"] = names
    with pytest.raises(ModelFileError, match=r"Conv1 \(missing\)"):
        models.build_backbone("MobileNetV2-0.35", str(path))
    with pytest.raises(ModelFileError, match=r"1 of its .* layers .*Conv1"):
        models.build_backbone("MobileNetV2-0.35", str(path))
    wider = tmp_path / "wider.weights.h5"
    random_backbone("MobileNetV2").save_weights(wider)  # alpha 1.0: every shape differs from alpha 0.35's
    with pytest.raises(ModelFileError, match=r"Conv1 \(file \[\(3, 3, 3, 32\)\], backbone \[\(3, 3, 3, 16\)\]\)"):
        models.build_backbone("MobileNetV2-0.35", str(wider))
    (tmp_path / "not.h5").write_bytes(b"not hdf5")
    with pytest.raises(ModelFileError, match="not an HDF5 weights file"):
        models.build_backbone("MobileNetV2-0.35", str(tmp_path / "not.h5"))


# ---- whole models -----------------------------------------------------------------------------
def test_a_grey_keras_model_of_its_own_size_gives_its_pooling_layers_output(tmp_path, tiny_images):
    model = grey_cnn(64)
    path = tmp_path / "my grey cnn.keras"
    model.save(path)
    spec = models.get_backbone(str(path), preprocess="xray")
    assert (spec.input_size, spec.channels, spec.feature_dim) == (64, 1, 16)
    assert spec.name == f"my-grey-cnn-{model_files.sha256_path(path)[:8]}" and "_" not in spec.name
    assert spec.chosen == "the last global pooling layer, 'pool'" and not spec.pooled
    X, prov = features.extract_features(tiny_images, spec, progress=False)
    expected = direct(keras.Model(model.inputs, model.get_layer("pool").output), tiny_images, 64,
                      lambda x: x / 255.0 * 2048.0 - 1024.0, 1)
    np.testing.assert_allclose(X, expected, rtol=1e-5, atol=1e-6)
    again, _ = features.extract_features(tiny_images, spec, progress=False)
    assert again.tobytes() == X.tobytes()
    assert prov["model"] == spec.name and prov["model_file_sha256"] == spec.sha256
    assert prov["input_size"] == [64, 64, 1] and prov["preprocessing"]["mode"] == "xray"
    assert prov["weights"] == "model file" and prov["trained"] is True
    assert prov["preprocessing"]["image_input"].endswith("one channel")


def test_feature_layer_a_feature_map_is_pooled_and_a_classifier_gives_its_last_dense_input(tmp_path, tiny_images):
    model = grey_cnn(64, channels=3)
    path = tmp_path / "rgb.keras"
    model.save(path)
    spec = models.get_backbone(str(path), preprocess="tf", feature_layer="conv_b")
    assert spec.pooled and spec.feature_dim == 16
    X, _ = features.extract_features(tiny_images, spec, progress=False)
    conv = keras.Model(model.inputs, model.get_layer("conv_b").output)
    expected = direct(lambda x: np.asarray(conv(x)).mean(axis=(1, 2)), tiny_images, 64, lambda x: x / 127.5 - 1, 3)
    np.testing.assert_allclose(X, expected, rtol=1e-5, atol=1e-6)
    # no pooling layer: the input of the last dense layer
    inputs = keras.Input((32, 32, 3))
    flat = keras.layers.Flatten(name="flat")(keras.layers.Conv2D(2, 3, name="c")(inputs))
    mlp = keras.Model(inputs, keras.layers.Dense(3, name="out")(keras.layers.Dense(5, name="hidden")(flat)))
    mlp.save(tmp_path / "mlp.keras")
    spec = models.get_backbone(str(tmp_path / "mlp.keras"), preprocess="raw")
    assert spec.chosen == "the input of the last dense layer, 'out'" and spec.feature_dim == 5


def test_a_savedmodel_gives_its_serving_output(tmp_path, tiny_images):
    model = grey_cnn(48, channels=3, name="exported")
    features_model = keras.Model(model.inputs, model.get_layer("embedding").output)
    features_model.export(str(tmp_path / "saved"), verbose=False)
    spec = models.get_backbone(str(tmp_path / "saved"), preprocess="raw")
    assert (spec.kind, spec.input_size, spec.feature_dim) == ("savedmodel", 48, 12)
    X, _ = features.extract_features(tiny_images, spec, progress=False)
    np.testing.assert_allclose(X, direct(features_model, tiny_images, 48, lambda x: x, 3), rtol=1e-5, atol=1e-6)


def test_a_model_file_without_a_stated_size_needs_input_size(tmp_path):
    inputs = keras.Input((None, None, 1))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    keras.Model(inputs, x).save(tmp_path / "any.keras")
    with pytest.raises(ModelFileError, match="INPUT_SIZE="):
        models.get_backbone(str(tmp_path / "any.keras"), preprocess="raw")
    assert models.get_backbone(str(tmp_path / "any.keras"), preprocess="raw", input_size=96).input_size == 96
    grey_cnn(64).save(tmp_path / "g.keras")
    with pytest.raises(ModelFileError, match="INPUT_SIZE=96 disagrees with the 64-pixel input"):
        models.get_backbone(str(tmp_path / "g.keras"), preprocess="xray", input_size=96)


@keras.saving.register_keras_serializable(package="cxrtest")
class Doubling(keras.layers.Layer):
    def call(self, x):
        return 2.0 * x


def test_bad_model_files_are_refused_before_any_work_and_nothing_is_written(tmp_path, tiny_images):
    def refused(path, match, **options):
        with pytest.raises(ModelFileError, match=match):
            models.get_backbone(str(path), **{"preprocess": "raw", **options})

    (tmp_path / "junk.keras").write_bytes(b"PK not really a model")
    refused(tmp_path / "junk.keras", "not a Keras model")
    (tmp_path / "model.pt").write_bytes(b"torch")
    refused(tmp_path / "model.pt", "PyTorch checkpoints: convert them to Keras first")
    refused(tmp_path / "absent.keras", "does not exist")
    grey_cnn(64).save(tmp_path / "g.keras")
    refused(tmp_path / "g.keras", "PREPROCESS=", preprocess=None)
    refused(tmp_path / "g.keras", "one-channel model takes tf, raw or xray", preprocess="caffe")
    refused(tmp_path / "g.keras", "has no layer 'nope'.*candidates: .*conv_b", feature_layer="nope")
    # a chosen layer that is not a vector after pooling
    inputs = keras.Input((16, 16, 1))
    seq = keras.layers.Reshape((256, 1), name="as_sequence")(inputs)
    keras.Model(inputs, keras.layers.Dense(2, name="d")(keras.layers.Flatten()(seq))).save(tmp_path / "seq.keras")
    refused(tmp_path / "seq.keras", "not a vector nor a feature map", feature_layer="as_sequence")
    # two inputs
    a, b = keras.Input((8, 8, 1)), keras.Input((8, 8, 1))
    keras.Model([a, b], keras.layers.GlobalAveragePooling2D()(keras.layers.Add()([a, b]))).save(tmp_path / "two.keras")
    refused(tmp_path / "two.keras", "expects 2 inputs")
    # a custom layer Keras cannot find: named, with how to register it; then registered through a module
    inputs = keras.Input((16, 16, 1))
    custom = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(Doubling(name="twice")(inputs)))
    custom.save(tmp_path / "custom.keras")
    registered = keras.saving.get_custom_objects().pop("cxrtest>Doubling")
    sys.path.insert(0, str(tmp_path))
    try:
        refused(tmp_path / "custom.keras", r"'Doubling'.*register_keras_serializable.*MODEL_MODULES")
        (tmp_path / "my_layers.py").write_text(textwrap.dedent("""
            import keras

            @keras.saving.register_keras_serializable(package="cxrtest")
            class Doubling(keras.layers.Layer):
                def call(self, x):
                    return 2.0 * x
        """))
        assert models.get_backbone(str(tmp_path / "custom.keras"), preprocess="raw",
                                   modules=["my_layers"]).feature_dim == 1
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("my_layers", None)
        keras.saving.get_custom_objects()["cxrtest>Doubling"] = registered
    # through the pipeline's entry point: refused before the features folder exists
    import pandas as pd

    labels = pd.DataFrame({"image_name": [p.name for p in tiny_images], "label": [p.parent.name for p in tiny_images],
                           "path": [p.relative_to(tiny_images[0].parents[1]).as_posix() for p in tiny_images]})
    labels.to_csv(tmp_path / "labels.csv", index=False)
    with pytest.raises(ModelFileError):
        features.extract_dataset(tmp_path / "labels.csv", tiny_images[0].parents[1], str(tmp_path / "junk.keras"),
                                 "none", tmp_path / "features")
    assert not (tmp_path / "features").exists()


def test_a_changed_model_file_is_refused_by_the_builder(tmp_path):
    """What a Dask worker checks before building: the file it reads is the one checked here."""
    grey_cnn(64).save(tmp_path / "g.keras")
    spec = models.get_backbone(str(tmp_path / "g.keras"), preprocess="xray")
    grey_cnn(64, name="other").save(tmp_path / "g.keras")
    with pytest.raises(ModelFileError, match="changed since it was checked"):
        spec.build()


def test_model_names_for_make(tmp_path, capsys):
    grey_cnn(64).save(tmp_path / "g.keras")
    models.main(["--names", "MobileNetV2-0.35", str(tmp_path / "g.keras")])
    lines = capsys.readouterr().out.split()
    assert lines == ["MobileNetV2-0.35=MobileNetV2-0.35",
                     f"g-{model_files.sha256_path(tmp_path / 'g.keras')[:8]}={tmp_path / 'g.keras'}"]
    with pytest.raises(SystemExit, match="does not exist"):
        models.main(["--names", str(tmp_path / "none.keras")])


def test_grad_cam_of_a_model_file_and_a_clear_message_without_convolutions(tmp_path):
    grey_cnn(64).save(tmp_path / "g.keras")
    spec = models.get_backbone(str(tmp_path / "g.keras"), preprocess="xray")
    W = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
    classifier = saliency.classifier_model(spec, "none", W, np.zeros(3, np.float32))
    assert saliency.find_last_conv_layer(classifier) == "conv_b"
    image = np.random.default_rng(1).uniform(0, 255, (64, 64, 3)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        heat = saliency.grad_cam(classifier, image, 1)
    assert heat.shape == (64, 64) and 0 <= heat.min() and heat.max() <= 1
    inputs = keras.Input((8, 8, 1))
    keras.Model(inputs, keras.layers.Dense(4)(keras.layers.Flatten(name="flatten")(inputs))).save(
        tmp_path / "flat.keras")
    flat = models.get_backbone(str(tmp_path / "flat.keras"), preprocess="raw", feature_layer="flatten")
    clf = saliency.classifier_model(flat, "none", np.ones((64, 2), np.float32), np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="no layer with a spatial output"):
        saliency.find_last_conv_layer(clf)


def test_make_names_a_model_files_products_by_its_hash_and_passes_its_path(tmp_path):
    import subprocess

    from cxrcluster.paths import PROJECT_ROOT

    grey_cnn(64).save(tmp_path / "g.keras")
    name = models.model_name(str(tmp_path / "g.keras"))

    def make(*args):
        return subprocess.run(["make", "-n", "features", f"OUT={tmp_path / 'out'}", "WEIGHTS=none", *args],
                              cwd=PROJECT_ROOT, capture_output=True, text=True)

    planned = make(f"MODELS=MobileNetV2-0.35 {tmp_path / 'g.keras'}", "PREPROCESS=xray", "INPUT_SIZE=64")
    assert planned.returncode == 0, planned.stderr
    assert f"02-extract-features-{name}.ipynb -r model {tmp_path / 'g.keras'}" in planned.stdout
    assert '-r preprocess "xray" -p input_size 64' in planned.stdout
    assert "02-extract-features-MobileNetV2-0.35.ipynb -r model MobileNetV2-0.35" in planned.stdout
    refused = make(f"MODELS={tmp_path / 'none.keras'}")
    assert refused.returncode != 0 and "none.keras' does not exist" in refused.stderr


def test_a_model_openvino_cannot_convert_runs_on_tensorflow_with_the_reason(tmp_path, tiny_images, monkeypatch):
    from cxrcluster import engines

    if not engines.openvino_version():
        pytest.skip("OpenVINO is not installed: extraction runs on TensorFlow anyway")
    grey_cnn(64).save(tmp_path / "g.keras")
    spec = models.get_backbone(str(tmp_path / "g.keras"), preprocess="xray")
    real = engines.make_forward

    def no_converter(model, preprocess, batch_size, size, engine="tensorflow", precision="fp32", **kwargs):
        if engine == "openvino":
            raise RuntimeError("Cannot create Foo layer from unsupported opset")
        return real(model, preprocess, batch_size, size, engine, precision, **kwargs)

    monkeypatch.setattr(engines, "make_forward", no_converter)
    with pytest.warns(UserWarning, match="OpenVINO could not convert"):
        X, prov = features.extract_features(tiny_images, spec, engine="auto", precision="auto", progress=False)
    assert prov["engine"] == "tensorflow" and prov["engine_choice"]["engine"] == "tensorflow"
    assert "OpenVINO could not convert" in prov["engine_choice"]["notes"][-1]
    assert "unsupported opset" in prov["engine_choice"]["evidence"]["openvino_conversion"]
    reference, _ = features.extract_features(tiny_images, spec, progress=False)  # TensorFlow fp32
    assert X.tobytes() == reference.tobytes()
    with pytest.raises(RuntimeError, match="unsupported opset"):  # asked for by name: OpenVINO's own error
        features.extract_features(tiny_images, spec, engine="openvino", precision="fp32", progress=False)
