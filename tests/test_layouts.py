"""Data as researchers hold it: labels files, DICOM, linked data stores, one-class folders."""

import csv
import io

import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLE_DIR, needs_sample
from PIL import Image

from cxrcluster import data, images
from cxrcluster.probe import patient_groups

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, RLELossless, generate_uid  # noqa: E402


def png(path, value=128, size=16):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, dtype=np.uint8)).save(path, format="PNG")
    return path


# ---------------------------------------------------------------- labels files


def test_the_original_studys_layout_with_a_two_column_labels_file(tmp_path):
    images_dir = tmp_path / "images"
    rows = []
    for i, label in enumerate(["COVID-19", "Normal", "Pneumonia"] * 2):
        name = f"img_{i + 1:06d}.png"
        png(images_dir / name, value=40 * i)
        rows.append({"image_name": name, "label": label})
    pd.DataFrame(rows).to_csv(tmp_path / "original_labels.csv", index=False)
    labels = data.read_labels_file(tmp_path / "original_labels.csv", images_dir)
    assert list(labels.columns) == data.LABEL_COLUMNS
    assert labels["label"].tolist() == ["COVID", "COVID", "NORMAL", "NORMAL", "PNEUMONIA", "PNEUMONIA"]
    assert labels["path"].tolist() == labels["image_name"].tolist()  # one folder: the path is the name
    assert [p.name for p in data.resolve_image_paths(labels, images_dir)] == labels["image_name"].tolist()


def test_a_collection_csv_with_paths_labels_and_patients_in_a_nested_folder(tmp_path):
    root = tmp_path / "store"
    rows = []
    for i in range(6):
        rel = f"batch{i % 2}/p{i // 2}/x{i}.png"
        png(root / rel)
        rows.append({"Image Index": rel, "Finding Labels": ["covid", "NORMAL"][i % 2], "Patient ID": f"P{i // 2}"})
    pd.DataFrame(rows).to_csv(tmp_path / "entries.csv", index=False)
    labels = data.read_labels_file(tmp_path / "entries.csv", root)
    assert list(labels.columns) == [*data.LABEL_COLUMNS, "patient"]
    assert labels["label"].value_counts().to_dict() == {"COVID": 3, "NORMAL": 3}
    assert labels["image_name"].tolist() == ["x0.png", "x2.png", "x4.png", "x1.png", "x3.png", "x5.png"]
    # the probe's folds and the audit group by it
    assert patient_groups(labels).tolist() == ["P0", "P1", "P2", "P0", "P1", "P2"]
    # columns named by option
    renamed = pd.DataFrame(rows).rename(columns={"Finding Labels": "dx", "Image Index": "file_rel"})
    renamed.to_csv(tmp_path / "renamed.csv", index=False)
    with pytest.raises(data.DatasetError, match="no image column"):
        data.read_labels_file(tmp_path / "renamed.csv", root)
    again = data.read_labels_file(tmp_path / "renamed.csv", root, image_column="file_rel", label_column="dx")
    assert again["path"].tolist() == labels["path"].tolist()


def test_bad_rows_of_a_labels_file_are_refused_by_name(tmp_path):
    root = tmp_path / "images"
    for name in ("a.png", "b.png", "c.png", "d.png"):
        png(root / name)
    (root / "empty.png").write_bytes(b"")
    png(tmp_path / "secret.png")
    rows = [("a.png", "COVID"), ("b.png", "NORMAL"), ("c.png", "NORMAL"), ("d.png", "COVID"),
            ("a.png", "COVID"), ("missing.png", "NORMAL"), ("empty.png", "COVID"), ("../secret.png", "NORMAL"),
            ("/etc/passwd", "COVID"), ("", "NORMAL"), ("c.png", "")]
    pd.DataFrame(rows, columns=["image_name", "label"]).to_csv(tmp_path / "labels.csv", index=False)
    with pytest.raises(data.DatasetError) as info:
        data.read_labels_file(tmp_path / "labels.csv", root)
    message = str(info.value)
    for expected in ("file(s) named more than once: a.png", "missing.png (line 7)", "empty file(s): empty.png (line 8)",
                     "outside the data folder: ../secret.png (line 9), /etc/passwd (line 10)",
                     "empty 'image_name' or 'label' on line(s) 11, 12"):
        assert expected in message, (expected, message)



