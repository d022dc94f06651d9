"""Feature extraction: bad input reported not fatal, rows aligned, reproducible, real weights work."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLE_DIR, needs_sample, needs_weights
from PIL import Image

from cxrcluster import data, demo, features

pytestmark = pytest.mark.filterwarnings("ignore:.*RANDOM weights:UserWarning")


@pytest.fixture
def mixed_dataset(tmp_path):
    """A tiny dataset of good images in odd formats plus bad files, in the class layout."""
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for label in demo.CLASSES:
        (root / label).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(demo.synthetic_xray(label, rng, size=96), "L").save(root / label / f"{label}{i}.png")
    g = demo.synthetic_xray("NORMAL", rng, size=96)
    Image.fromarray(g.astype(np.uint16) * 200).save(root / "NORMAL" / "sixteen.png")
    Image.fromarray(np.dstack([g] * 3 + [np.full_like(g, 255)]), "RGBA").save(root / "NORMAL" / "rgba.png")
    Image.fromarray(np.dstack([g] * 3), "RGB").convert("CMYK").save(root / "COVID" / "cmyk.jpg")
    (root / "COVID" / "zero.png").write_bytes(b"")
    (root / "PNEUMONIA" / "text.png").write_text("not an image")
    whole = (root / "COVID" / "COVID0.png").read_bytes()
    (root / "PNEUMONIA" / "truncated.png").write_bytes(whole[: len(whole) // 3])
    labels = data.scan_dataset(root)
    labels.to_csv(tmp_path / "labels.csv", index=False)
    return root, tmp_path / "labels.csv", labels


def run(mixed_dataset, out, **kw):
    root, labels_csv, _ = mixed_dataset
    kw.setdefault("max_bad_fraction", 0.5)
    return features.extract_dataset(labels_csv, root, "MobileNetV2-0.35", "none", out, batch_size=4,
                                    progress=False, **kw)


def test_bad_images_are_reported_and_good_ones_extracted(mixed_dataset, tmp_path):
    _, _, labels = mixed_dataset
    X, prov = run(mixed_dataset, tmp_path / "f")
    bad = {b["image_name"]: b["reason"] for b in prov["bad_images"]}
    assert set(bad) == {"zero.png", "text.png", "truncated.png"}
    assert "empty file" in bad["zero.png"] and "not a recognised image" in bad["text.png"]
    assert "truncated" in bad["truncated.png"]
    assert X.shape == (len(labels), 1280) and X.dtype == np.float32
    nan_rows = set(labels["image_name"][np.isnan(X).all(axis=1)])
    assert nan_rows == set(bad)
    assert np.isfinite(X[~labels["image_name"].isin(bad)]).all()
    sidecar = json.loads((tmp_path / "f" / "MobileNetV2-0.35.json").read_text())
    assert sidecar["image_names"] == labels["image_name"].tolist()
    assert sidecar["images_ok"] == len(labels) - 3 and sidecar["trained"] is False
    assert sidecar["preprocessing"]["function"] == "keras.applications.mobilenet_v2.preprocess_input"
    assert sidecar["versions"]["tensorflow"]


def test_too_many_bad_images_stop_the_run_and_write_nothing(mixed_dataset, tmp_path, capsys):
    with pytest.raises(features.BadInputError, match="more than max_bad_fraction=10%"):
        run(mixed_dataset, tmp_path / "f", max_bad_fraction=0.1)
    assert not (tmp_path / "f").exists() or not any((tmp_path / "f").iterdir())


def test_same_input_gives_byte_identical_features(mixed_dataset, tmp_path):
    run(mixed_dataset, tmp_path / "a")
    run(mixed_dataset, tmp_path / "b")
    a = (tmp_path / "a" / "MobileNetV2-0.35.npy").read_bytes()
    assert a == (tmp_path / "b" / "MobileNetV2-0.35.npy").read_bytes()


def test_load_features_refuses_another_dataset(mixed_dataset, tmp_path):
    _, _, labels = mixed_dataset
    run(mixed_dataset, tmp_path / "f")
    X, prov = features.load_features(tmp_path / "f", "MobileNetV2-0.35", labels)
    assert X.shape[0] == len(labels)
    with pytest.raises(ValueError, match="rows but the labels have"):
        features.load_features(tmp_path / "f", "MobileNetV2-0.35", labels.iloc[:-1])
    shuffled = labels.iloc[::-1].reset_index(drop=True)
    with pytest.raises(ValueError, match="image list does not match"):
        features.load_features(tmp_path / "f", "MobileNetV2-0.35", shuffled)
    with pytest.raises(FileNotFoundError, match="extract ResNet50"):
        features.load_features(tmp_path / "f", "ResNet50", labels)


def test_labels_with_missing_or_escaping_paths_are_refused(mixed_dataset, tmp_path):
    root, _, labels = mixed_dataset
    bad = pd.concat([labels, pd.DataFrame({"image_name": ["x", "y"], "label": ["COVID"] * 2,
                                           "path": ["../labels.csv", "COVID/gone.png"]})])
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(data.DatasetError, match="outside the data folder.*missing"):
        features.extract_dataset(tmp_path / "bad.csv", root, "MobileNetV2-0.35", "none", tmp_path / "f")


@needs_sample
@needs_weights
def test_real_weights_on_real_xrays_separate_the_classes(tmp_path):
    """Smoke test: ImageNet MobileNetV2-0.35 on the 300 real images of ../shared."""
    labels = data.scan_dataset(SAMPLE_DIR)
    labels.to_csv(tmp_path / "labels.csv", index=False)
    X, prov = features.extract_dataset(tmp_path / "labels.csv", SAMPLE_DIR, "MobileNetV2-0.35", "imagenet",
                                       tmp_path / "f", progress=False)
    assert prov["trained"] and prov["weights_sha256"] == (
        "d43c70f8ea04b1087170401b2f4739f41b94200e30892ea8d050ac65779146c6")
    assert X.shape == (300, 1280) and np.isfinite(X).all()
    assert X.std(axis=0).mean() > 0.05  # not constant, unlike the original study's features
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    y = labels["label"].to_numpy()
    agreement = float((y[sim.argmax(axis=1)] == y).mean())
    print(f"leave-one-out 1-NN (cosine) label agreement: {agreement:.3f} (chance 0.333)")
    assert agreement == pytest.approx(0.903, abs=0.02)  # README: leave-one-out 1-NN agreement 0.903
    X2, _ = features.extract_dataset(tmp_path / "labels.csv", SAMPLE_DIR, "MobileNetV2-0.35", "imagenet",
                                     tmp_path / "g", progress=False)
    assert X.tobytes() == X2.tobytes()


@pytest.mark.slow
def test_killed_extraction_leaves_nothing_finished_and_rerun_matches(tmp_path):
    import re
    import signal
    import subprocess
    import sys
    import time

    root = demo.write_demo_dataset(tmp_path / "data", per_class=40, size=128)
    data.scan_dataset(root).to_csv(tmp_path / "labels.csv", index=False)
    code = ("import sys; from cxrcluster import features; "
            "features.extract_dataset(sys.argv[1], sys.argv[2], 'MobileNetV2-0.35', 'none', sys.argv[3], "
            "batch_size=2, workers=1)")
    args = [sys.executable, "-c", code, str(tmp_path / "labels.csv"), str(root)]
    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen([*args, str(killed_dir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = ""
    deadline = time.time() + 120
    flowing = re.compile(r"\d+/120 .*\dimg/s")  # a progress update after some batches, not the "?img/s" start
    while not flowing.search(seen) and time.time() < deadline and proc.poll() is None:
        seen += proc.stdout.read(1)
    assert flowing.search(seen) and proc.poll() is None, seen[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed_dir / "MobileNetV2-0.35.npy").exists()
    assert not (killed_dir / "MobileNetV2-0.35.json").exists()
    subprocess.run([*args, str(killed_dir)], check=True, capture_output=True)
    subprocess.run([*args, str(tmp_path / "whole")], check=True, capture_output=True)
    assert ((killed_dir / "MobileNetV2-0.35.npy").read_bytes()
            == (tmp_path / "whole" / "MobileNetV2-0.35.npy").read_bytes())
