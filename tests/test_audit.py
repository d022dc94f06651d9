"""Unit tests of the dataset audit on small generated image folders."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLE_DIR, needs_sample
from PIL import Image, ImageEnhance

from cxrcluster import audit
from cxrcluster.audit import duplicates

CLASSES = ["COVID", "NORMAL", "PNEUMONIA"]
PER_CLASS = 10


def _smooth_image(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A random textured greyscale picture: distinct images get distant perceptual hashes.

    The texture fills the frequencies a 256-bit hash looks at, and mid-range grey levels
    keep a brightened copy from clipping, as in a radiograph.
    """
    coarse = Image.fromarray(rng.integers(40, 200, size=(24, 24), dtype=np.uint8), mode="L")
    return coarse.resize(size, Image.Resampling.BICUBIC)


def _make_dataset(root: Path, confound: bool) -> pd.DataFrame:
    """Write PER_CLASS images per class and return the label table.

    Every image is 64 x 64, 8-bit greyscale PNG; with ``confound`` the COVID
    class is saved at 96 x 80 instead, as a second source would be.
    """
    rng = np.random.default_rng(7)
    rows = []
    for label in CLASSES:
        (root / label).mkdir(parents=True)
        size = (96, 80) if confound and label == "COVID" else (64, 64)
        for k in range(PER_CLASS):
            name = f"{label.lower()}_{k:02d}.png"
            _smooth_image(rng, size).save(root / label / name)
            rows.append({"image_name": name, "label": label, "path": f"{label}/{name}"})
    return pd.DataFrame(rows)


def _add(labels: pd.DataFrame, name: str, label: str) -> pd.DataFrame:
    row = pd.DataFrame([{"image_name": name, "label": label, "path": f"{label}/{name}"}])
    return pd.concat([labels, row], ignore_index=True)


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """Confounded dataset with an exact duplicate across classes, a near duplicate and a text file."""
    labels = _make_dataset(tmp_path, confound=True)
    # Exact copy of a NORMAL image filed under PNEUMONIA: a label conflict.
    shutil.copyfile(tmp_path / "NORMAL" / "normal_03.png", tmp_path / "PNEUMONIA" / "copy_of_normal_03.png")
    labels = _add(labels, "copy_of_normal_03.png", "PNEUMONIA")
    # Brightened, JPEG re-encoded copy of a PNEUMONIA image, in its own class.
    with Image.open(tmp_path / "PNEUMONIA" / "pneumonia_05.png") as image:
        ImageEnhance.Brightness(image).enhance(1.1).convert("RGB").save(
            tmp_path / "PNEUMONIA" / "pneumonia_05_reencoded.jpg", quality=80)
    labels = _add(labels, "pneumonia_05_reencoded.jpg", "PNEUMONIA")
    (tmp_path / "NORMAL" / "not_an_image.png").write_text("this is text, not a PNG\n")
    labels = _add(labels, "not_an_image.png", "NORMAL")
    return tmp_path, labels


def test_image_metadata_reads_headers_and_records_unreadable(planted):
    data_dir, labels = planted
    labels = _add(labels, "gone.png", "COVID")  # listed but absent
    meta = audit.image_metadata(labels, data_dir)

    assert list(meta.columns) == audit.METADATA_COLUMNS
    assert meta["image_name"].tolist() == labels["image_name"].tolist()
    by_name = meta.set_index("image_name")
    assert by_name.loc["covid_00.png", ["format", "mode", "bit_depth", "width", "height"]].tolist() == [
        "PNG", "L", 8, 96, 80]
    assert by_name.loc["normal_00.png", ["width", "height"]].tolist() == [64, 64]
    assert by_name.loc["pneumonia_05_reencoded.jpg", ["format", "mode", "bit_depth"]].tolist() == ["JPEG", "RGB", 24]
    assert by_name.loc["covid_00.png", "file_size"] == (data_dir / "COVID" / "covid_00.png").stat().st_size

    assert "UnidentifiedImageError" in by_name.loc["not_an_image.png", "error"]
    assert pd.isna(by_name.loc["not_an_image.png", "width"])
    assert by_name.loc["gone.png", "error"] == "file not found"
    assert (meta["error"] != "").sum() == 2


