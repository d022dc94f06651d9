import pandas as pd
import pytest

from cxrcluster import data


def touch(path, content=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


@pytest.mark.parametrize("folder, expected", [
    ("COVID", "COVID"), ("covid", "COVID"), ("COVID19", "COVID"), ("COVID-19", "COVID"), ("Covid_19", "COVID"),
    ("NORMAL", "NORMAL"), ("Normal", "NORMAL"), ("PNEUMONIA", "PNEUMONIA"), ("Viral Pneumonia", "PNEUMONIA"),
    ("Tuberculosis", "TUBERCULOSIS"),
])
def test_canonical_class(folder, expected):
    assert data.canonical_class(folder) == expected


def test_scan_flat_layout_sorted_with_aliases(tmp_path):
    touch(tmp_path / "covid" / "b.png")
    touch(tmp_path / "COVID19" / "a.PNG")
    touch(tmp_path / "NORMAL" / "n1.jpeg")
    touch(tmp_path / "NORMAL" / "notes.txt")
    touch(tmp_path / "NORMAL" / ".hidden.png")
    touch(tmp_path / "README.md")
    df = data.scan_dataset(tmp_path)
    assert list(df.columns) == ["image_name", "label", "path"]
    assert df.to_dict("list") == {
        "image_name": ["a.PNG", "b.png", "n1.jpeg"],
        "label": ["COVID", "COVID", "NORMAL"],
        "path": ["COVID19/a.PNG", "covid/b.png", "NORMAL/n1.jpeg"],
    }


def test_scan_split_layout_uses_paths_when_names_collide(tmp_path):
    touch(tmp_path / "train" / "PNEUMONIA" / "x.jpg")
    touch(tmp_path / "test" / "PNEUMONIA" / "x.jpg")
    touch(tmp_path / "test" / "NORMAL" / "y.jpg")
    df = data.scan_dataset(tmp_path)
    assert df["image_name"].is_unique
    assert df["image_name"].tolist() == ["test/NORMAL/y.jpg", "test/PNEUMONIA/x.jpg", "train/PNEUMONIA/x.jpg"]
    assert df["label"].tolist() == ["NORMAL", "PNEUMONIA", "PNEUMONIA"]


@pytest.mark.parametrize("layout, message", [
    (["loose.png"], "not inside a class folder"),
    (["a/b/c/deep.png"], "not inside a class folder"),
    (["NORMAL/readme.txt"], "no images"),
])
def test_scan_refuses_bad_layouts(tmp_path, layout, message):
    for rel in layout:
        touch(tmp_path / rel)
    with pytest.raises(data.DatasetError, match=message):
        data.scan_dataset(tmp_path)


def test_scan_missing_folder(tmp_path):
    with pytest.raises(data.DatasetError, match="does not exist"):
        data.scan_dataset(tmp_path / "nope")


def test_read_labels_two_column_file_and_checks(tmp_path):
    p = tmp_path / "labels.csv"
    p.write_text("image_name,label\na.png,COVID\nb.png,NORMAL\n")
    df = data.read_labels(p)
    assert df["path"].tolist() == ["COVID/a.png", "NORMAL/b.png"]
    p.write_text("image_name,label\na.png,COVID\na.png,NORMAL\n")
    with pytest.raises(data.DatasetError, match="duplicated"):
        data.read_labels(p)
    p.write_text("name,label\na.png,COVID\n")
    with pytest.raises(data.DatasetError, match="missing column"):
        data.read_labels(p)


def test_resolve_image_paths_refuses_escaping_and_missing(tmp_path):
    root = tmp_path / "data"
    touch(root / "COVID" / "a.png")
    touch(tmp_path / "secret.png")
    ok = pd.DataFrame({"image_name": ["a.png"], "label": ["COVID"], "path": ["COVID/a.png"]})
    assert data.resolve_image_paths(ok, root) == [(root / "COVID" / "a.png").resolve()]
    bad = pd.DataFrame({"image_name": ["up", "abs", "gone"], "label": ["COVID"] * 3,
                        "path": ["../secret.png", str(tmp_path / "secret.png"), "COVID/gone.png"]})
    with pytest.raises(data.DatasetError) as err:
        data.resolve_image_paths(bad, root)
    msg = str(err.value)
    assert "2 path(s) outside the data folder" in msg and "up (../secret.png)" in msg and "abs (" in msg
    assert "1 file(s) missing: gone (COVID/gone.png)" in msg


def test_labels_fingerprint_changes_with_labels():
    a = data.labels_fingerprint(["a", "b"], ["COVID", "NORMAL"])
    assert a == data.labels_fingerprint(["a", "b"], ["COVID", "NORMAL"])
    assert a != data.labels_fingerprint(["a", "b"], ["NORMAL", "COVID"])


def test_original_labels_with_and_without_a_source_and_the_description_of_its_counts(tmp_path):
    p = tmp_path / "original_labels.csv"
    p.write_text("image_name,label,path,patient,source\na.png,COVID,COVID/a.png,1,007\nb.png,COVID,COVID/b.png,2,007\n"
                 "c.png,NORMAL,NORMAL/c.png,3,12\nd.png,NORMAL,NORMAL/d.png,4,12\ne.png,PNEUMONIA,PNEUMONIA/e.png,5,12\n")
    labels = data.read_labels(p)
    assert labels["source"].tolist() == ["007", "007", "12", "12", "12"]  # text: "007" stays "007"
    assert data.image_sources(labels).tolist() == ["007", "007", "12", "12", "12"]
    description = data.describe_dataset(labels, tmp_path, "labels file column 'site'")
    assert description["source"] == {"origin": "labels file column 'site'",
                                     "counts": {"007": {"COVID": 2}, "12": {"NORMAL": 2, "PNEUMONIA": 1}}}
    data.write_dataset_description(description, tmp_path / "dataset.json")
    assert data.read_dataset_description(tmp_path / "dataset.json") == description
    # without a source: no column, no origin, no counts
    p.write_text("image_name,label\na.png,COVID\nb.png,NORMAL\n")
    labels = data.read_labels(p)
    assert "source" not in labels and data.image_sources(labels) is None
    assert data.describe_dataset(labels, tmp_path, None)["source"] == {"origin": None, "counts": {}}
    # a description written before sources were recorded reads as one without a source
    (tmp_path / "old.json").write_text('{"data_dir": "d", "synthetic": false, "n_images": 2, "classes": {"A": 2}}')
    assert data.read_dataset_description(tmp_path / "old.json")["source"] == {"origin": None, "counts": {}}
    p.write_text("image_name,label,source\na.png,COVID,x\nb.png,NORMAL,\n")
    with pytest.raises(data.DatasetError, match=r"empty source in row\(s\) \[3\]"):
        data.read_labels(p)
