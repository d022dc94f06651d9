"""The extraction path chosen per machine by a fixed rule, and lower precision judged on the data."""

import types

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from cxrcluster import engines, extraction_path

pytestmark = pytest.mark.filterwarnings("ignore:.*RANDOM weights:UserWarning")

needs_openvino = pytest.mark.skipif(engines.openvino_version() is None, reason="openvino is not installed")
SIZE = 32


def machine(monkeypatch, flags, caps=("FP32", "INT8", "BIN", "EXPORT_IMPORT"), openvino=True):
    """Pretend to be a CPU with ``flags`` whose OpenVINO reports ``caps``."""
    monkeypatch.setattr(engines, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(engines, "openvino_capabilities", lambda: list(caps))
    if not openvino:
        monkeypatch.setattr(engines, "openvino_version", lambda: None)


@needs_openvino
@pytest.mark.parametrize("flags,caps,expected", [
    # AVX2 only (this project's AMD EPYC sessions): nothing native below fp32
    ({"avx2", "fma"}, ("FP32", "INT8"), ["fp32"]),
    # Cascade Lake: VNNI, no bf16
    ({"avx512f", "avx512_vnni"}, ("FP32", "INT8"), ["int8", "fp32"]),
    # Alder Lake and later client CPUs: AVX-VNNI
    ({"avx2", "avx_vnni"}, ("FP32", "INT8"), ["int8", "fp32"]),
    # AVX-512 bf16 without AMX (Cooper Lake, Zen 4): bf16 first, then int8 (those CPUs have VNNI too)
    ({"avx512f", "avx512_bf16", "avx512_vnni"}, ("FP32", "BF16", "INT8"), ["bf16", "int8", "fp32"]),
    # Sapphire Rapids: AMX
    ({"avx512f", "avx512_bf16", "amx_bf16", "amx_int8"}, ("FP32", "BF16", "INT8"), ["bf16", "int8", "fp32"]),
    # bf16 flags, but OpenVINO does not offer BF16: not a candidate
    ({"avx512f", "avx512_bf16"}, ("FP32", "INT8"), ["fp32"]),
])
def test_the_rule_orders_the_candidates_by_what_the_cpu_runs_natively(monkeypatch, flags, caps, expected):
    machine(monkeypatch, flags, caps)
    first = extraction_path.plan()
    assert first.engine == "openvino" and first.candidates == expected and not first.forced
    assert extraction_path.plan() == first  # the same machine always makes the same choice
    assert first.evidence["openvino_capabilities"] == list(caps)
    assert first.notes[-1].startswith(f"candidates {', '.join(expected)}")


def test_without_openvino_the_rule_runs_tensorflow_and_never_int8(monkeypatch):
    machine(monkeypatch, {"avx512f", "avx512_bf16", "avx512_vnni"}, openvino=False)
    chosen = extraction_path.plan()
    assert chosen.engine == "tensorflow" and chosen.candidates == ["bf16", "fp32"]
    assert "openvino is not installed" in chosen.notes[0] and "no int8" in chosen.evidence["int8"]


@needs_openvino
def test_forced_paths_and_the_cluster(monkeypatch):
    machine(monkeypatch, {"avx512f", "avx512_bf16", "amx_bf16", "amx_int8"}, ("FP32", "BF16", "INT8"))
    forced = extraction_path.plan("openvino", "int8")
    assert forced.forced and forced.candidates == ["int8"]
    assert extraction_path.plan("tensorflow", "fp32").candidates == ["fp32"]
    assert extraction_path.plan(on_cluster=True).candidates == ["fp32"]  # workers' CPUs are not this one's
    assert extraction_path.plan("openvino", "bf16", on_cluster=True).candidates == ["bf16"]
    with pytest.raises(engines.EngineUnavailableError, match="int8 is not available on a Dask cluster"):
        extraction_path.plan("auto", "int8", on_cluster=True)
    with pytest.raises(ValueError, match="unknown precision 'fp8'; choose one of: auto, fp32, bf16, int8"):
        extraction_path.plan("auto", "fp8")
    with pytest.raises(ValueError, match="unknown engine 'onnx'"):
        extraction_path.plan("onnx")
    machine(monkeypatch, {"avx2"}, ("FP32", "INT8"))
    with pytest.raises(engines.EngineUnavailableError, match="bf16 is not available"):
        extraction_path.plan("openvino", "bf16")


def test_sample_rows_are_seeded_sorted_and_disjoint_when_there_is_room():
    cal, check = extraction_path.sample_rows(1000, seed=0)
    assert len(cal) == extraction_path.CALIBRATION_IMAGES and len(check) == extraction_path.CHECK_IMAGES
    assert not np.intersect1d(cal, check).size and (np.diff(check) > 0).all()
    again = extraction_path.sample_rows(1000, seed=0)
    assert np.array_equal(cal, again[0]) and np.array_equal(check, again[1])
    assert not np.array_equal(check, extraction_path.sample_rows(1000, seed=1)[1])
    cal, check = extraction_path.sample_rows(150, seed=0)  # too small for both: the check takes every row
    assert len(cal) == 128 and len(check) == 150


def blobs(center_box, seed=0):
    X, _ = make_blobs(300, n_features=64, centers=3, cluster_std=1.0, center_box=center_box, random_state=seed)
    return X + 20.0  # features off the origin, as pooled activations are


def test_fidelity_passes_small_rounding_and_fails_what_changes_the_clustering():
    rng = np.random.default_rng(0)
    close = blobs((-0.6, 0.6))  # clusters about two spreads apart
    same = extraction_path.fidelity(close, close)
    assert same["passed"] and same["kmeans_ari"] == 1.0 and same["kmeans_matched_change"] == 0.0
    assert same["min_centred_cosine"] == pytest.approx(1.0)
    rounded = extraction_path.fidelity(close, close + rng.normal(0, 0.01, close.shape))
    assert rounded["passed"] and rounded["median_centred_cosine"] > 0.999 and rounded["kmeans_ari"] == 1.0
    # noise of half a spread moves images across the near boundaries: not fp32's clustering any more
    noisy = extraction_path.fidelity(close, close + rng.normal(0, 0.5, close.shape))
    assert not noisy["passed"] and noisy["kmeans_ari"] < extraction_path.MIN_KMEANS_ARI
    assert noisy["kmeans_matched_change"] > 1.0
    # far-apart clusters survive twice that noise, but the features themselves moved: refused on the cosine
    far = blobs((-10, 10))
    moved = extraction_path.fidelity(far, far + rng.normal(0, 2.0, far.shape))
    assert moved["kmeans_ari"] == 1.0 and not moved["passed"]
    assert moved["median_centred_cosine"] < extraction_path.MIN_MEDIAN_CENTRED_COSINE
    with pytest.raises(ValueError, match="two feature sets of one shape"):
        extraction_path.fidelity(close, close[:10])
    # features that do not vary (a collapsed network): nothing to judge, so nothing passes
    flat = extraction_path.fidelity(np.ones((50, 8)), np.ones((50, 8)))
    assert not flat["passed"] and flat["kmeans_ari"] is None and "1 distinct value" in flat["note"]


def test_fidelity_reports_plain_cosine_and_relative_error_with_the_check():
    rng = np.random.default_rng(0)
    close = blobs((-0.6, 0.6))
    longer = close.copy()
    longer[7] *= 1.001  # one image a little longer: the same direction, its largest feature 0.1 % off
    got = extraction_path.fidelity(close, longer)
    assert got["min_cosine"] == pytest.approx(1.0) and got["max_relative_error"] == pytest.approx(0.001)
    assert got["passed"] and got["kmeans_ari"] == 1.0
    # the reference is the first argument: its scale divides the error
    assert extraction_path.fidelity(longer, close)["max_relative_error"] == pytest.approx(0.000999)
    noisy = extraction_path.fidelity(close, close + rng.normal(0, 0.5, close.shape))
    # plain cosines flatter features off the origin; the centred ones do not
    assert noisy["min_cosine"] > 0.999 > noisy["min_centred_cosine"] and 0 < noisy["max_relative_error"] < 0.2


def test_fidelity_without_kmeans_judges_the_median_centred_cosine_alone():
    rng = np.random.default_rng(0)
    close = blobs((-0.6, 0.6))
    outlier = close.copy()
    outlier[7] *= 1.5  # one image far off: k-means gives it a cluster of its own, the median image is intact
    full = extraction_path.fidelity(close, outlier)
    alone = extraction_path.fidelity(close, outlier, n_clusters=None)
    assert not any(key.startswith("kmeans_") for key in alone) and alone["n_clusters"] is None
    assert alone["thresholds"] == {"median_centred_cosine": extraction_path.MIN_MEDIAN_CENTRED_COSINE}
    shared = ("images", "min_cosine", "max_relative_error", "min_centred_cosine", "median_centred_cosine")
    assert {k: alone[k] for k in shared} == {k: full[k] for k in shared}
    assert full["kmeans_ari"] < extraction_path.MIN_KMEANS_ARI and not full["passed"]
    assert alone["median_centred_cosine"] >= extraction_path.MIN_MEDIAN_CENTRED_COSINE and alone["passed"]
    moved = extraction_path.fidelity(close, close + rng.normal(0, 2.0, close.shape), n_clusters=None)
    assert moved["median_centred_cosine"] < extraction_path.MIN_MEDIAN_CENTRED_COSINE and not moved["passed"]
    # three rows are too few for k-means of three clusters, not for the cosines
    few = extraction_path.fidelity(close[:3], close[:3], n_clusters=None)
    assert few["passed"] and few["min_cosine"] == 1.0 and few["max_relative_error"] == 0.0
    with pytest.raises(ValueError, match="two feature sets of one shape"):
        extraction_path.fidelity(close[:3], close[:3])
    # features that do not vary: nothing to compare, so nothing passes, but the plain figures stand
    flat = extraction_path.fidelity(np.ones((50, 8)), np.ones((50, 8)), n_clusters=None)
    assert not flat["passed"] and flat["min_centred_cosine"] is None and flat["min_cosine"] == 1.0


@pytest.fixture(scope="module")
def tiny():
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, x)
    backbone = types.SimpleNamespace(name="Tiny", input_size=SIZE,
                                     preprocess_input=lambda: keras.applications.resnet50.preprocess_input)
    images = np.random.default_rng(0).uniform(0, 255, (400, SIZE, SIZE, 3)).astype(np.float32)
    return model, backbone, images


