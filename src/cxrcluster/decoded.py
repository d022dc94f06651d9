"""Decode once: every image decoded and resized once per input size, kept for the next model.

With several backbones (``MODELS=all``) each image would otherwise be read,
decoded and resized once per model. :class:`DecodedImages` keeps the network
inputs of one dataset at one input size in a cache folder (the pipeline:
``OUT/cache/decoded``):

* ``<size>px-<key>.npy``: ``(n, size, size)`` float32, the luminance that
  :func:`cxrcluster.images.load_image` repeats to three channels, so a model
  reading it gets byte for byte what decoding gives (4 bytes per pixel:
  196 KiB per image at 224 px, 1.0 GiB for 5,228 images);
* ``<size>px-<key>.json``: the reason each unreadable image could not be read
  (its rows are zeros, as when decoding), the key's inputs and the format.

The key is a SHA-256 of the image paths, their sizes and modification times,
the input size, the pixel limit and the decoding code's versions, so any
change to the data gives another key; a new entry removes the older entries
of the same input size. Both files are written under temporary names and
renamed when the whole dataset is decoded (the ``.json`` last, and it is what
marks an entry complete): a crash leaves no entry, and two runs writing at
once leave the same one. Where the disk has too little room the cache is
skipped, with a message, and decoding happens as before.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cxrcluster import atomic, images

#: Version of the cache's layout and of what it holds; part of the key.
FORMAT_VERSION = 1

#: Free space left on the disk after the cache is written, or the cache is skipped.
HEADROOM_BYTES = 2 * 2**30


def _decoder_versions() -> dict:
    import PIL

    versions = {"pillow": PIL.__version__, "numpy": np.__version__}
    try:
        import pydicom

        versions["pydicom"] = pydicom.__version__
    except ImportError:
        pass
    return versions


def stamp_files(digest, paths: Sequence[str | os.PathLike]) -> None:
    """Feed each file's absolute path, size and modification time to ``digest`` (any change to the data changes it)."""
    for p in paths:
        try:
            st = os.stat(p)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError as exc:
            stamp = f"unreadable:{type(exc).__name__}"
        digest.update(f"{os.path.abspath(p)}\0{stamp}\n".encode())


