"""Image input as real collections hold it: odd modes decode the same way, bad files are reported."""

import numpy as np
import pytest
from PIL import Image

from cxrcluster import images


def gradient(h=40, w=60):
    return np.tile(np.linspace(0, 255, w), (h, 1)).astype(np.uint8)


@pytest.fixture
def zoo(tmp_path):
    """Good files in many formats, all holding the same horizontal gradient, and bad files."""
    g = gradient()
    files = {}

    def save(name, im, **kw):
        im.save(tmp_path / name, **kw)
        files[name] = tmp_path / name

    save("gray8.png", Image.fromarray(g, "L"))
    save("gray16.png", Image.fromarray(g.astype(np.uint16) * 257))  # full 16-bit range
    save("gray12in16.png", Image.fromarray(g.astype(np.uint16) * 16))  # 12-bit values in 16-bit file
    save("rgb.jpg", Image.fromarray(np.dstack([g] * 3), "RGB"), quality=100)
    save("rgba.png", Image.fromarray(np.dstack([g] * 3 + [np.full_like(g, 255)]), "RGBA"))
    save("palette.png", Image.fromarray(g, "L").convert("P"))
    save("cmyk.jpg", Image.fromarray(np.dstack([g] * 3), "RGB").convert("CMYK"), quality=100)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    save("rotated.jpg", Image.fromarray(np.ascontiguousarray(np.rot90(g, 1)), "L"), exif=exif, quality=100)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("this is not an image\n")
    whole = (tmp_path / "gray8.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(whole[: len(whole) // 2])
    return tmp_path, files


@pytest.mark.parametrize("name, atol", [
    ("gray8.png", 0), ("gray16.png", 0.01), ("gray12in16.png", 0.01), ("rgb.jpg", 2), ("rgba.png", 1),
    ("palette.png", 1), ("cmyk.jpg", 3), ("rotated.jpg", 2),
])
def test_good_files_decode_to_the_same_luminance(zoo, name, atol):
    _, files = zoo
    lum = images.read_luminance(files[name])
    assert lum.dtype == np.float32 and lum.shape == (40, 60)
    np.testing.assert_allclose(lum, gradient().astype(np.float32), atol=atol)


def test_transparency_is_composited_on_black(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:, :2, 3] = 255  # left half opaque, right half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    lum = images.read_luminance(tmp_path / "a.png")
    assert lum[:, :2].min() == 200 and lum[:, 2:].max() == 0


@pytest.mark.parametrize("name, reason", [
    ("empty.png", "empty file"),
    ("text.png", "not a recognised image"),
    ("truncated.png", "truncated or corrupt"),
    ("missing.png", "file not found"),
])
def test_bad_files_raise_with_a_reason(zoo, name, reason):
    root, _ = zoo
    with pytest.raises(images.ImageReadError) as err:
        images.read_luminance(root / name)
    assert reason in err.value.reason


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    Image.new("L", (3000, 3000)).save(tmp_path / "big.png")
    with pytest.raises(images.ImageReadError, match="too large"):
        images.read_luminance(tmp_path / "big.png", max_pixels=1_000_000)
    assert images.read_luminance(tmp_path / "big.png").shape == (3000, 3000)


def test_model_input_shape_range_and_channels(zoo):
    _, files = zoo
    x = images.load_image(files["gray16.png"], 32)
    assert x.shape == (32, 32, 3) and x.dtype == np.float32
    assert 0 <= x.min() and x.max() <= 255 and x.max() > 200
    np.testing.assert_array_equal(x[..., 0], x[..., 2])
    assert images.load_image(files["gray8.png"], (20, 30)).shape == (20, 30, 3)
    # whole-image resize: left edge stays dark, right edge bright
    assert x[:, 0, 0].mean() < 20 and x[:, -1, 0].mean() > 235


def test_constant_16bit_image_is_black_not_nan(tmp_path):
    Image.fromarray(np.full((5, 5), 1000, np.uint16)).save(tmp_path / "flat.png")
    lum = images.read_luminance(tmp_path / "flat.png")
    assert np.isfinite(lum).all() and lum.max() == 0
