"""The benchmark harness: its measures on hand-made data, the time cap, and a quick run end to end."""

import numpy as np
import pandas as pd
import pytest
import yaml

import benchmarks as bench
from cxrcluster import demo, engines, extraction_path
from cxrcluster.paths import PROJECT_ROOT

CONFIG = PROJECT_ROOT / "config" / "clustering.yaml"


def test_synthetic_features_are_seeded_non_negative_and_grouped():
    X, labels = bench.synthetic_features(300, d=64, seed=3)
    assert X.shape == (300, 64) and X.dtype == np.float32 and (X >= 0).all()
    assert set(labels) == {"C0", "C1", "C2"}
    again, _ = bench.synthetic_features(300, d=64, seed=3)
    other, _ = bench.synthetic_features(300, d=64, seed=4)
    assert X.tobytes() == again.tobytes() and X.tobytes() != other.tobytes()
    # the groups are real: points are closer to their own group's mean than to the others'
    means = np.stack([X[labels == c].mean(axis=0) for c in ("C0", "C1", "C2")])
    nearest = np.argmin(((X[:, None, :] - means[None]) ** 2).sum(axis=2), axis=1)
    assert (np.array(["C0", "C1", "C2"])[nearest] == labels).mean() > 0.9


@pytest.mark.parametrize("features,reference,cosine,rel_error", [
    ([[1.0, 2.0], [3.0, 0.0]], [[1.0, 2.0], [3.0, 0.0]], 1.0, 0.0),
    ([[2.0, 4.0]], [[1.0, 2.0]], 1.0, 1.0),  # same direction, twice as long: error 2 / 2
    ([[0.0, 1.0]], [[1.0, 0.0]], 0.0, 1.0),
    ([[1.0, 0.1], [1.0, 0.0]], [[1.0, 0.0], [1.0, 0.0]], 1 / np.sqrt(1.01), 0.1),  # the worst image counts
    ([[0.0, 0.0]], [[0.0, 0.0]], 1.0, 0.0),  # all-zero features agree
])
def test_fidelity(features, reference, cosine, rel_error):
    # the bench's fidelity columns are the pipeline's check's figures (min_cosine, max_rel_error)
    got = extraction_path.fidelity(np.array(reference), np.array(features), n_clusters=None)
    assert got["min_cosine"] == pytest.approx(cosine) and got["max_relative_error"] == pytest.approx(rel_error)