class DecodedImages:
    """The decoded inputs of one list of images at one input size, in a cache folder.

    Parameters
    ----------
    root : path-like
        The cache folder (created when an entry is written).
    paths : sequence of path-like
        The images, in row order.
    size : int
        Square input size.
    max_pixels : int
        As for :func:`cxrcluster.images.load_image`.
    """

    def __init__(self, root: str | os.PathLike, paths: Sequence[str | os.PathLike], size: int,
                 max_pixels: int = images.DEFAULT_MAX_PIXELS):
        self.root, self.size, self.max_pixels = Path(root), int(size), int(max_pixels)
        self.paths = [Path(p) for p in paths]
        self.key = self._key()
        stem = f"{self.size}px-{self.key[:16]}"
        self.array_path, self.meta_path = self.root / f"{stem}.npy", self.root / f"{stem}.json"
        self._array: np.ndarray | None = None
        self._errors: list[str | None] | None = None

    def _key(self) -> str:
        digest = hashlib.sha256()
        digest.update(json.dumps({"format": FORMAT_VERSION, "size": self.size, "max_pixels": self.max_pixels,
                                  "versions": _decoder_versions()}, sort_keys=True).encode())
        stamp_files(digest, self.paths)
        return digest.hexdigest()

    @property
    def nbytes(self) -> int:
        """Size of the array on disk."""
        return len(self.paths) * self.size * self.size * 4

    def complete(self) -> bool:
        """Whether a finished entry for exactly these images is in the cache."""
        if not (self.meta_path.is_file() and self.array_path.is_file()):
            return False
        try:
            meta = json.loads(self.meta_path.read_text())
        except (OSError, ValueError):
            return False
        return meta.get("key") == self.key and meta.get("format_version") == FORMAT_VERSION

    def _load(self) -> None:
        if self._array is None:
            meta = json.loads(self.meta_path.read_text())
            self._array = np.load(self.array_path, mmap_mode="r")
            if self._array.shape != (len(self.paths), self.size, self.size):
                raise ValueError(f"{self.array_path} holds {self._array.shape}, expected "
                                 f"{(len(self.paths), self.size, self.size)}")
            self._errors = meta["errors"]

    def rows(self, start: int, stop: int) -> tuple[np.ndarray, list[str | None]]:
        """Network inputs ``(stop - start, size, size, 3)`` float32 and read errors of rows ``start:stop``."""
        self._load()
        lum = np.asarray(self._array[start:stop], dtype=np.float32)
        return np.repeat(lum[..., None], 3, axis=-1), list(self._errors[start:stop])

    def take(self, indices: Sequence[int]) -> tuple[np.ndarray, list[str | None]]:
        """Network inputs and read errors of the rows ``indices``."""
        self._load()
        idx = np.asarray(indices, dtype=np.int64)
        lum = np.asarray(self._array[idx], dtype=np.float32)
        return np.repeat(lum[..., None], 3, axis=-1), [self._errors[i] for i in idx]

    def room(self) -> tuple[bool, str]:
        """Whether the disk holds the entry with :data:`HEADROOM_BYTES` to spare, and why not."""
        self.root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.root).free
        if free < self.nbytes + HEADROOM_BYTES:
            return False, (f"the decoded-image cache needs {self.nbytes / 2**30:.1f} GiB and {self.root} has "
                           f"{free / 2**30:.1f} GiB free (keeping {HEADROOM_BYTES / 2**30:.0f} GiB spare)")
        return True, ""

    def writer(self) -> _Writer | None:
        """A writer that fills a new entry batch by batch, or None (with a message) when there is no room."""
        ok, why = self.room()
        if not ok:
            print(f"not caching decoded images: {why}", file=sys.stderr)
            return None
        return _Writer(self)


class _Writer:
    """Rows appended in order to a temporary ``.npy``; :meth:`finish` publishes the entry."""

    def __init__(self, cache: DecodedImages):
        self.cache = cache
        self._tmp_ctx = atomic.atomic_path(cache.array_path)
        self._tmp = self._tmp_ctx.__enter__()
        self._array = np.lib.format.open_memmap(self._tmp, mode="w+", dtype=np.float32,
                                                shape=(len(cache.paths), cache.size, cache.size))
        self.errors: list[str | None] = []
        self.row = 0

    def add(self, batch: np.ndarray, errors: Sequence[str | None]) -> None:
        """Append one decoded batch ``(n, size, size, 3)`` and its read errors."""
        n = len(errors)
        if not np.array_equal(batch[..., 0], batch[..., 2]):
            raise ValueError("decoded images are expected to repeat one luminance channel")
        self._array[self.row:self.row + n] = batch[..., 0]
        self.errors += list(errors)
        self.row += n

    def finish(self) -> None:
        """Publish the entry if every row was written, and remove older entries of this input size."""
        cache = self.cache
        if self.row != len(cache.paths):
            self.abandon()
            return
        self._array.flush()
        del self._array
        self._tmp_ctx.__exit__(None, None, None)  # renames the array into place
        for old in cache.root.glob(f"{cache.size}px-*.*"):
            if old not in (cache.array_path, cache.meta_path) and not old.name.startswith("."):
                old.unlink(missing_ok=True)
        atomic.write_json({"format_version": FORMAT_VERSION, "key": cache.key, "size": cache.size,
                           "max_pixels": cache.max_pixels, "images": len(cache.paths),
                           "versions": _decoder_versions(), "errors": self.errors}, cache.meta_path)

    def abandon(self) -> None:
        """Drop the unfinished entry."""
        if hasattr(self, "_array"):
            del self._array
        self._tmp_ctx.__exit__(RuntimeError, RuntimeError("abandoned"), None)
