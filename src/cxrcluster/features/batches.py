"""Images batch by batch: decoded ahead of the model, through the backbone, gathered in row order.

:func:`iter_batches` decodes in a thread pool, a few batches ahead;
:class:`_Extractor` runs each batch through a compiled forward pass (through
the decode cache of :mod:`cxrcluster.decoded` when there is one);
:class:`_Collected` gathers the rows and the bad images, and stops the run
with :class:`BadInputError` when too many are bad. A run in this process and
shards on a Dask cluster use the same three.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from cxrcluster import decoded, engines, images, models


class BadInputError(RuntimeError):
    """Too many images could not be read for the run to be trusted."""


def _decode(path: Path, size: int, max_pixels: int) -> tuple[np.ndarray | None, str | None]:
    try:
        return images.load_image(path, size, max_pixels=max_pixels), None
    except images.ImageReadError as exc:
        return None, exc.reason


def iter_batches(paths: Sequence[Path], size: int, batch_size: int, workers: int = 2,
                 prefetch_batches: int = 2, max_pixels: int = images.DEFAULT_MAX_PIXELS
                 ) -> Iterator[tuple[np.ndarray, list[str | None]]]:
    """Decode images in a thread pool, in order, a few batches ahead of the model.

    Parameters
    ----------
    paths : sequence of pathlib.Path
        Image files, in output order.
    size : int
        Square input size of the model.
    batch_size : int
        Images per yielded batch (the last one may be smaller).
    workers : int
        Decoding threads (Pillow releases the GIL while decoding).
    prefetch_batches : int
        Batches decoded ahead of the one being consumed.
    max_pixels : int
        See :func:`cxrcluster.images.read_luminance`.

    Yields
    ------
    batch : numpy.ndarray
        ``(n, size, size, 3)`` float32 in 0-255; unreadable images are zeros.
    errors : list of (str or None)
        Per image, the reason it could not be read, or None.
    """
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: deque[list[Future]] = deque()
        starts = iter(range(0, len(paths), batch_size))

        def submit_next() -> None:
            start = next(starts, None)
            if start is not None:
                pending.append([pool.submit(_decode, p, size, max_pixels)
                                for p in paths[start:start + batch_size]])

        for _ in range(prefetch_batches + 1):
            submit_next()
        while pending:
            results = [f.result() for f in pending.popleft()]
            submit_next()
            batch = np.zeros((len(results), size, size, 3), dtype=np.float32)
            errors: list[str | None] = []
            for i, (arr, err) in enumerate(results):
                if arr is not None:
                    batch[i] = arr
                errors.append(err)
            yield batch, errors


def _decoded_batches(paths: list[Path], size: int, batch_size: int, workers: int,
                     cache: decoded.DecodedImages | None) -> Iterator[tuple[np.ndarray, list[str | None]]]:
    """:func:`iter_batches`, through the decode cache when there is one."""
    if cache is not None and cache.complete():
        for start in range(0, len(paths), batch_size):
            yield cache.rows(start, min(start + batch_size, len(paths)))
        return
    writer = cache.writer() if cache is not None else None
    try:
        for batch, errors in iter_batches(paths, size, batch_size, workers=workers):
            if writer is not None:
                writer.add(batch, errors)
            yield batch, errors
    except BaseException:
        if writer is not None:
            writer.abandon()
        raise
    if writer is not None:
        writer.finish()


class _Extractor:
    """A backbone built once and compiled for one engine and precision, and its input size."""

    def __init__(self, model_name, weights: str, seed: int, engine: str, precision: str, batch_size: int):
        backbone = models.get_backbone(model_name)  # a name, or a checked model file (built after its SHA-256 check)
        model, self.weights_info = models.build_backbone(backbone, weights, seed=seed)
        self.size, self.batch_size = backbone.input_size, batch_size
        self.forward = engines.make_forward(model, backbone.preprocess_input(), batch_size, self.size,
                                            engine=engine, precision=precision)

    @classmethod
    def around(cls, forward: engines.Forward, weights_info: dict, size: int, batch_size: int) -> _Extractor:
        """An extractor of an already compiled forward pass."""
        self = cls.__new__(cls)
        self.forward, self.weights_info, self.size, self.batch_size = forward, weights_info, size, batch_size
        return self

    def batches(self, paths: Sequence[Path], workers: int, cache: decoded.DecodedImages | None = None
                ) -> Iterator[tuple[np.ndarray, list[str | None]]]:
        """Features and read errors of each batch of ``paths``, in order (rows of bad images are zeros' features).

        With ``cache`` (for exactly ``paths``), the decoded images are read from it when it is
        complete, and written to it while decoding otherwise.
        """
        for batch, errors in _decoded_batches(list(paths), self.size, self.batch_size, workers, cache):
            # pads the last batch to batch_size: one graph, one set of numerics
            yield self.forward(batch), errors


class _Collected:
    """The feature rows and bad images of a run, gathered batch by batch in row order.

    Stops with :class:`BadInputError` after the first batch that takes the bad
    images over ``max_bad_fraction``, in this process and on a cluster alike.
    """

    def __init__(self, paths: Sequence[Path], names: Sequence[str], dim: int, max_bad_fraction: float):
        self.paths, self.names, self.limit = paths, names, max_bad_fraction
        self.features = np.full((len(paths), dim), np.nan, dtype=np.float32)
        self.bad: list[dict] = []
        self.row = 0

    def add(self, feats: np.ndarray, errors: Sequence[str | None]) -> None:
        for i, err in enumerate(errors):
            if err is None:
                self.features[self.row + i] = feats[i]
            else:
                self.bad.append({"image_name": self.names[self.row + i], "path": str(self.paths[self.row + i]),
                                 "reason": err})
        self.row += len(errors)
        if self.bad and len(self.bad) > self.limit * len(self.paths):
            raise BadInputError(_bad_summary(self.bad, len(self.paths), self.limit, stopped_at=self.row))


def _bad_summary(bad: list[dict], total: int, limit: float, stopped_at: int | None = None) -> str:
    lines = [f"{len(bad)} of {total} images could not be read"
             + (f" (stopped after {stopped_at}: more than max_bad_fraction={limit:.0%} are bad)"
                if stopped_at is not None else "; their feature rows are NaN:")]
    lines += [f"  {b['image_name']}: {b['reason']}" for b in bad[:20]]
    if len(bad) > 20:
        lines.append(f"  ... and {len(bad) - 20} more (all listed in the sidecar JSON)")
    return "\n".join(lines)