@pytest.mark.parametrize(
    ("mode", "fmt", "expected_bits"),
    [
        ("L", "PNG", 8),
        ("RGB", "PNG", 24),
        ("RGBA", "PNG", 32),
        ("LA", "PNG", 16),
        ("I;16", "PNG", 16),
        ("1", "PNG", 1),
        ("P", "PNG", 8),
        ("P1", "PNG", 1),  # a two-colour palette image is stored with 1 bit per pixel
        ("L", "JPEG", 8),
        ("RGB", "JPEG", 24),
        ("L", "TIFF", 8),
        ("RGB", "BMP", 24),
    ],
)
def test_bit_depth_is_bits_per_pixel(tmp_path, mode, fmt, expected_bits):
    name = f"x.{fmt.lower()}"
    gradient = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, mode="L")
    image = gradient.quantize(2) if mode == "P1" else gradient.convert(mode)
    image.save(tmp_path / name, format=fmt)
    labels = pd.DataFrame([{"image_name": name, "label": "A", "path": name}])
    meta = audit.image_metadata(labels, tmp_path)
    assert meta.loc[0, "error"] == ""
    assert meta.loc[0, "bit_depth"] == expected_bits


def test_decode_catches_a_truncated_file_that_the_header_hides(tmp_path):
    buffer = io.BytesIO()
    _smooth_image(np.random.default_rng(0), (128, 128)).convert("RGB").save(buffer, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    labels = pd.DataFrame([{"image_name": "cut.jpg", "label": "A", "path": "cut.jpg"}])
    assert audit.image_metadata(labels, tmp_path).loc[0, "error"] == ""
    assert "truncated" in audit.image_metadata(labels, tmp_path, decode=True).loc[0, "error"]


def test_audit_summary_per_class(planted):
    data_dir, labels = planted
    summary = audit.audit_summary(audit.image_metadata(labels, data_dir)).set_index("label")
    assert summary.index.tolist() == CLASSES
    assert summary["count"].tolist() == [PER_CLASS, PER_CLASS + 1, PER_CLASS + 2]
    assert summary["n_unreadable"].tolist() == [0, 1, 0]
    assert summary.loc["COVID", "formats"] == f"PNG: {PER_CLASS}"
    assert summary.loc["PNEUMONIA", "formats"] == f"PNG: {PER_CLASS + 1}, JPEG: 1"
    assert summary.loc["PNEUMONIA", "bit_depths"] == f"8: {PER_CLASS + 1}, 24: 1"
    assert summary.loc["COVID", ["width_median", "width_min", "width_max"]].tolist() == [96, 96, 96]
    assert summary.loc["NORMAL", ["height_median", "height_min", "height_max"]].tolist() == [64, 64, 64]


def test_metadata_confound_flags_a_class_saved_at_another_size(planted):
    data_dir, labels = planted
    result = audit.metadata_confound(audit.image_metadata(labels, data_dir), seed=0)
    assert result["confounded"] is True
    assert result["accuracy"] >= result["baseline"] + audit.CONFOUND_MARGIN
    assert result["separable_classes"] == ["COVID"]
    assert result["per_class_f1"]["COVID"] == 1.0
    # The size alone gives it away, not the file size.
    assert result["balanced_accuracy_without_file_size"] >= 0.6
    assert result["n_images"] == 3 * PER_CLASS + 2  # the text file is left out
    assert "SOURCE CONFOUND" in result["message"] and "COVID" in result["message"]


def test_metadata_confound_quiet_without_a_confound(tmp_path):
    labels = _make_dataset(tmp_path, confound=False)
    result = audit.metadata_confound(audit.image_metadata(labels, tmp_path), seed=0)
    assert result["confounded"] is False
    assert result["accuracy"] < max(result["baseline"] + audit.CONFOUND_MARGIN, audit.CONFOUND_MIN_SCORE)
    assert result["separable_classes"] == []
    assert result["message"].startswith("No metadata confound detected")


def test_metadata_confound_is_seeded(planted):
    data_dir, labels = planted
    meta = audit.image_metadata(labels, data_dir)
    assert audit.metadata_confound(meta, seed=3) == audit.metadata_confound(meta, seed=3)


def test_metadata_confound_with_too_few_images():
    meta = pd.DataFrame({
        "image_name": ["a", "b", "c"], "label": ["A", "A", "B"], "path": ["a", "b", "c"],
        "format": ["PNG"] * 3, "mode": ["L"] * 3, "bit_depth": [8] * 3, "width": [4] * 3,
        "height": [4] * 3, "file_size": [10, 11, 12], "error": [""] * 3,
    })
    result = audit.metadata_confound(meta)
    assert result["confounded"] is False and result["accuracy"] is None
    assert "not run" in result["message"]


def test_find_duplicates_exact_conflict_and_near_copy(planted):
    data_dir, labels = planted
    meta = audit.image_metadata(labels, data_dir)
    pairs = audit.find_duplicates(meta, data_dir)

    assert list(pairs.columns) == audit.DUPLICATE_COLUMNS
    assert len(pairs) == 2, pairs
    exact, near = pairs.iloc[0], pairs.iloc[1]
    assert (exact["image_a"], exact["image_b"], exact["kind"], exact["distance"]) == (
        "normal_03.png", "copy_of_normal_03.png", "exact", 0)
    assert (exact["label_a"], exact["label_b"], exact["label_conflict"]) == ("NORMAL", "PNEUMONIA", True)
    assert (near["image_a"], near["image_b"], near["kind"]) == (
        "pneumonia_05.png", "pneumonia_05_reencoded.jpg", "near")
    assert 0 <= near["distance"] <= 24 and not near["label_conflict"]


def test_find_duplicates_skips_unreadable_with_a_warning(planted):
    data_dir, labels = planted  # the label table, not the metadata: the text file is tried
    with pytest.warns(UserWarning, match="not_an_image.png"):
        pairs = audit.find_duplicates(labels, data_dir)
    assert pairs["kind"].tolist() == ["exact", "near"]


def test_find_duplicates_threshold(planted):
    data_dir, labels = planted
    meta = audit.image_metadata(labels, data_dir)
    near_distance = audit.find_duplicates(meta, data_dir).query("kind == 'near'")["distance"].iloc[0]
    strict = audit.find_duplicates(meta, data_dir, max_distance=int(near_distance) - 1)
    assert strict["kind"].tolist() == ["exact"]


def test_find_duplicates_hashes_16_bit_images_over_their_own_range(tmp_path):
    """12-bit X-rays saved as 16-bit PNG: Pillow alone clips them to white, making them all alike."""
    rng = np.random.default_rng(3)
    labels = []
    for k in range(3):
        texture = np.asarray(_smooth_image(rng, (64, 64)), dtype=np.uint16)
        # 40..200 -> about 640..3200, the 12 bits of a detector, far above 8-bit white
        Image.fromarray(texture * 16).save(tmp_path / f"xray_{k}.png")
        labels.append({"image_name": f"xray_{k}.png", "label": "NORMAL", "path": f"xray_{k}.png"})
    shutil.copyfile(tmp_path / "xray_1.png", tmp_path / "xray_1_copy.png")
    labels.append({"image_name": "xray_1_copy.png", "label": "COVID", "path": "xray_1_copy.png"})
    with Image.open(tmp_path / "xray_0.png") as image:
        assert image.mode == "I;16" and np.asarray(image).max() > 255

    pairs = audit.find_duplicates(pd.DataFrame(labels), tmp_path)
    assert pairs[["image_a", "image_b", "kind", "distance"]].values.tolist() == [
        ["xray_1.png", "xray_1_copy.png", "exact", 0]]


def test_near_pairs_match_brute_force_across_blocks():
    rng = np.random.default_rng(1)
    packed = rng.integers(0, 256, size=(60, 4), dtype=np.uint8)
    packed[7] = packed[3] ^ np.array([1, 0, 0, 0], dtype=np.uint8)  # one bit apart
    bits = np.unpackbits(packed, axis=1)
    brute = {(i, j, int((bits[i] != bits[j]).sum())) for i in range(60) for j in range(i + 1, 60)
             if (bits[i] != bits[j]).sum() <= 10}
    # A tiny block size forces many blocks.
    found = set()
    for a, b, d in duplicates._near_pairs(packed, 10, block_bytes=4 * 60 * 7):
        found |= {(int(x), int(y), int(z)) for x, y, z in zip(a, b, d, strict=True)}
    assert (3, 7, 1) in found
    assert found == brute


def test_plot_audit(planted):
    data_dir, labels = planted
    fig = audit.plot_audit(audit.image_metadata(labels, data_dir), data_note="generated fixture")
    axes = fig.axes
    assert len(axes) == 3
    assert all("generated fixture" in ax.get_title() for ax in axes)
    assert axes[0].get_xlabel() == "width (pixels)"
    assert axes[1].get_yscale() == "log"
    # Composition bars of each class stack to 100 %.
    heights = {}
    for bar in axes[2].patches:
        heights[round(bar.get_x(), 3)] = heights.get(round(bar.get_x(), 3), 0) + bar.get_height()
    assert len(heights) == 3 and all(h == pytest.approx(100) for h in heights.values())


@pytest.mark.shared
@needs_sample
def test_real_sample_shows_its_source_difference():
    rows = [{"image_name": p.name, "label": p.parent.name, "path": p.relative_to(SAMPLE_DIR).as_posix()}
            for p in sorted(SAMPLE_DIR.glob("*/*")) if p.suffix.lower() in (".png", ".jpeg", ".jpg")]
    meta = audit.image_metadata(pd.DataFrame(rows), SAMPLE_DIR)
    assert (meta["error"] == "").all()
    summary = audit.audit_summary(meta).set_index("label")
    assert summary.loc["COVID", "bit_depths"] == "8: 100"
    assert summary.loc["NORMAL", "bit_depths"] == "24: 100"
    result = audit.metadata_confound(meta, seed=0)
    assert result["confounded"] is True
    assert "COVID" in result["separable_classes"]
