"""Feature extraction: every image through a pretrained backbone, with provenance.

``features/<Model>.npy`` holds one float32 row per row of
``original_labels.csv``, in that order. An image that cannot be read keeps its
row, filled with NaN, and is named with its reason in the JSON sidecar
``features/<Model>.json``; clustering drops those rows and says how many. The
sidecar also records the model, weights (and their SHA-256), input size,
preprocessing, the engine and precision of the forward pass
(:mod:`cxrcluster.engines`) and why they were chosen (``engine_choice``,
:mod:`cxrcluster.extraction_path`), library versions, image count and time taken.
With a ``cache_dir``, decoded images are kept for the next model
(:mod:`cxrcluster.decoded`).

The package is in four modules, and every name below is re-exported here, so
``from cxrcluster import features; features.extract_features(...)`` works:

- :mod:`~cxrcluster.features.extraction`: :func:`extract_features` (planning,
  a run in this process or on a Dask cluster, and the provenance record),
  :func:`extract_dataset` and :data:`FORMAT_VERSION`.
- :mod:`~cxrcluster.features.batches`: :func:`iter_batches` (decoding ahead of
  the model), the forward pass of each batch, the rows gathered in order and
  :class:`BadInputError`.
- :mod:`~cxrcluster.features.on_cluster`: :func:`extract_shard` (the Dask
  task) and :data:`SHARD_BATCHES`.
- :mod:`~cxrcluster.features.store`: :func:`feature_paths`,
  :func:`save_features`, :func:`load_features`, :func:`read_provenance`, :func:`readable_rows` and
  :func:`drop_unreadable`.
"""

from cxrcluster.features.batches import BadInputError, iter_batches
from cxrcluster.features.extraction import FORMAT_VERSION, extract_dataset, extract_features
from cxrcluster.features.on_cluster import SHARD_BATCHES, extract_shard
from cxrcluster.features.store import (
    drop_unreadable,
    feature_paths,
    load_features,
    read_provenance,
    readable_rows,
    save_features,
)

__all__ = [
    "FORMAT_VERSION",
    "SHARD_BATCHES",
    "BadInputError",
    "drop_unreadable",
    "extract_dataset",
    "extract_features",
    "extract_shard",
    "feature_paths",
    "iter_batches",
    "load_features",
    "read_provenance",
    "readable_rows",
    "save_features",
]