# A spreadsheet's export, as each locale and program writes it: (variant, file bytes). Each must read as
# the plain comma file does, or be refused with the message given.
TABLE_ROWS = [("image_name", "label", "patient"), ("Radiografía 1.png", "COVID", "P1"), ("a;b.png", "COVID", "P2"),
              ("c,d.png", "NORMAL", "P1"), ("e f.png", "NORMAL", "P3")]


def table_text(sep, quote_all=False, crlf=False):
    buffer = io.StringIO()
    csv.writer(buffer, delimiter=sep, lineterminator="\r\n" if crlf else "\n",
               quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL).writerows(TABLE_ROWS)
    return buffer.getvalue()


TABLE_VARIANTS = {
    "comma": table_text(",").encode(),
    "semicolon": table_text(";").encode(),
    "tab": table_text("\t").encode(),
    "bom, semicolon, CRLF": b"\xef\xbb\xbf" + table_text(";", crlf=True).encode(),
    "every field quoted, semicolon, CRLF": table_text(";", quote_all=True, crlf=True).encode(),
    "every field quoted, tab": table_text("\t", quote_all=True).encode(),
}
TABLE_REFUSALS = {
    "Latin-1": (table_text(";").encode("latin-1"), r"is not UTF-8 text \(line 2 holds byte 0xed.*re-save it as UTF-8"),
    "one column": (b"image_name\na.png\nb.png\n", r"cannot tell its separator \(none splits its header.*tried ',', ';', tab"),
    "ambiguous": (b"image_name;label,patient\na.png;COVID,P1\nb.png;NORMAL,P2\n",
                  r"cannot tell its separator \(more than one fits.*tried ',', ';', tab"),
    "empty": (b"\xef\xbb\xbf\r\n", "is empty"),
}


@pytest.fixture
def table_images(tmp_path):
    root = tmp_path / "images"
    for name, *_ in TABLE_ROWS[1:]:
        png(root / name)
    return root


@pytest.mark.parametrize("variant", TABLE_VARIANTS)
def test_a_labels_file_or_metadata_csv_in_any_separator_reads_as_the_comma_file(tmp_path, table_images, variant):
    (tmp_path / "plain.csv").write_text(table_text(","), encoding="utf-8")
    (tmp_path / "variant.csv").write_bytes(TABLE_VARIANTS[variant])
    expected = data.read_labels_file(tmp_path / "plain.csv", table_images)
    assert expected["path"].tolist() == ["Radiografía 1.png", "a;b.png", "c,d.png", "e f.png"]
    pd.testing.assert_frame_equal(data.read_labels_file(tmp_path / "variant.csv", table_images), expected)
    metadata = data.read_metadata(tmp_path / "variant.csv")
    assert [tuple(metadata.columns), *metadata.itertuples(index=False, name=None)] == TABLE_ROWS


@pytest.mark.parametrize("variant", TABLE_REFUSALS)
def test_a_table_that_cannot_be_read_faithfully_is_refused_by_name(tmp_path, table_images, variant):
    content, message = TABLE_REFUSALS[variant]
    (tmp_path / "odd.csv").write_bytes(content)
    with pytest.raises(data.DatasetError, match=r"'[^']*odd\.csv'.*" + message):
        data.read_labels_file(tmp_path / "odd.csv", table_images)
    with pytest.raises(data.DatasetError, match=r"'[^']*odd\.csv'.*" + message):
        data.read_metadata(tmp_path / "odd.csv")


def test_a_label_seen_once_and_a_single_class_are_refused_with_counts(tmp_path):
    root = tmp_path / "images"
    for name in ("a.png", "b.png", "c.png"):
        png(root / name)
    pd.DataFrame({"image_name": ["a.png", "b.png", "c.png"], "label": ["COVID", "COVID", "NORMLA"]}).to_csv(
        tmp_path / "typo.csv", index=False)
    with pytest.raises(data.DatasetError, match=r"fewer than 2 images: NORMLA: 1 \(all classes: COVID: 2, NORMLA: 1\)"):
        data.read_labels_file(tmp_path / "typo.csv", root)
    pd.DataFrame({"image_name": ["a.png", "b.png"], "label": ["covid", "COVID-19"]}).to_csv(
        tmp_path / "one.csv", index=False)
    with pytest.raises(data.DatasetError, match="at least two classes; found COVID: 2"):
        data.read_labels_file(tmp_path / "one.csv", root)