@needs_openvino
@pytest.mark.parametrize("passes", [True, False])
def test_select_keeps_a_candidate_only_if_it_passes_and_caches_the_check(monkeypatch, tmp_path, tiny, passes):
    model, backbone, images = tiny
    machine(monkeypatch, {"avx512f", "avx512_vnni"}, ("FP32", "INT8"))
    calls = []

    def judged(reference, low, n_clusters, seed):
        calls.append((len(reference), n_clusters))
        return {"images": len(reference), "min_centred_cosine": 0.5, "median_centred_cosine": 0.9,
                "kmeans_ari": 0.99 if passes else 0.5, "kmeans_matched_change": 0.0, "passed": passes}

    monkeypatch.setattr(extraction_path, "fidelity", judged)
    decoded = []

    def sample(rows):
        decoded.append(len(rows))
        return images[rows], [None] * len(rows)

    paths = [tmp_path / f"{i}.png" for i in range(len(images))]
    the_plan = extraction_path.plan()
    forward, record = extraction_path.select(model, backbone, the_plan, paths, batch_size=32, seed=0, n_clusters=3,
                                             weights_sha256=None, sample_images=sample, cache_dir=tmp_path / "cache")
    expected = "int8" if passes else "fp32"
    assert forward.precision == record["precision"] == expected and record["engine"] == "openvino"
    assert calls == [(extraction_path.CHECK_IMAGES, 3)]  # 400 images: 128 calibrate, 256 check
    assert decoded == [extraction_path.CHECK_IMAGES, extraction_path.CALIBRATION_IMAGES]
    assert record["checks"][0]["precision"] == "int8" and record["checks"][0]["calibration_rows"] == 128
    assert ("passed" if passes else "failed the check") in record["reason"]
    # a rerun reads the check and the quantised model from the cache: nothing calibrated, nothing judged
    decoded.clear()
    again, record2 = extraction_path.select(model, backbone, the_plan, paths, batch_size=32, seed=0, n_clusters=3,
                                            weights_sha256=None, sample_images=sample, cache_dir=tmp_path / "cache")
    assert len(calls) == 1 and decoded == [extraction_path.CHECK_IMAGES]
    assert record2["precision"] == expected and record2["checks"] == record["checks"]
    assert again(images[:40]).tobytes() == forward(images[:40]).tobytes()


