"""Lung masking: lungs found on a drawn chest, every image kept by name, supplied masks honoured, atomic."""

import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLE_DIR, needs_sample
from matplotlib.figure import Figure
from PIL import Image
from scipy import ndimage as ndi

from cxrcluster import data, demo, masking


@pytest.mark.parametrize("size", [96, 256])
@pytest.mark.parametrize("label", demo.CLASSES)
@pytest.mark.parametrize("seed", [0, 1])
def test_lung_mask_finds_two_lungs_inside_a_synthetic_chest(label, size, seed):
    image = demo.synthetic_xray(label, np.random.default_rng(seed), size=size).astype(np.float32)
    mask, status = masking.lung_mask(image)
    assert status == "ok"
    assert mask.shape == image.shape and mask.dtype == bool
    components, n = ndi.label(mask)
    assert n == 2
    centres = sorted(np.argwhere(components == k).mean(axis=0)[1] / size for k in (1, 2))
    assert centres[0] < 0.45 and centres[1] > 0.55  # one lung in each half
    assert not mask[:, int(0.49 * size):int(0.51 * size) + 1].any()  # not the spine
    body = ndi.binary_fill_holes(image > 0.35 * 255)
    assert not (mask & ~body).any()  # nothing outside the body
    assert image[mask].mean() < image[body & ~mask].mean()  # darker than the rest of the body
    assert 0.03 < mask.mean() < 0.3


def test_a_mask_that_fails_its_checks_falls_back_and_says_so():
    flat = np.full((120, 100), 80.0, np.float32)
    mask, status = masking.lung_mask(flat)
    assert status.startswith("fallback (template used):") and "left lung" in status and "right lung" in status
    assert np.array_equal(mask, masking.template_mask(flat.shape))
    full, status = masking.lung_mask(flat, fallback="full")
    assert full.all() and "image left unmasked" in status
    with pytest.raises(ValueError, match="fallback must be"):
        masking.lung_mask(flat, fallback="guess")


@pytest.fixture
def dataset(tmp_path):
    """Synthetic chests in the class layout: PNG, a JPEG, an unreadable file, metadata and the demo marker."""
    root = demo.write_demo_dataset(tmp_path / "data", per_class=2, size=96)
    rng = np.random.default_rng(5)
    Image.fromarray(demo.synthetic_xray("NORMAL", rng, size=112), "L").convert("RGB").save(
        root / "NORMAL" / "colour.jpeg", quality=95)
    (root / "PNEUMONIA" / "broken.png").write_bytes(b"not an image")
    labels = data.scan_dataset(root)
    (root / "metadata.csv").write_text("image,patient\n" + "".join(f"{p},x{i}\n" for i, p in enumerate(labels["path"])))
    return root, labels


def test_masked_copy_keeps_every_image_by_name_and_blacks_out_the_rest(dataset, tmp_path):
    root, labels = dataset
    out = tmp_path / "masked"
    report = masking.mask_dataset(labels, root, out, masks_out=tmp_path / "masks", progress=False)
    assert list(report.columns) == masking.REPORT_COLUMNS
    assert report["image_name"].tolist() == labels["image_name"].tolist()
    rescanned = data.scan_dataset(out)
    pd.testing.assert_frame_equal(rescanned, labels)  # same count, names, classes and paths
    assert (out / "metadata.csv").read_bytes() == (root / "metadata.csv").read_bytes()
    assert demo.is_synthetic(out)
    pd.testing.assert_frame_equal(pd.read_csv(out / masking.REPORT_FILE), report)

    by_name = report.set_index("image_name")
    assert by_name.loc["broken.png", "status"].startswith("unreadable")
    assert (out / "PNEUMONIA" / "broken.png").read_bytes() == b"not an image"
    ok = report[report["mask_source"] == "classical"]
    assert len(ok) == len(report) - 1 and (ok["status"] == "ok").all()
    assert ok["lung_fraction"].between(0.03, 0.3).all()

    for rel in ok["path"]:
        masked = np.asarray(Image.open(out / rel))
        original = np.asarray(Image.open(root / rel).convert("L"))
        mask = np.asarray(Image.open((tmp_path / "masks" / rel).with_suffix(".png"))) > 0
        assert masked.shape == original.shape == mask.shape and masked.ndim == 2
        assert mask.mean() == pytest.approx(by_name.loc[rel.split("/")[-1], "lung_fraction"])
        if rel.endswith(".png"):
            assert (masked[~mask] == 0).all()
            assert np.array_equal(masked[mask], original[mask])  # lossless inside the lungs
        else:  # re-encoded: JPEG's ringing leaves faint values beside the mask's edge
            assert Image.open(out / rel).format == "JPEG"
            assert (masked[~ndi.binary_dilation(mask, iterations=3)] <= 8).all()
            assert np.abs(masked[mask].astype(int) - original[mask]).mean() < 3