def test_a_data_folder_with_one_class_is_refused_before_any_work(tmp_path):
    png(tmp_path / "COVID" / "a.png")
    png(tmp_path / "COVID" / "b.png")
    (tmp_path / "NORMAL").mkdir()
    with pytest.raises(data.DatasetError, match="at least two classes; found COVID: 2"):
        data.scan_dataset(tmp_path)


# ---------------------------------------------------------------- linked data stores


def test_a_data_folder_of_links_into_a_cache_outside_it(tmp_path):
    cache = tmp_path / "cache" / "objects"
    data_dir = tmp_path / "dataset"
    for i, label in enumerate(["COVID", "COVID", "NORMAL", "NORMAL"]):
        blob = png(cache / f"{i:02x}" / f"blob{i}", value=50 * i)  # content-addressed, no image ending
        (data_dir / label).mkdir(parents=True, exist_ok=True)
        (data_dir / label / f"x{i}.png").symlink_to(blob)
    (data_dir / "NORMAL" / "loop").symlink_to(data_dir, target_is_directory=True)  # a link cycle is walked once
    labels = data.scan_dataset(data_dir)
    assert labels["path"].tolist() == ["COVID/x0.png", "COVID/x1.png", "NORMAL/x2.png", "NORMAL/x3.png"]
    paths = data.resolve_image_paths(labels, data_dir)
    assert [float(images.read_luminance(p).mean()) for p in paths] == [0.0, 50.0, 100.0, 150.0]
    # the escape check applies to what a labels file names, not to where a link leads
    labels_file = pd.DataFrame({"path": ["COVID/x0.png", "COVID/x1.png", "NORMAL/x2.png", "NORMAL/x3.png"],
                                "label": ["COVID", "COVID", "NORMAL", "NORMAL"]})
    labels_file.to_csv(tmp_path / "labels.csv", index=False)
    assert len(data.read_labels_file(tmp_path / "labels.csv", data_dir)) == 4
    named_outside = labels.assign(path=["../cache/objects/00/blob0", *labels["path"][1:]])
    with pytest.raises(data.DatasetError, match="outside the data folder"):
        data.resolve_image_paths(named_outside, data_dir)


# ---------------------------------------------------------------- DICOM


def dicom(path, pixels, *, photometric="MONOCHROME2", bits=12, slope=None, intercept=None, window=None,
          frames=1, samples=1, syntax=ExplicitVRLittleEndian, patient="P1", extension=True, **tags):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.Modality, ds.Manufacturer, ds.ViewPosition = patient, "DX", "Acme", "PA"
    for keyword, value in tags.items():  # InstitutionName, ManufacturerModelName, ...
        setattr(ds, keyword, value)
    pixels = np.asarray(pixels, dtype=np.uint16)
    ds.Rows, ds.Columns = pixels.shape[:2] if samples > 1 else pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = samples, photometric
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.tobytes()
    if syntax == RLELossless:
        ds.compress(RLELossless)
    elif syntax == JPEGBaseline8Bit:  # claims JPEG, holds no valid JPEG: no decoder can read it
        from pydicom.encaps import encapsulate

        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = encapsulate([b"\xff\xd8not a jpeg\xff\xd9"])
        ds["PixelData"].VR = "OB"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


RAMP = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (8, 1))  # 8 x 64, 0..4032


def test_dicom_modality_lut_voi_window_and_monochrome1(tmp_path):
    plain = images.read_luminance(dicom(tmp_path / "plain.dcm", RAMP))
    assert plain.dtype == np.float32 and plain.min() == 0 and plain.max() == 255
    np.testing.assert_allclose(plain[0], RAMP[0].astype(float) * 255 / 4032, rtol=1e-5, atol=1e-4)
    # rescale then a window of 1000 +- 500 (in rescaled units): below it black, above it white
    windowed = images.read_luminance(dicom(tmp_path / "win.dcm", RAMP, slope=2.0, intercept=-1000.0,
                                           window=(1000.0, 1000.0)))
    hu = RAMP[0].astype(float) * 2.0 - 1000.0
    assert (windowed[0][hu <= 500] == 0).all() and (windowed[0][hu >= 1500] == 255).all()
    inside = (hu > 520) & (hu < 1480)
    assert np.all(np.diff(windowed[0][inside]) > 0)
    # MONOCHROME1: low values are bright; inverted, bone stays bright
    inverted = images.read_luminance(dicom(tmp_path / "m1.dcm", RAMP, photometric="MONOCHROME1"))
    np.testing.assert_allclose(inverted, 255 - plain, atol=1e-4)


