"""Unit tests of per-image label drift on hand-written clustering labels."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_layouts import dicom

from cxrcluster import drift, results
from cxrcluster.atomic import write_csv
from cxrcluster.images import read_luminance

RESULTS = pd.DataFrame({
    "model": ["ResNet50", "ResNet50", "VGG16", "VGG16"],
    "clustering": ["KMeans", "DBSCAN", "KMeans", "Agglomerative"],
    "status": ["ok", "ok", "ok", "failed: out of memory"],
})


def _frame(rows):
    """rows: (image_name, label, cluster, matched_label or '', changed)."""
    return pd.DataFrame(rows, columns=results.LABEL_FRAME_COLUMNS)


# Four images, three ok runs and one failed run whose labels must be ignored.
FRAMES = {
    "ResNet50_KMeans": _frame([
        ("a.png", "COVID", 0, "COVID", False),
        ("b.png", "COVID", 1, "NORMAL", True),
        ("c.jpeg", "NORMAL", 1, "NORMAL", False),
        ("d.jpeg", "PNEUMONIA", 0, "COVID", True),
    ]),
    "ResNet50_DBSCAN": _frame([
        ("a.png", "COVID", 0, "COVID", False),
        ("b.png", "COVID", -1, "", True),
        ("c.jpeg", "NORMAL", 2, "PNEUMONIA", True),
        ("d.jpeg", "PNEUMONIA", -1, "", True),
    ]),
    "VGG16_KMeans": _frame([
        ("a.png", "COVID", 2, "COVID", False),
        ("b.png", "COVID", 0, "NORMAL", True),
        ("c.jpeg", "NORMAL", 0, "NORMAL", False),
        ("d.jpeg", "PNEUMONIA", 1, "PNEUMONIA", False),
    ]),
    # Failed run: had it counted, a.png would drift and every share would change.
    "VGG16_Agglomerative": _frame([
        ("a.png", "COVID", 0, "PNEUMONIA", True),
        ("b.png", "COVID", 0, "PNEUMONIA", True),
        ("c.jpeg", "NORMAL", 0, "PNEUMONIA", True),
        ("d.jpeg", "PNEUMONIA", 0, "PNEUMONIA", False),
    ]),
}

# Recomputed by hand over the three ok runs.
EXPECTED = pd.DataFrame(
    [
        # b: NORMAL, noise, NORMAL -> 3/3, NORMAL
        ("b.png", "COVID", 3, 3, 1.0, "NORMAL"),
        # d: COVID, noise, kept -> 2/3, tie COVID vs noise/unmatched -> alphabetical: COVID
        ("d.jpeg", "PNEUMONIA", 3, 2, 2 / 3, "COVID"),
        # c: kept, PNEUMONIA, kept -> 1/3
        ("c.jpeg", "NORMAL", 3, 1, 1 / 3, "PNEUMONIA"),
        ("a.png", "COVID", 3, 0, 0.0, ""),
    ],
    columns=drift.DRIFT_COLUMNS,
)


def _assert_expected(result: pd.DataFrame) -> None:
    assert list(result.columns) == drift.DRIFT_COLUMNS
    pd.testing.assert_frame_equal(result, EXPECTED, check_dtype=False)


def test_label_drift_from_frames_ignores_runs_that_are_not_ok():
    _assert_expected(drift.label_drift(FRAMES, RESULTS))


def test_label_drift_without_results_counts_every_frame():
    result = drift.label_drift(FRAMES).set_index("image_name")
    assert result.loc["a.png", "drift_share"] == pytest.approx(1 / 4)
    assert result.loc["c.jpeg", "most_common_target"] == "PNEUMONIA"


def test_label_drift_from_folder_matches_hand_count(tmp_path: Path):
    for key, frame in FRAMES.items():
        if key != "VGG16_Agglomerative":  # a failed run usually writes no labels
            write_csv(frame, tmp_path / f"{key}.csv")
    _assert_expected(drift.label_drift(tmp_path, RESULTS))


def test_noise_or_unmatched_is_a_target_of_its_own(tmp_path: Path):
    frames = {
        "M_A": _frame([("x", "NORMAL", -1, "", True)]),
        "M_B": _frame([("x", "NORMAL", 5, "", True)]),  # an unmatched cluster
        "M_C": _frame([("x", "NORMAL", 1, "COVID", True)]),
    }
    result = drift.label_drift(frames)
    assert result.loc[0, "most_common_target"] == drift.NOISE_TARGET
    # Written and read back, the empty matched_label stays a noise target.
    for key, frame in frames.items():
        write_csv(frame, tmp_path / f"{key}.csv")
    results = pd.DataFrame({"model": ["M"] * 3, "clustering": ["A", "B", "C"], "status": ["ok"] * 3})
    pd.testing.assert_frame_equal(drift.label_drift(tmp_path, results), result, check_dtype=False)


def test_load_label_frames_reads_only_ok_runs_and_types_columns(tmp_path: Path):
    for key, frame in FRAMES.items():
        write_csv(frame, tmp_path / f"{key}.csv")
    frames = results.load_label_frames(RESULTS, tmp_path)
    assert list(frames) == ["ResNet50_KMeans", "ResNet50_DBSCAN", "VGG16_KMeans"]
    loaded = frames["ResNet50_DBSCAN"]
    assert loaded["changed"].dtype == bool
    assert loaded["matched_label"].tolist() == ["COVID", "", "PNEUMONIA", ""]
    assert loaded["cluster"].tolist() == [0, -1, 2, -1]


def test_missing_labels_of_an_ok_run_raise(tmp_path: Path):
    write_csv(FRAMES["ResNet50_KMeans"], tmp_path / "ResNet50_KMeans.csv")
    with pytest.raises(FileNotFoundError, match="ResNet50_DBSCAN"):
        results.load_label_frames(RESULTS, tmp_path)


def test_folder_without_results_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="results"):
        drift.label_drift(tmp_path)


def test_inconsistent_labels_across_runs_raise():
    frames = {"M_A": _frame([("x", "NORMAL", 0, "NORMAL", False)]),
              "M_B": _frame([("x", "COVID", 0, "COVID", False)])}
    with pytest.raises(ValueError, match="labelled differently"):
        drift.label_drift(frames)


def test_no_ok_run_gives_an_empty_table():
    results = RESULTS.assign(status="skipped: no features")
    result = drift.label_drift(FRAMES, results)
    assert result.empty and list(result.columns) == drift.DRIFT_COLUMNS


@pytest.fixture
def images(tmp_path: Path) -> pd.DataFrame:
    rows = []
    rng = np.random.default_rng(0)
    for name, label in [("a.png", "COVID"), ("b.png", "COVID"), ("c.jpeg", "NORMAL"), ("d.jpeg", "PNEUMONIA")]:
        (tmp_path / label).mkdir(exist_ok=True)
        image = Image.fromarray(rng.integers(0, 256, size=(40, 50), dtype=np.uint8), mode="L")
        (image if name.endswith(".png") else image.convert("RGB")).save(tmp_path / label / name)
        rows.append({"image_name": name, "label": label, "path": f"{label}/{name}"})
    rows.append({"image_name": "e.png", "label": "EMPTY", "path": "EMPTY/e.png"})  # a class that never drifts
    return pd.DataFrame(rows)


def test_plot_drift_gallery(tmp_path: Path, images: pd.DataFrame):
    table = drift.label_drift(FRAMES, RESULTS)
    table = pd.concat([table, pd.DataFrame([("e.png", "EMPTY", 3, 0, 0.0, "")], columns=drift.DRIFT_COLUMNS)])
    fig = drift.plot_drift_gallery(table, tmp_path, images, per_class=2, data_note="hand-made fixture")

    assert "hand-made fixture" in fig.get_suptitle() and "3 successful" in fig.get_suptitle()
    assert len(fig.axes) == 4 * 2  # classes COVID, EMPTY, NORMAL, PNEUMONIA x 2
    shown = [ax for ax in fig.axes if ax.images]
    titles = [ax.get_title() for ax in shown]
    # a.png never changed, so COVID shows b.png only; EMPTY shows none.
    assert len(shown) == 3
    assert titles[0].startswith("b.png") and "100%" in titles[0] and "(3/3)" in titles[0] and "NORMAL" in titles[0]
    assert any(t.startswith("d.jpeg") and "67%" in t and "COVID" in t for t in titles)
    empty_row = fig.axes[2]  # first cell of the EMPTY row
    assert empty_row.get_ylabel() == "EMPTY"
    assert any("no image" in text.get_text() for text in empty_row.texts)


def test_gallery_shows_the_pixels_of_dicom_and_16_bit_images(tmp_path: Path):
    """Thumbnails go through images.read_luminance: a DICOM is drawn, a 16-bit gradient is not clipped white.

    Read with PIL directly, the DICOM is "unreadable" and the 16-bit PNG, converted to 8 bits, is 255
    wherever a value exceeds 255: all but its first column.
    """
    square = np.full((48, 64), 500, dtype=np.uint16)
    square[:24, :32] = 4000  # a bright top-left quadrant on a dark field, 12 bits
    dicom(tmp_path / "COVID" / "square.dcm", square)
    gradient = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (48, 1))
    (tmp_path / "NORMAL").mkdir()
    Image.fromarray(gradient).save(tmp_path / "NORMAL" / "gradient.png")
    with Image.open(tmp_path / "NORMAL" / "gradient.png") as written:
        assert written.mode.startswith("I")  # stored as 16-bit greyscale
    labels = pd.DataFrame({"image_name": ["square.dcm", "gradient.png"], "label": ["COVID", "NORMAL"],
                           "path": ["COVID/square.dcm", "NORMAL/gradient.png"]})
    table = pd.DataFrame([("square.dcm", "COVID", 2, 2, 1.0, "NORMAL"),
                          ("gradient.png", "NORMAL", 2, 1, 0.5, "COVID")], columns=drift.DRIFT_COLUMNS)

    fig = drift.plot_drift_gallery(table, tmp_path, labels, per_class=1, thumb_size=32)

    shown = {}
    for ax, (name, rel) in zip(fig.axes, labels[["image_name", "path"]].itertuples(index=False), strict=True):
        assert ax.get_title().startswith(name)
        assert len(ax.images) == 1, [text.get_text() for text in ax.texts]  # drawn, not "unreadable"
        shown[name] = np.asarray(ax.images[0].get_array(), dtype=np.float64)
        expected = Image.fromarray(read_luminance(tmp_path / rel)).resize((32, 24), Image.Resampling.BILINEAR)
        np.testing.assert_allclose(shown[name], np.asarray(expected), atol=1e-3)

    dcm = shown["square.dcm"]
    assert dcm.shape == (24, 32)
    assert dcm[:10, :14].min() > 250 and dcm[14:, 18:].max() < 5  # the quadrant, bright on black
    png = shown["gradient.png"]
    assert png.shape == (24, 32)
    assert png.min() < 5 and png.max() > 250 and (png >= 254.5).mean() < 0.1  # the full range, not clipped
    assert (np.diff(png, axis=1) > 0).all()  # every column brighter than the last: the gradient survives


def test_a_degenerate_run_changes_nothing_in_the_drift(tmp_path: Path):
    """One cluster: every image but one class's "changes"; had it counted, every share would move."""
    one_cluster = _frame([
        ("a.png", "COVID", 0, "COVID", False),
        ("b.png", "COVID", 0, "COVID", False),
        ("c.jpeg", "NORMAL", 0, "", True),
        ("d.jpeg", "PNEUMONIA", 0, "", True),
    ])
    with_degenerate = pd.concat([RESULTS, pd.DataFrame({
        "model": ["VGG16"], "clustering": ["OPTICS"], "status": ["degenerate: 1 cluster (fewer than 2)"]})],
        ignore_index=True)
    frames = {**FRAMES, "VGG16_OPTICS": one_cluster}
    before = drift.label_drift(FRAMES, RESULTS)
    pd.testing.assert_frame_equal(drift.label_drift(frames, with_degenerate), before)
    for key, frame in frames.items():
        write_csv(frame, tmp_path / f"{key}.csv")
    pd.testing.assert_frame_equal(drift.label_drift(tmp_path, with_degenerate), before)
    assert "VGG16_OPTICS" not in results.load_label_frames(with_degenerate, tmp_path)
