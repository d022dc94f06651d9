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