def test_dicom_without_an_ending_rle_compressed_and_refusals(tmp_path):
    bare = dicom(tmp_path / "COVID" / "0001", RAMP, patient="A")  # DICOM preamble, no file ending
    rle = dicom(tmp_path / "NORMAL" / "x.dcm", RAMP, syntax=RLELossless, patient="B")
    assert data.is_dicom(bare) and data.is_dicom(rle)
    np.testing.assert_array_equal(images.read_luminance(rle), images.read_luminance(bare))
    labels = data.scan_dataset(tmp_path)
    assert labels["path"].tolist() == ["COVID/0001", "NORMAL/x.dcm"]
    # nothing else names the patients: the headers do
    assert data.with_dicom_patients(labels, tmp_path)["patient"].tolist() == ["A", "B"]
    refused = {
        "multi": (dict(pixels=np.stack([RAMP, RAMP]), frames=2), "multi-frame DICOM (2 frames)"),
        "colour": (dict(pixels=np.repeat(RAMP[..., None], 3, axis=-1), photometric="RGB", samples=3),
                   "colour DICOM (RGB, 3 samples per pixel)"),
        "jpeg": (dict(pixels=RAMP, syntax=JPEGBaseline8Bit), "pixel data cannot be decoded (transfer syntax JPEG"),
    }
    for name, (kwargs, reason) in refused.items():
        kwargs = dict(kwargs)
        path = dicom(tmp_path / "bad" / f"{name}.dcm", kwargs.pop("pixels"), **kwargs)
        with pytest.raises(images.ImageReadError) as info:
            images.read_luminance(path)
        assert reason in info.value.reason, (name, info.value.reason)
    (tmp_path / "bad" / "fake.dcm").write_bytes(b"not dicom at all")
    with pytest.raises(images.ImageReadError, match="without the DICOM preamble"):
        images.read_luminance(tmp_path / "bad" / "fake.dcm")
    broken = bytearray(bare.read_bytes())
    (tmp_path / "bad" / "cut.dcm").write_bytes(bytes(broken[:200]))  # preamble, then a cut header
    with pytest.raises(images.ImageReadError, match="not a readable DICOM file|without pixel data"):
        images.read_luminance(tmp_path / "bad" / "cut.dcm")
    # a PNG named .dcm (the masked copy of a DICOM file) is read as the PNG it is
    png(tmp_path / "bad" / "masked.dcm", value=77)
    assert float(images.read_luminance(tmp_path / "bad" / "masked.dcm").mean()) == 77.0


def test_the_audit_reports_dicom_tags_per_class(tmp_path):
    from cxrcluster import audit

    dicom(tmp_path / "COVID" / "a.dcm", RAMP, photometric="MONOCHROME1", patient="A")
    dicom(tmp_path / "COVID" / "b.dcm", RAMP, photometric="MONOCHROME1", patient="B")
    png(tmp_path / "NORMAL" / "c.png")
    png(tmp_path / "NORMAL" / "d.png", value=30)
    labels = data.scan_dataset(tmp_path)
    meta = audit.image_metadata(labels, tmp_path, decode=True)
    covid = meta[meta["label"] == "COVID"].iloc[0]
    assert (covid["format"], covid["mode"], covid["bit_depth"], covid["width"], covid["height"]) == (
        "DICOM", "MONOCHROME1", 12, 64, 8)
    assert (covid["manufacturer"], covid["view_position"], covid["error"]) == ("Acme", "PA", "")
    summary = audit.audit_summary(meta).set_index("label")
    assert summary.loc["COVID", "manufacturers"] == "Acme: 2" and summary.loc["NORMAL", "manufacturers"] == "(none): 2"
    assert summary.loc["COVID", "view_positions"] == "PA: 2"
    duplicates = audit.find_duplicates(labels, tmp_path)  # DICOM pixels hashed like any image
    assert {"a.dcm", "b.dcm"} <= set(duplicates["image_a"]) | set(duplicates["image_b"])


# ---------------------------------------------------------------- the source of each image


def four_images(root):
    """Two COVID and two NORMAL PNGs in class folders; their paths in order."""
    return [png(root / rel).relative_to(root).as_posix()
            for rel in ("COVID/a.png", "COVID/b.png", "NORMAL/c.png", "NORMAL/d.png")]


