"""Forward-pass engines: each one matches an eager fp32 reference, refuses what it cannot run, is deterministic."""

import numpy as np
import pytest

from cxrcluster import engines, features, models

pytestmark = pytest.mark.filterwarnings("ignore:.*RANDOM weights:UserWarning")

SIZE = 32
FP32_PATHS = [("tensorflow", "fp32"), ("openvino", "fp32")]
BF16_PATHS = [("tensorflow", "bf16"), ("openvino", "bf16")]


def _have_openvino() -> bool:
    return engines.openvino_version() is not None


def skip_unless_runnable(engine: str, precision: str):
    """Skip (with the reason) what this machine cannot run."""
    if engine == "openvino" and not _have_openvino():
        pytest.skip(f"openvino is not installed ({engines.OPENVINO_PIN})")
    if precision == "bf16":
        ok, reason = engines.bf16_support(engine)
        if not ok:
            pytest.skip(f"no bf16 on this CPU: {reason}")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def tiny():
    """A small random conv net with the caffe preprocessing (channel flip and means): fast, non-trivial features."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.Conv2D(24, 1)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, x)
    preprocess = keras.applications.resnet50.preprocess_input
    images = np.random.default_rng(0).uniform(0, 255, (6, SIZE, SIZE, 3)).astype(np.float32)
    # the reference, computed eagerly, outside any engine: preprocessing then the model in fp32
    reference = np.asarray(model(preprocess(images.copy()), training=False))
    return model, preprocess, images, reference


@pytest.mark.parametrize("engine,precision", FP32_PATHS)
def test_fp32_engines_match_the_eager_reference(tiny, engine, precision):
    skip_unless_runnable(engine, precision)
    model, preprocess, images, reference = tiny
    forward = engines.make_forward(model, preprocess, 4, SIZE, engine=engine, precision=precision)
    out = forward(images)
    assert out.shape == reference.shape and out.dtype == np.float32
    assert cosines(out, reference).min() > 0.9999
    np.testing.assert_allclose(out, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())
    assert forward.info["engine"] == engine and forward.info["precision"] == precision


@pytest.mark.parametrize("engine,precision", BF16_PATHS)
def test_bf16_engines_stay_close_to_fp32(tiny, engine, precision):
    skip_unless_runnable(engine, precision)
    model, preprocess, images, reference = tiny
    out = engines.make_forward(model, preprocess, 4, SIZE, engine=engine, precision=precision)(images)
    assert out.dtype == np.float32
    assert cosines(out, reference).min() > 0.99
    # and it really is another arithmetic, not fp32 under another name
    assert not np.array_equal(out, reference)


def test_preprocessing_is_applied_by_every_engine(tiny):
    """Without preprocess_input (identity instead) the features differ: the engines must apply it."""
    model, preprocess, images, reference = tiny
    for engine, precision in FP32_PATHS:
        if engine == "openvino" and not _have_openvino():
            continue
        raw = engines.make_forward(model, lambda x: x, 4, SIZE, engine=engine, precision=precision)(images)
        assert cosines(raw, reference).min() < 0.999


@pytest.mark.parametrize("engine,precision", FP32_PATHS + BF16_PATHS)
def test_reruns_are_byte_identical_and_batches_are_padded(tiny, engine, precision):
    skip_unless_runnable(engine, precision)
    model, preprocess, images, _ = tiny
    forward = engines.make_forward(model, preprocess, 4, SIZE, engine=engine, precision=precision)
    first, again = forward(images), forward(images)
    assert first.tobytes() == again.tobytes()
    # 6 images at batch 4: one full batch, then 2 padded with zeros; either alone gives the same rows
    assert first[:4].tobytes() == forward(images[:4]).tobytes()
    assert first[4:].tobytes() == forward(images[4:]).tobytes()


@pytest.mark.parametrize("engine,precision,message", [
    ("pytorch", "fp32", "unknown engine 'pytorch'; choose one of: tensorflow, openvino"),
    ("tensorflow", "fp16", "unknown precision 'fp16'; choose one of: fp32, bf16, int8"),
    ("openvino", "int4", "unknown precision 'int4'"),
])
def test_unknown_engine_or_precision_is_a_clear_value_error(tiny, engine, precision, message):
    model, preprocess, _, _ = tiny
    with pytest.raises(ValueError, match=message):
        engines.check_engine(engine, precision)
    with pytest.raises(ValueError, match=message):
        engines.make_forward(model, preprocess, 4, SIZE, engine=engine, precision=precision)


def test_extraction_refuses_an_unknown_engine_before_any_work(tmp_path):
    # no such file and no model built: the engine is checked first
    with pytest.raises(ValueError, match="unknown engine 'onnx'"):
        features.extract_features([tmp_path / "missing.png"], "MobileNetV2-0.35", "none", engine="onnx")


@pytest.mark.parametrize("flags,reason", [
    (frozenset({"avx2", "avx512f", "fma"}), "none of the bf16 instruction flags avx512_bf16, amx_bf16"),
    (frozenset(), "cannot read the CPU flags"),
])
def test_bf16_is_refused_with_the_reason_on_a_cpu_without_it(monkeypatch, flags, reason):
    monkeypatch.setattr(engines, "cpu_flags", lambda: flags)
    ok, why = engines.bf16_support("tensorflow")
    assert not ok and reason in why
    with pytest.raises(engines.EngineUnavailableError, match=f"precision bf16 is not available.*{reason}.*fp32"):
        engines.check_engine("tensorflow", "bf16")
    engines.check_engine("tensorflow", "fp32")  # fp32 needs nothing


def test_bf16_is_offered_where_the_cpu_has_the_flags(monkeypatch):
    monkeypatch.setattr(engines, "cpu_flags", lambda: frozenset({"avx512f", "amx_bf16"}))
    ok, reason = engines.bf16_support("tensorflow")
    assert ok and "amx_bf16" in reason


def test_forward_rejects_images_of_the_wrong_shape(tiny):
    model, preprocess, images, _ = tiny
    forward = engines.make_forward(model, preprocess, 4, SIZE)
    with pytest.raises(ValueError, match=r"expected a batch of shape \(n, 32, 32, 3\)"):
        forward(images[:, :16])


@pytest.mark.slow
def test_every_engine_on_mobilenet_v2_with_random_weights():
    """The real default architecture: OpenVINO fp32 matches TensorFlow fp32; bf16 is close.

    Random MobileNetV2 features are tiny (about 1e-10), so only scale-free comparisons
    (cosine, error relative to the largest feature) mean anything.
    """
    backbone = models.get_backbone("MobileNetV2-0.35")
    model, _ = models.build_backbone("MobileNetV2-0.35", "none", seed=0)
    images = np.random.default_rng(1).uniform(0, 255, (4, 224, 224, 3)).astype(np.float32)
    ref = engines.make_forward(model, backbone.preprocess_input(), 4, 224)(images)
    assert np.isfinite(ref).all() and np.abs(ref).max() > 0
    for engine, precision, floor in [("openvino", "fp32", 0.9999), ("tensorflow", "bf16", 0.99),
                                     ("openvino", "bf16", 0.99)]:
        if engine == "openvino" and not _have_openvino():
            continue
        if precision == "bf16" and not engines.bf16_support(engine)[0]:
            continue
        out = engines.make_forward(model, backbone.preprocess_input(), 4, 224, engine, precision)(images)
        assert cosines(out, ref).min() > floor, (engine, precision)


def test_int8_runs_on_openvino_only():
    with pytest.raises(engines.EngineUnavailableError, match="int8 runs on engine openvino only"):
        engines.check_engine("tensorflow", "int8")


@pytest.mark.parametrize("flags,found", [
    (frozenset({"avx2", "fma"}), False),
    (frozenset({"avx512f", "avx512_vnni"}), True),
    (frozenset({"avx2", "avx_vnni"}), True),
    (frozenset({"amx_int8", "amx_bf16"}), True),
])
def test_int8_units_are_read_from_the_cpu_flags(monkeypatch, flags, found):
    monkeypatch.setattr(engines, "cpu_flags", lambda: flags)
    ok, why = engines.int8_support()
    assert ok is found
    assert ("CPU flags" in why) if found else ("none of the integer dot-product flags" in why)


def test_openvino_uses_every_usable_core_unpinned_and_reports_its_kernels(tiny):
    skip_unless_runnable("openvino", "fp32")
    model, preprocess, _, _ = tiny
    info = engines.make_forward(model, preprocess, 4, SIZE, engine="openvino").info
    assert info["threads"] == engines.usable_cores() and info["cpu_pinning"] is False
    assert info["kernels"] and all(isinstance(v, int) and v > 0 for v in info["kernels"].values())
    assert not any(k.startswith("unknown") for k in info["kernels"])


@pytest.mark.int8
def test_int8_is_quantised_on_the_calibration_images_cached_and_deterministic(tiny, tmp_path):
    skip_unless_runnable("openvino", "fp32")
    model, preprocess, images, reference = tiny
    calibration = np.random.default_rng(1).uniform(0, 255, (9, SIZE, SIZE, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="int8 needs at least one batch"):
        engines.make_forward(model, preprocess, 4, SIZE, engine="openvino", precision="int8")
    folder = tmp_path / "int8"
    fresh = engines.make_forward(model, preprocess, 4, SIZE, engine="openvino", precision="int8",
                                 calibration=calibration, int8_dir=folder)
    assert fresh.info["calibration_images"] == 8  # whole batches only
    assert "saved" in fresh.info["int8_model"] and (folder / "model.xml").is_file()
    assert any("I8" in k or "i8" in k for k in fresh.info["kernels"]), fresh.info["kernels"]
    out = fresh(images)
    # a different network: quantised, close to fp32 but not equal to it
    assert not np.array_equal(out, reference) and cosines(out, reference).min() > 0.9
    cached = engines.make_forward(model, preprocess, 4, SIZE, engine="openvino", precision="int8", int8_dir=folder)
    assert "cached" in cached.info["int8_model"]
    assert cached(images).tobytes() == out.tobytes() == fresh(images).tobytes()
