import hashlib

import numpy as np
import pytest
from PIL import Image

from cxrcluster import data, demo


def digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_demo_is_deterministic_labelled_and_in_the_real_layout(tmp_path):
    a = demo.write_demo_dataset(tmp_path / "a", per_class=3)
    b = demo.write_demo_dataset(tmp_path / "b", per_class=3)
    assert digest(a) == digest(b)
    assert demo.is_synthetic(a) and "SYNTHETIC" in (a / demo.MARKER).read_text()
    labels = data.scan_dataset(a)
    assert labels["label"].value_counts().to_dict() == {"COVID": 3, "NORMAL": 3, "PNEUMONIA": 3}
    c = demo.write_demo_dataset(tmp_path / "c", per_class=3, seed=1)
    assert digest(a) != digest(c)


def test_demo_classes_differ_in_lung_brightness():
    # Lesions brighten the lungs: a crude check that the classes are not identical by construction.
    means = {}
    for label in demo.CLASSES:
        rng = np.random.default_rng(0)
        imgs = [demo.synthetic_xray(label, rng, size=128) for _ in range(10)]
        means[label] = np.mean([im[30:100, 20:108].astype(float).std() for im in imgs])
    assert means["NORMAL"] != pytest.approx(means["PNEUMONIA"], rel=0.01)
    assert means["NORMAL"] != pytest.approx(means["COVID"], rel=0.01)


def test_demo_refuses_unknown_class():
    with pytest.raises(ValueError, match="unknown class"):
        demo.synthetic_xray("FLU", np.random.default_rng(0))


def test_demo_images_are_8bit_grayscale(tmp_path):
    out = demo.write_demo_dataset(tmp_path / "d", per_class=1, size=64)
    with Image.open(next((out / "COVID").glob("*.png"))) as im:
        assert im.mode == "L" and im.size == (64, 64)