@pytest.mark.parametrize("column", ["source", "Site", "HOSPITAL", "institution", "center", "Centre", "dataset"])
def test_a_source_column_of_a_labels_file_is_found_by_name(tmp_path, column):
    paths = four_images(tmp_path / "data")
    pd.DataFrame({"path": paths, "label": ["COVID", "COVID", "NORMAL", "NORMAL"], "patient": ["p1", "p1", "p2", "p3"],
                  column: ["north", "north", "south", "south"]}).to_csv(tmp_path / "labels.csv", index=False)
    labels, origin = data.read_dataset(tmp_path / "data", tmp_path / "labels.csv")
    assert list(labels.columns) == [*data.LABEL_COLUMNS, "patient", "source"]
    assert labels["source"].tolist() == ["north", "north", "south", "south"]
    assert origin == f"labels file column {column!r}"


def test_source_column_names_an_unusual_column_of_a_labels_file_or_of_metadata_csv(tmp_path):
    root = tmp_path / "data"
    paths = four_images(root)
    frame = pd.DataFrame({"path": paths, "label": ["COVID", "COVID", "NORMAL", "NORMAL"],
                          "acquired_at": ["007", "007", "012", "012"]})
    frame.to_csv(tmp_path / "labels.csv", index=False)
    assert "source" not in data.read_dataset(root, tmp_path / "labels.csv").labels  # not a source's name
    labels, origin = data.read_dataset(root, tmp_path / "labels.csv", source_column="acquired_at")
    assert labels["source"].tolist() == ["007", "007", "012", "012"]  # text, never numbers
    assert origin == "labels file column 'acquired_at'"
    with pytest.raises(data.DatasetError, match="no column 'scanner'"):
        data.read_dataset(root, tmp_path / "labels.csv", source_column="scanner")
    # class folders: the column is metadata.csv's
    with pytest.raises(data.DatasetError, match="no labels file and no metadata.csv"):
        data.read_dataset(root, source_column="acquired_at")
    frame.rename(columns={"path": "image"}).to_csv(root / "metadata.csv", index=False)
    labels, origin = data.read_dataset(root, source_column="acquired_at")
    assert labels["source"].tolist() == ["007", "007", "012", "012"] and origin == "metadata.csv column 'acquired_at'"


@pytest.mark.parametrize("metadata", [
    "image,label,patient,source\nCOVID/a.png,COVID,p1,hannover\nCOVID/b.png,COVID,p1,hannover\n"
    "NORMAL/c.png,NORMAL,p2,guangzhou\nNORMAL/d.png,NORMAL,p3,guangzhou\n",
    # file names in another order, backslashes, rows of other images
    "File,Hospital\nd.png,guangzhou\nc.png,guangzhou\nb.png,hannover\na.png,hannover\nzz.png,elsewhere\n",
    "path,site\nCOVID\\a.png,hannover\nCOVID\\b.png,hannover\nNORMAL\\c.png,guangzhou\nNORMAL\\d.png,guangzhou\n",
])
def test_the_source_of_a_metadata_csv_beside_the_class_folders(tmp_path, metadata):
    four_images(tmp_path)
    (tmp_path / "metadata.csv").write_text(metadata)
    labels, origin = data.read_dataset(tmp_path)
    assert labels["source"].tolist() == ["hannover", "hannover", "guangzhou", "guangzhou"]
    assert origin.startswith("metadata.csv column ")
    description = data.describe_dataset(labels, tmp_path, origin)
    assert description["source"] == {"origin": origin,
                                     "counts": {"guangzhou": {"NORMAL": 2}, "hannover": {"COVID": 2}}}


def test_without_a_source_there_is_no_source_column(tmp_path):
    four_images(tmp_path)
    labels, origin = data.read_dataset(tmp_path)
    assert list(labels.columns) == data.LABEL_COLUMNS and origin is None
    (tmp_path / "metadata.csv").write_text("image,patient\nCOVID/a.png,p1\n")  # patients only: no source
    labels, origin = data.read_dataset(tmp_path)
    assert list(labels.columns) == data.LABEL_COLUMNS and origin is None
    assert data.describe_dataset(labels, tmp_path, origin)["source"] == {"origin": None, "counts": {}}


