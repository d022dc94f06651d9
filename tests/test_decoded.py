"""Decode once: the decoded-image cache gives the same features, is reused, invalidated and never half-written."""

import os

import numpy as np
import pytest
from PIL import Image

from cxrcluster import decoded, features, images

pytestmark = pytest.mark.filterwarnings("ignore:.*RANDOM weights:UserWarning")

MODEL = "MobileNetV2-0.35"


@pytest.fixture
def dataset(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    paths = []
    for i in range(40):
        path = folder / f"{i:02d}.png"
        Image.fromarray(rng.integers(0, 255, (60 + i, 80), dtype=np.uint8)).save(path)
        paths.append(path)
    (folder / "20.png").write_bytes(b"not a png")  # one unreadable image, kept in its row
    return paths


def extract(paths, cache_dir, **kwargs):
    return features.extract_features(paths, MODEL, "none", batch_size=16, progress=False, engine="tensorflow",
                                     precision="fp32", cache_dir=cache_dir, max_bad_fraction=0.1, **kwargs)


def test_cached_images_give_byte_identical_features_and_are_not_decoded_again(dataset, tmp_path, monkeypatch):
    plain, _ = extract(dataset, None)
    cache_dir = tmp_path / "cache"
    first, provenance = extract(dataset, cache_dir)
    entries = sorted(p.name for p in (cache_dir / "decoded").iterdir())
    assert len(entries) == 2 and entries[0].startswith("224px-") and entries[0].endswith(".json")
    assert provenance["engine_choice"]["decoded_cache"].startswith(entries[1])
    assert first.tobytes() == plain.tobytes()
    assert np.isnan(first[20]).all() and provenance["bad_images"][0]["image_name"] == "20.png"

    def no_decoding(*args, **kwargs):
        raise AssertionError("an image was decoded although the cache holds it")

    monkeypatch.setattr(images, "load_image", no_decoding)
    second, again = extract(dataset, cache_dir)
    assert second.tobytes() == plain.tobytes()
    assert again["bad_images"] == provenance["bad_images"]


@pytest.mark.slow  # three extractions, each building the network
def test_changed_data_makes_a_new_entry_and_drops_the_old_one(dataset, tmp_path):
    cache_dir = tmp_path / "cache"
    extract(dataset, cache_dir)
    before = set((cache_dir / "decoded").iterdir())
    Image.fromarray(np.full((70, 70), 200, np.uint8)).save(dataset[3])
    os.utime(dataset[3], ns=(1, 10**18))  # a new modification time, whatever the clock
    changed, _ = extract(dataset, cache_dir)
    after = set((cache_dir / "decoded").iterdir())
    assert len(after) == 2 and not after & before
    assert changed.tobytes() == extract(dataset, None)[0].tobytes()
    # another input size is another entry, kept beside this one
    other = decoded.DecodedImages(cache_dir / "decoded", dataset, 96)
    assert other.key != decoded.DecodedImages(cache_dir / "decoded", dataset, 224).key


def test_a_run_that_stops_leaves_no_entry_and_no_temporary_file(dataset, tmp_path):
    cache_dir = tmp_path / "cache"
    for p in dataset[:8]:
        p.write_bytes(b"broken")  # 9 of 40 unreadable: above the limit after the first batch
    with pytest.raises(features.BadInputError):
        extract(dataset, cache_dir)
    assert list((cache_dir / "decoded").iterdir()) == []
    entry = decoded.DecodedImages(cache_dir / "decoded", dataset, 224)
    assert not entry.complete()


@pytest.mark.slow  # two extractions, each building the network
def test_no_room_on_the_disk_skips_the_cache_with_a_message(dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(decoded, "HEADROOM_BYTES", 2**60)
    out, provenance = extract(dataset, tmp_path / "cache")
    assert "not caching decoded images" in capsys.readouterr().err
    assert provenance["engine_choice"]["decoded_cache"] == "not written"
    assert out.tobytes() == extract(dataset, None)[0].tobytes()
