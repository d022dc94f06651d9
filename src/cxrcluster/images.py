"""Reading chest X-ray files as real collections hold them, and feeding a CNN.

How an image becomes a network input (the same for every file and model):

1. The file is opened with Pillow, or with pydicom when it is DICOM
   (:func:`read_dicom`); an empty, truncated or undecodable file,
   a non-image with an image extension, or an image of more than
   ``max_pixels`` pixels (a decompression bomb) raises :class:`ImageReadError`
   with a reason, before any large allocation.
2. EXIF orientation is applied.
3. The image becomes one luminance channel in 0-255 (float32):

   * 8-bit grayscale as is; 1-bit as 0/255;
   * 16- and 32-bit integer and float grayscale (X-rays are often 16-bit,
     using 10-14 of the 16 bits) linearly rescaled from the image's own
     minimum-maximum range to 0-255;
   * RGB, palette and CMYK converted to RGB, then to luminance
     (ITU-R 601-2: 0.299 R + 0.587 G + 0.114 B);
   * transparency (RGBA, LA, palette with transparency) composited on black,
     the background of a radiograph.

4. The whole image is resized to the model's square input with bilinear
   interpolation (antialiased when shrinking); the aspect ratio is not kept,
   as in the original study and in Keras' own image loaders.
5. The channel is repeated three times, because ImageNet networks take RGB.

The model's own ``preprocess_input`` is applied afterwards, by
:mod:`cxrcluster.features`, never here.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from cxrcluster.data import is_dicom

#: Default ceiling on width x height; the largest real radiographs are about
#: 4,300 x 4,300 (18 megapixels).
DEFAULT_MAX_PIXELS = 64_000_000

# Never let Pillow paper over a truncated file with grey pixels.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageReadError(Exception):
    """A file cannot be used as an image; ``reason`` says why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def read_luminance(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as one float32 luminance channel in 0-255.

    Parameters
    ----------
    path : path-like
        PNG, JPEG, BMP, TIFF or DICOM file (:func:`read_dicom`).
    max_pixels : int
        Refuse images with more pixels than this (decompression bombs).

    Returns
    -------
    numpy.ndarray
        2-D float32 array, values in [0, 255], EXIF orientation applied.

    Raises
    ------
    ImageReadError
        With a short reason: ``empty file``, ``not a recognised image``,
        ``truncated or corrupt``, ``too large``, ...
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageReadError(path, "empty file (0 bytes)")
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    if is_dicom(path):
        return read_dicom(path, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageReadError(path, f"too large: {w}x{h} = {w * h:,} pixels > {max_pixels:,} "
                                               "(possible decompression bomb)")
                im.load()
                im = ImageOps.exif_transpose(im)
                return _to_luminance(im)
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        if path.suffix.lower() in (".dcm", ".dicom"):
            raise ImageReadError(path, "named DICOM but without the DICOM preamble ('DICM' at byte 128), and "
                                       "not another image format") from None
        raise ImageReadError(path, "not a recognised image (undecodable or not an image file)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(path, f"too large: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageReadError(path, f"truncated or corrupt: {exc}") from None


def read_dicom(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read a DICOM radiograph as one float32 luminance channel in 0-255, bone bright.

    With pydicom: the modality LUT (rescale slope and intercept), then the
    VOI LUT or the window centre and width when the file has them, then the
    result's own minimum-maximum range scaled to 0-255. ``MONOCHROME1``
    (low values bright) is inverted so that bone is bright as in
    ``MONOCHROME2``. Compressed transfer syntaxes are decoded by pydicom and
    the decoder plugins pinned in requirements.txt: RLE and deflate by pydicom
    itself, JPEG-LS by pyjpegls, JPEG (baseline, extended and lossless) and
    JPEG 2000 by pylibjpeg with pylibjpeg-libjpeg and pylibjpeg-openjpeg.

    Raises
    ------
    ImageReadError
        A file pydicom cannot parse, without pixel data, multi-frame, colour,
        too large, or whose pixel data cannot be decoded (the transfer syntax
        named).
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds for a bad file
        raise ImageReadError(path, f"not a readable DICOM file: {type(exc).__name__}: {exc}") from None
    if "PixelData" not in ds:
        raise ImageReadError(path, "DICOM file without pixel data")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageReadError(path, f"multi-frame DICOM ({frames} frames): one radiograph per file is expected")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageReadError(path, f"colour DICOM ({photometric or 'no photometric interpretation'}, {samples} "
                                   "samples per pixel): a radiograph is monochrome")
    rows, columns = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if rows * columns > max_pixels:
        raise ImageReadError(path, f"too large: {columns}x{rows} = {rows * columns:,} pixels > {max_pixels:,}")
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - a missing decoder, or corrupt pixel data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        raise ImageReadError(path, f"pixel data cannot be decoded (transfer syntax {name}): "
                                   f"{' '.join(str(exc).split())[:300]}") from None
    values = apply_voi_lut(apply_modality_lut(pixels, ds), ds).astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    scaled = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
    if photometric == "MONOCHROME1":
        scaled = 255.0 - scaled
    return scaled.astype(np.float32)


def _to_luminance(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return scaled.astype(np.float32)
    if mode == "1":
        im = im.convert("L")
    elif mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
    elif mode in ("PA",):
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        im = Image.alpha_composite(black, rgba).convert("RGB")
    if im.mode not in ("L", "RGB"):
        im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV
    if im.mode == "RGB":
        im = im.convert("L")
    return np.asarray(im, dtype=np.float32)


def to_model_input(luminance: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a luminance image to the model's input and repeat it to RGB.

    Parameters
    ----------
    luminance : numpy.ndarray
        2-D float array in 0-255, from :func:`read_luminance`.
    size : int or (height, width)
        The network's input size.

    Returns
    -------
    numpy.ndarray
        ``(height, width, 3)`` float32 in 0-255.
    """
    h, w = (size, size) if isinstance(size, int) else size
    resized = Image.fromarray(np.asarray(luminance, dtype=np.float32), mode="F").resize(
        (w, h), Image.Resampling.BILINEAR)
    arr = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 255.0)
    return np.repeat(arr[:, :, None], 3, axis=2)


def load_image(path: str | os.PathLike, size: int | tuple[int, int],
               max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read ``path`` and return the network input described in the module docstring.

    Parameters
    ----------
    path : path-like
        The image file.
    size : int or (height, width)
        The network's input size.
    max_pixels : int
        See :func:`read_luminance`.

    Returns
    -------
    numpy.ndarray
        ``(height, width, 3)`` float32 in 0-255.
    """
    return to_model_input(read_luminance(path, max_pixels=max_pixels), size)