def test_centred_cosine_sees_what_a_shared_direction_hides():
    # two images whose features share one large direction and differ in a small one
    reference = np.array([[10.0, 0.0], [10.0, 1.0]])
    swapped = reference[::-1].copy()  # each image given the other's features
    got = extraction_path.fidelity(reference, swapped, n_clusters=None)
    assert got["min_cosine"] > 0.99  # the plain cosine barely notices
    assert got["min_centred_cosine"] == pytest.approx(-1.0) and not got["passed"]
    assert extraction_path.fidelity(reference, reference, n_clusters=None)["min_centred_cosine"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shape"):
        extraction_path.fidelity(np.zeros((3, 3)), np.zeros((2, 3)), n_clusters=None)


def test_fidelity_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        extraction_path.fidelity(np.zeros((5, 3)), np.zeros((5, 4)))


def _extraction(path, speedup, cosine, forward=None, role=""):
    return {"section": "extraction", "model": "ResNet50", "weights": "none", "path": path, "status": "ok",
            "input_size": 224, "speedup_vs_baseline": speedup, "min_cosine": cosine,
            "forward_images_per_s": forward, "role": role}


def test_targets_take_the_fastest_path_that_matches_fp32():
    frame = pd.DataFrame([
        _extraction("baseline", 1.0, np.nan, role="original study"),
        _extraction("tensorflow-fp32", 1.1, 1.0, 20.0, role="fp32 reference, extract_features default"),
        _extraction("openvino-bf16", 5.0, 0.99, 80.0),  # fastest, but not close enough to fp32
        _extraction("openvino-fp32", 3.2, 0.99999, 40.0, role="make default"),
        {"section": "decoding", "input_size": 224, "images_per_s": 200.0, "status": "ok"},
        {"section": "suite", "algorithm": "(whole suite)", "n": 5228, "seconds": 75.0, "status": "ok"},
        {"section": "clustering", "algorithm": "KMeans", "n": 50000, "peak_rss_mib": 900.0, "status": "ok"},
        {"section": "clustering", "algorithm": "OPTICS", "n": 50000, "peak_rss_mib": 400.0,
         "status": "timed out after 90 s"},
    ], columns=bench.CSV_COLUMNS)
    got = {target: (measured, verdict) for target, measured, verdict in bench.targets(frame)}
    fast = next(v for k, v in got.items() if "fastest path" in k)
    # random weights: the speed is the architecture's, the fidelity is not the trained network's
    assert fast == ("openvino-fp32: 3.20x, min cosine 0.99999 (none weights)",
                    "fast enough; fidelity unverified (random weights)")
    trained = frame.assign(weights="imagenet")
    fast = next(v for k, v in {t: (m, v) for t, m, v in bench.targets(trained)}.items() if "fastest path" in k)
    assert fast == ("openvino-fp32: 3.20x, min cosine 0.99999 (imagenet weights)", "met")
    defaults = {k: v for k, v in got.items() if "default path" in k}
    # only the pipeline's default is judged, not the library's fp32 reference
    assert defaults == {
        "ResNet50: default path >= 1.25x the baseline (openvino-fp32, the pipeline's default)": ("3.20x", "met")}
    assert next(v for k, v in got.items() if "decoding" in k)[1] == "not met"  # 200 / 80 < 3
    assert next(v for k, v in got.items() if "suite" in k) == ("75.0 s", "not met")
    memory = next(v for k, v in got.items() if "out of memory" in k)
    assert memory[1] == "met" and "1 stopped by the time cap" in memory[0]


def test_a_lower_precision_default_must_be_2_5x_and_agree_with_fp32():
    def frame(speed, ari, weights="imagenet"):
        low = {**_extraction("openvino-int8", speed, 0.97, 90.0, role="make default (rule: int8 passed)"),
               "precision": "int8", "kmeans_ari": ari, "weights": weights}
        rows = [{**_extraction("baseline", 1.0, np.nan, role="original study"), "weights": weights}, low]
        return pd.DataFrame(rows, columns=bench.CSV_COLUMNS)

    def judged(f):
        return next((m, v) for t, m, v in bench.targets(f) if "in int8 >= 2.5x" in t)

    assert judged(frame(3.0, 0.99)) == ("3.00x, k-means ARI to fp32 0.9900", "met")
    assert judged(frame(2.0, 0.99))[1] == "not met"
    assert judged(frame(3.0, 0.95))[1] == "not met"
    assert judged(frame(3.0, 0.99, "none"))[1] == "fast enough; fidelity unverified (random weights)"


@pytest.mark.slow
def test_an_algorithm_over_the_time_cap_is_stopped_and_not_tried_larger(tmp_path):
    config = yaml.safe_load(CONFIG.read_text())
    # an AffinityPropagation that never stops early: far beyond a one-second cap
    config["algorithms"] = {"KMeans": config["algorithms"]["KMeans"],
                            "AffinityPropagation": {"max_iter": 1_000_000, "convergence_iter": 1_000_000,
                                                    "damping": 0.5}}
    path = tmp_path / "clustering.yaml"
    path.write_text(yaml.safe_dump(config))
    rows = pd.DataFrame(bench.bench_clustering(path, [600, 900], time_cap=2.0, suite_n=None))
    ap = rows[rows["algorithm"] == "AffinityPropagation"].set_index("n")
    assert ap.loc[600, "status"] == "timed out after 2 s"
    assert ap.loc[900, "status"] == "not run" and ap.loc[900, "note"] == "timed out after 2 s at n=600"
    km = rows[rows["algorithm"] == "KMeans"].set_index("n")
    assert (km["status"] == "ok").all() and (km["seconds"] > 0).all() and (km["peak_rss_mib"] > 10).all()


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    data_dir = demo.write_demo_dataset(tmp / "demo", per_class=2, size=96)
    out = tmp / "reports" / "benchmarks"
    bench.main(["--quick", "--data-dir", str(data_dir), "--models", "MobileNetV2-0.35", "--weights", "none",
                "--images", "5", "--batch-size", "4", "--sizes", "150", "300", "--suite-n", "200",
                "--algorithms", "KMeans", "AgglomerativeWard", "DBSCAN", "--pipeline-default", "auto",
                "--out", str(out)])
    return out, pd.read_csv(out.with_name("benchmarks.csv")), out.with_name("benchmarks.md").read_text()


@pytest.mark.int8  # the quick run quantises MobileNetV2 for its int8 path
def test_quick_run_writes_the_csv_with_every_path_and_size(quick_report):
    _, frame, _ = quick_report
    assert list(frame.columns) == bench.CSV_COLUMNS
    ext = frame[frame["section"] == "extraction"].set_index("path")
    assert list(ext.index) == list(bench.PATH_ORDER)
    assert (ext["images"] == 5).all() and (ext["model"] == "MobileNetV2-0.35").all()
    ran = ext[ext["status"] == "ok"]
    ref = bench.REFERENCE
    assert {"baseline", ref} <= set(ran.index) and (ran["images_per_s"] > 0).all()
    assert ext.loc["baseline", "speedup_vs_baseline"] == 1.0
    assert ext.loc[ref, "min_cosine"] == 1.0 and ext.loc[ref, "max_rel_error"] == 0.0
    assert bool(ext.loc[ref, "deterministic"])
    assert "byte-identical to features.extract_features" in ext.loc[ref, "note"]
    assert ext.loc[ref, "role"] == "fp32 reference, extract_features default"
    if engines.openvino_version():
        # the rule on this machine: 5 images are too few to check lower precision, so fp32
        assert ext.loc["openvino-fp32", "role"].startswith("make default (rule: fp32")
        assert ext.loc["openvino-fp32", "min_cosine"] > 0.9999
        assert ext.loc["openvino-fp32", "kmeans_ari"] == 1.0 and bool(ext.loc["openvino-fp32", "passes_check"])
        assert ext.loc["openvino-int8", "status"] == "ok" and "calibrated on 4 images" in ext.loc["openvino-int8",
                                                                                                    "note"]
        assert -1 <= ext.loc["openvino-int8", "median_centred_cosine"] <= 1
        gemm = frame[frame["section"] == "gemm"].set_index("precision")
        assert list(gemm.index) == ["fp32"] * 2 + ["int8"] * 2 and (gemm["gflops"] > 1).all()
        assert list(gemm["algorithm"]) == ["matmul", "conv3x3"] * 2
        assert ("native" if engines.int8_support()[0] else "emulated") in gemm.loc["int8", "note"].iloc[0]
    assert ext["gflop_per_image"].iloc[0] == pytest.approx(0.116, abs=0.002)  # MobileNetV2-0.35 at 224 px
    cache = frame[frame["section"] == "decode-cache"].set_index("path")
    assert list(cache.index) == ["without cache", "with cache"] and (cache["seconds"] > 0).all()
    assert "features byte-identical to the run without" in cache.loc["with cache", "note"]
    for path in ("tensorflow-bf16", "openvino-bf16"):
        engine = path.split("-")[0]
        if engines.openvino_version() or engine == "tensorflow":
            expected = "ok" if engines.bf16_support(engine)[0] else "skipped"
            assert ext.loc[path, "status"] == expected
    decoding = frame[frame["section"] == "decoding"]
    assert len(decoding) == 1 and decoding["images_per_s"].iloc[0] > 0
    clus = frame[frame["section"] == "clustering"]
    assert sorted(zip(clus["algorithm"], clus["n"], strict=True)) == sorted(
        (a, n) for a in ("KMeans", "AgglomerativeWard", "DBSCAN") for n in (150, 300))
    assert (clus["status"] == "ok").all() and (clus["peak_rss_mib"] > 0).all()
    suite = frame[frame["section"] == "suite"].set_index("algorithm")
    assert suite.loc["(whole suite)", "status"] == "ok" and suite.loc["(whole suite)", "n"] == 200
    assert set(suite.index) == {"(whole suite)", "KMeans", "AgglomerativeWard", "DBSCAN"}


@pytest.mark.int8
def test_quick_run_writes_the_report_with_the_machine(quick_report):
    _, _, md = quick_report
    cpu = engines.describe_cpu()
    for heading in ("## Machine", "## Feature extraction", "## Input decoding", "## Decode once",
                    "## Clustering: fit time and peak memory as n grows", "## The whole suite at n = 200",
                    "## Targets"):
        assert heading in md
    assert cpu["cpu"] in md and "| AMX |" in md and "tensorflow 2." in md
    assert "| MobileNetV2-0.35 | none | tensorflow-fp32 | fp32 reference, extract_features default |" in md
    assert "| KMeans |" in md and "n = 300" in md


@pytest.mark.parametrize("out,written", [
    ("reports/benchmarks", "reports/benchmarks"),  # a prefix
    ("reports", "reports/benchmarks"),  # an existing folder
])
def test_report_names(tmp_path, out, written):
    (tmp_path / "reports").mkdir()
    machine = {"cpu": "test CPU", "logical_cores": 2, "usable_cores": 2, "flags": ["avx2"], "amx": False,
               "bf16": {"tensorflow": "no", "openvino": "no"}, "memory_gib": 1.0, "platform": "test",
               "versions": {"python": "3"}}
    rows = [{"section": "decoding", "input_size": 224, "images_per_s": 100.0, "note": "", "status": "ok"}]
    md, csv = bench.write_report(rows, tmp_path / out, machine=machine, command="bench", data_note="",
                                 started=0.0, load_before=(0.5, 0, 0), load_after=(0.5, 0, 0))
    assert (md, csv) == (tmp_path / f"{written}.md", tmp_path / f"{written}.csv")
    assert "| CPU | test CPU |" in md.read_text() and "| 224 | 100.0 |" in md.read_text()
    assert list(pd.read_csv(csv).columns) == bench.CSV_COLUMNS


@pytest.mark.dask
def test_executors_are_timed_and_checked_against_this_process(tmp_path):
    """This process against a one-worker local cluster: every part timed, and found equal."""
    from benchmarks.executors import bench_executors

    data_dir = demo.write_demo_dataset(tmp_path / "demo")
    config = tmp_path / "c.yaml"
    config.write_text("algorithms:\n  KMeans: {}\n  AgglomerativeWard: {}\n")
    paths = bench.select_images(data_dir, 12)
    rows = bench_executors(paths, "MobileNetV2-0.35", "none", config, suite_n=200, places=["", "local:1"],
                           batch_size=4)
    frame = pd.DataFrame(rows)
    assert frame[["path", "algorithm"]].values.tolist() == [
        ["local", "extraction"], ["local", "clustering suite"],
        ["local:1", "start the cluster"], ["local:1", "extraction"], ["local:1", "clustering suite"]]
    assert (frame["seconds"] > 0).all()
    assert frame.loc[3, "note"].endswith("byte-identical to the reference")
    assert frame.loc[4, "note"] == "6 fits; equal to the reference"  # KMeans five seeds, Ward one
    md, _ = bench.write_report(rows, tmp_path / "b", machine=bench.describe_machine(), command="x", data_note="",
                               started=0.0, load_before=(0, 0, 0), load_after=(0, 0, 0))
    assert "| local:1 | extraction |" in md.read_text()