def test_supplied_masks_are_used_whatever_their_size_and_extension(dataset, tmp_path):
    root, labels = dataset
    readable = labels[labels["image_name"] != "broken.png"].reset_index(drop=True)
    masks = tmp_path / "supplied"
    for rel in readable["path"]:
        target = (masks / rel).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        half = np.zeros((50, 40), np.uint8)
        half[:, :20] = 7  # any nonzero value is lung: the image's left half
        Image.fromarray(half).save(target)
    report = masking.mask_dataset(readable, root, tmp_path / "masked", masks_dir=masks, progress=False)
    assert (report["mask_source"] == "supplied").all() and (report["status"] == "ok").all()
    assert report["lung_fraction"].to_numpy() == pytest.approx(0.5, abs=0.02)
    for rel in readable["path"]:
        masked = np.asarray(Image.open(tmp_path / "masked" / rel))
        width = masked.shape[1]
        assert (masked[:, width // 2 + 2:] == 0).all()
        assert masked[:, : width // 2 - 2].any()


def test_missing_supplied_masks_are_refused_by_name_before_any_work(dataset, tmp_path):
    root, labels = dataset
    masks = tmp_path / "supplied"
    (masks / "COVID").mkdir(parents=True)
    with pytest.raises(data.DatasetError, match=r"8 of 8 images have no mask .*COVID/synthetic-covid-000.png"):
        masking.mask_dataset(labels, root, tmp_path / "masked", masks_dir=masks, progress=False)
    assert not (tmp_path / "masked").exists()


def test_a_failure_leaves_the_previous_copy_and_no_temporary_folder(dataset, tmp_path, monkeypatch):
    root, labels = dataset
    out = tmp_path / "masked"
    masking.mask_dataset(labels, root, out, progress=False)
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    original, calls = masking._mask_one, []

    def failing(*args):
        calls.append(args)
        if len(calls) == 4:
            raise OSError("disk full")
        return original(*args)

    monkeypatch.setattr(masking, "_mask_one", failing)
    with pytest.raises(OSError, match="disk full"):
        masking.mask_dataset(labels, root, out, workers=1, progress=False)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_the_copy_must_be_outside_the_data_folder(dataset):
    root, labels = dataset
    with pytest.raises(ValueError, match="must be outside the data folder"):
        masking.mask_dataset(labels, root, root / "masked", progress=False)


def test_status_counts_and_qa_figure(dataset, tmp_path):
    root, labels = dataset
    report = masking.mask_dataset(labels, root, tmp_path / "masked", masks_out=tmp_path / "masks", progress=False)
    counts = masking.status_counts(report)
    assert counts.loc["PNEUMONIA", "unreadable"] == 1 and counts.loc["NORMAL", "ok"] == 3
    assert counts["total"].sum() == len(labels)
    fig = masking.mask_qa_figure(report, root, masks_dir=tmp_path / "masks", per_class=2,
                                 data_note="synthetic demo data - not evidence")
    assert isinstance(fig, Figure)
    title = fig._suptitle.get_text()
    assert "synthetic demo data - not evidence" in title and "PNEUMONIA 1/3" in title
    assert len([ax for ax in fig.axes if ax.images]) >= 5


@pytest.mark.shared
@needs_sample
def test_real_sample_masks_mostly_pass_their_checks(tmp_path):
    labels = data.scan_dataset(SAMPLE_DIR)
    picked = labels.groupby("label").head(5).reset_index(drop=True)
    report = masking.mask_dataset(picked, SAMPLE_DIR, tmp_path / "masked", progress=False)
    assert len(data.scan_dataset(tmp_path / "masked")) == len(picked)
    assert (report["status"] == "ok").mean() >= 0.6
    assert report["lung_fraction"].between(0.05, 0.6).all()
