"""Unit tests: compressed DICOM as hospitals export it is read like the uncompressed original.

CR/DX exports are usually JPEG-LS, JPEG Lossless (process 14, selection value 1) or
JPEG 2000; pydicom decodes them through the plugins pinned in requirements.txt.
pydicom encodes JPEG-LS and JPEG 2000 itself; it has no JPEG Lossless encoder, so
that file is a committed fixture (tests/data/README.md says how it was made).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.pixels import get_decoder
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless
from test_layouts import dicom

from cxrcluster import audit, data, images

DATA = Path(__file__).parent / "data"
SV1_FIXTURE = DATA / "jpeg_lossless_sv1_64x64.dcm"


def source_pixels() -> np.ndarray:
    """The 64 x 64, 12-bit test radiograph: a ramp with texture within 0..4095, from integer arithmetic only.

    The committed JPEG Lossless fixture was compressed from exactly these pixels.
    """
    y, x = np.mgrid[0:64, 0:64]
    return ((x * 61 + y * 3 + (x * y) % 251) % 4096).astype(np.uint16)


def _compressed(path: Path, syntax) -> Path:
    """``source_pixels`` written by the ``dicom`` helper, then compressed by pydicom."""
    dicom(path, source_pixels())
    ds = pydicom.dcmread(path)
    ds.compress(syntax)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def hospital_export(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """The uncompressed original and its three lossless compressions, one folder per class."""
    dicom(tmp_path / "NORMAL" / "original.dcm", source_pixels())
    _compressed(tmp_path / "COVID" / "jpeg_ls.dcm", JPEGLSLossless)
    _compressed(tmp_path / "COVID" / "jpeg_2000.dcm", JPEG2000Lossless)
    (tmp_path / "PNEUMONIA").mkdir()
    (tmp_path / "PNEUMONIA" / "jpeg_lossless_sv1.dcm").write_bytes(SV1_FIXTURE.read_bytes())
    return tmp_path, data.scan_dataset(tmp_path)


@pytest.mark.parametrize(("name", "syntax"), [
    ("COVID/jpeg_ls.dcm", JPEGLSLossless),
    ("COVID/jpeg_2000.dcm", JPEG2000Lossless),
    ("PNEUMONIA/jpeg_lossless_sv1.dcm", JPEGLosslessSV1),
])
def test_lossless_compressions_read_as_the_original(hospital_export, name, syntax):
    root, _ = hospital_export
    ds = pydicom.dcmread(root / name)
    assert ds.file_meta.TransferSyntaxUID == syntax
    assert (ds.BitsStored, ds.PhotometricInterpretation, ds.Rows, ds.Columns) == (12, "MONOCHROME2", 64, 64)
    np.testing.assert_array_equal(ds.pixel_array, source_pixels())  # lossless: the very same values
    original = images.read_luminance(root / "NORMAL" / "original.dcm")
    luminance = images.read_luminance(root / name)
    assert luminance.min() == 0 and luminance.max() == 255
    np.testing.assert_array_equal(luminance, original)


def test_the_audit_reads_every_compressed_file(hospital_export):
    root, labels = hospital_export
    meta = audit.image_metadata(labels, root, decode=True)
    assert (meta["error"] == "").all(), meta[["image_name", "error"]]
    assert set(meta["bit_depth"]) == {12} and set(meta["mode"]) == {"MONOCHROME2"}
    # Same pixels in all four files: the perceptual hashes agree; the bytes do not.
    pairs = audit.find_duplicates(meta, root)
    assert len(pairs) == 6 and set(pairs["kind"]) == {"near"} and (pairs["distance"] == 0).all(), pairs


def test_a_syntax_without_a_decoder_is_named_in_the_reason(tmp_path, monkeypatch):
    path = _compressed(tmp_path / "jpeg_ls.dcm", JPEGLSLossless)
    # As on a machine without the plugins: pydicom's JPEG-LS decoder has no plugin available.
    monkeypatch.setattr(get_decoder(JPEGLSLossless), "_available", {})
    with pytest.raises(images.ImageReadError) as info:
        images.read_luminance(path)
    assert "pixel data cannot be decoded (transfer syntax JPEG-LS Lossless Image Compression)" in info.value.reason
