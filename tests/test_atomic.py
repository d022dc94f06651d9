import numpy as np
import pandas as pd
import pytest

from cxrcluster import atomic


def test_atomic_open_replaces_only_on_success(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_open(target) as fh:
            fh.write("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]  # no temp file left


def test_writers_round_trip(tmp_path):
    df = pd.DataFrame({"image_name": ["a.png", "b.png"], "label": ["COVID", "NORMAL"]})
    atomic.write_csv(df, tmp_path / "sub" / "t.csv")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "sub" / "t.csv"), df)
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    atomic.write_npy(arr, tmp_path / "a.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy", allow_pickle=False), arr)
    atomic.write_json({"b": np.int64(2), "a": np.float32(0.5)}, tmp_path / "x.json")
    assert (tmp_path / "x.json").read_text() == '{\n  "a": 0.5,\n  "b": 2\n}\n'