@pytest.mark.parametrize("where, rows, message", [
    ("labels", [("a", "north"), ("b", ""), ("c", "south"), ("d", " ")],
     "labels.csv', column 'source': empty source on line(s) 3, 5"),
    ("labels", [("a", "north"), ("b", "north"), ("c", "south"), ("d", "west")],
     "a source must hold at least two images; 'south' holds one (line 4), 'west' holds one (line 5)"),
    ("metadata", [("a", "north"), ("b", "north"), ("c", ""), ("d", "north")],
     "metadata.csv', column 'source': empty source on line(s) 4"),
    ("metadata", [("x", "north"), ("a", "north"), ("b", "south"), ("c", "north"), ("d", "north")],
     "'south' holds one (line 4)"),
    ("metadata", [("a", "north"), ("b", "north"), ("c", "south")], "no source for 1 of 4 images (e.g. d.png)"),
])
def test_empty_or_single_image_sources_are_refused_by_line(tmp_path, where, rows, message):
    root = tmp_path / "data"
    four_images(root)
    frame = pd.DataFrame([(f"{r}.png", s) for r, s in rows], columns=["image_name", "source"])
    if where == "labels":
        frame.insert(1, "label", ["COVID", "COVID", "NORMAL", "NORMAL"])
        frame["image_name"] = ["COVID/a.png", "COVID/b.png", "NORMAL/c.png", "NORMAL/d.png"]
        frame.to_csv(tmp_path / "labels.csv", index=False)
    else:
        frame.to_csv(root / "metadata.csv", index=False)
    with pytest.raises(data.DatasetError) as info:
        data.read_dataset(root, tmp_path / "labels.csv" if where == "labels" else None)
    assert message in str(info.value), str(info.value)


@pytest.mark.parametrize("tags, expected, origin", [
    ([{"InstitutionName": "St Mary"}, {"InstitutionName": "St Mary"}, {"InstitutionName": "Royal"},
      {"InstitutionName": "Royal"}], ["St Mary", "St Mary", "Royal", "Royal"], "DICOM InstitutionName"),
    # one image without its institution: the scanner stands for the site
    ([{"InstitutionName": "St Mary", "ManufacturerModelName": "DR-1"}, {"ManufacturerModelName": "DR-1"},
      {"ManufacturerModelName": "DR-9"}, {"InstitutionName": "Royal", "ManufacturerModelName": "DR-9"}],
     ["Acme DR-1", "Acme DR-1", "Acme DR-9", "Acme DR-9"], "DICOM Manufacturer + ManufacturerModelName"),
    # neither for every image: no source
    ([{"InstitutionName": "St Mary"}, {}, {"ManufacturerModelName": "DR-9"}, {}], None, None),
])
def test_the_source_of_dicom_images_from_their_headers(tmp_path, tags, expected, origin):
    for rel, extra, patient in zip(["COVID/a.dcm", "COVID/b.dcm", "NORMAL/c.dcm", "NORMAL/d.dcm"], tags, "ABCD",
                                   strict=True):
        dicom(tmp_path / rel, RAMP, patient=patient, **extra)
    labels, found = data.read_dataset(tmp_path)
    assert found == origin and labels["patient"].tolist() == ["A", "B", "C", "D"]
    if expected is None:
        assert "source" not in labels
    else:
        assert list(labels.columns) == [*data.LABEL_COLUMNS, "patient", "source"]
        assert labels["source"].tolist() == expected
    # a source column named by the user is never replaced by the headers
    with pytest.raises(data.DatasetError, match="no labels file and no metadata.csv"):
        data.read_dataset(tmp_path, source_column="site")


def test_a_dicom_source_of_one_image_is_refused_by_path(tmp_path):
    for rel, site in [("COVID/a.dcm", "St Mary"), ("COVID/b.dcm", "St Mary"), ("NORMAL/c.dcm", "Royal"),
                      ("NORMAL/d.dcm", "St Mary")]:
        dicom(tmp_path / rel, RAMP, InstitutionName=site)
    with pytest.raises(data.DatasetError, match=r"DICOM InstitutionName: .*'Royal' holds one \(image NORMAL/c.dcm\)"):
        data.read_dataset(tmp_path)


@needs_sample
def test_the_real_sample_records_its_two_hospitals():
    labels, origin = data.read_dataset(SAMPLE_DIR)
    assert origin == "metadata.csv column 'source'" and list(labels.columns) == [*data.LABEL_COLUMNS, "source"]
    by_class = labels.groupby("label")["source"].unique().map(list).to_dict()
    assert by_class == {"COVID": ["hannover"], "NORMAL": ["guangzhou"], "PNEUMONIA": ["guangzhou"]}
    description = data.describe_dataset(labels, SAMPLE_DIR, origin)
    assert description["source"]["counts"] == {"guangzhou": {"NORMAL": 100, "PNEUMONIA": 100},
                                               "hannover": {"COVID": 100}}