@needs_openvino
def test_select_does_not_judge_on_too_few_images(monkeypatch, tmp_path, tiny):
    model, backbone, images = tiny
    machine(monkeypatch, {"avx512f", "avx512_vnni"}, ("FP32", "INT8"))
    few = 30
    paths = [tmp_path / f"{i}.png" for i in range(few)]
    forward, record = extraction_path.select(model, backbone, extraction_path.plan(), paths, batch_size=8, seed=0,
                                             n_clusters=3, weights_sha256=None,
                                             sample_images=lambda rows: (images[rows], [None] * len(rows)),
                                             cache_dir=None)
    assert forward.precision == "fp32" and "too few to check int8" in record["reason"]
    with pytest.raises(ValueError, match="int8 was forced, but 30 readable images are too few"):
        extraction_path.select(model, backbone, extraction_path.plan("openvino", "int8"), paths, batch_size=8, seed=0,
                               n_clusters=3, weights_sha256=None,
                               sample_images=lambda rows: (images[rows], [None] * len(rows)), cache_dir=None)


@needs_openvino
@pytest.mark.int8
def test_auto_extraction_on_a_vnni_machine_checks_int8_records_why_and_reruns_byte_identical(monkeypatch, tmp_path):
    from cxrcluster import demo, features

    machine(monkeypatch, {"avx512f", "avx512_vnni"}, ("FP32", "INT8"))
    data_dir = demo.write_demo_dataset(tmp_path / "demo", per_class=27, size=96)
    paths = sorted(data_dir.rglob("*.png"))[:80]
    runs = []
    for cache_dir in (None, tmp_path / "cache", tmp_path / "cache"):  # fresh, filling the cache, from the cache
        X, provenance = features.extract_features(paths, "MobileNetV2-0.35", "none", batch_size=16, progress=False,
                                                  engine="auto", precision="auto", cache_dir=cache_dir)
        runs.append((X, provenance))
    choice = runs[0][1]["engine_choice"]
    check = choice["checks"][0]
    assert choice["requested"] == {"engine": "auto", "precision": "auto"} and check["precision"] == "int8"
    assert choice["evidence"]["int8"] == "CPU flags avx512_vnni"
    # 80 images: 128 would calibrate, so the check takes every row, and says it overlaps the calibration
    assert check["images"] == 80 and check["overlaps_calibration"] is True
    assert 0 < check["median_centred_cosine"] <= 1 and -1 <= check["kmeans_ari"] <= 1  # judged, not skipped
    assert choice["precision"] == ("int8" if check["passed"] else "fp32") == runs[0][1]["precision"]
    assert runs[0][1]["engine_settings"]["precision"] == choice["precision"]
    for X, provenance in runs[1:]:
        assert X.tobytes() == runs[0][0].tobytes()
        assert provenance["engine_choice"]["checks"] == choice["checks"]
    assert list((tmp_path / "cache" / "engines").iterdir())[0].name.startswith("MobileNetV2-0.35-openvino-int8-")
