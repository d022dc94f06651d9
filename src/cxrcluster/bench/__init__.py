"""The benchmark harness: extraction paths side by side, input decoding, clustering as n grows.

Run ``python -m cxrcluster.bench --out reports/benchmarks`` (``make bench``). It
writes ``<out>.md`` (the report, with the machine's description) and
``<out>.csv`` (every figure, one row each, columns :data:`CSV_COLUMNS`), both
atomically (``<out>/benchmarks.md`` and ``.csv`` when ``<out>`` is a folder),
and prints its progress as it goes. ``--help`` lists the options.

The package is in eight modules, and every public name below is re-exported
here, so ``from cxrcluster import bench; bench.targets(...)`` works:

- :mod:`~cxrcluster.bench.extraction`: every extraction path of every model
  timed in interleaved rounds on the same images, and input decoding alone
  (:func:`bench_extraction`, :func:`bench_decoding`); fidelity to the fp32
  reference (:func:`fidelity`, :func:`centred_cosine`); :data:`PATHS`,
  :data:`PATH_ORDER`, :data:`REFERENCE`, :data:`PIPELINE_DEFAULT` and
  :data:`BASELINE_BATCH_SIZE`; ``MODELS=all`` extraction with and without
  the decode cache (:func:`bench_decode_cache`).
- :mod:`~cxrcluster.bench.gemm`: the machine's fp32 and int8 matrix-multiply
  throughput (:func:`bench_gemm`) and a backbone's operations per image
  (:func:`model_flops`), for the share of the machine a path reaches.
- :mod:`~cxrcluster.bench.memory`: clustering timed per algorithm and size,
  each in a child process under a time cap and an address-space cap whose peak
  resident memory is watched, then the whole suite (:func:`bench_clustering`);
  :func:`synthetic_features` and :data:`SUITE_N`.
- :mod:`~cxrcluster.bench.machine`: the machine's description (CPU, flags,
  bf16 support, thread settings, versions; :func:`describe_machine`) and
  :data:`THREAD_ENV`.
- :mod:`~cxrcluster.bench.targets`: the performance targets and how they are
  judged (:func:`targets`, :data:`COSINE_TARGET`).
- :mod:`~cxrcluster.bench.report`: ``<out>.md`` and ``<out>.csv``
  (:func:`write_report`, :data:`CSV_COLUMNS`).
- :mod:`~cxrcluster.bench.cli`: the command line (:func:`main`, run by
  ``python -m cxrcluster.bench`` through ``__main__``), the images it measures
  (:func:`default_data_dir`, :func:`select_images`) and its defaults
  (:data:`DEFAULT_MODELS`, :data:`DEFAULT_SIZES`, :data:`QUICK_SIZES`,
  :data:`SHARED_SAMPLE_DIR`).
- :mod:`~cxrcluster.bench.progress`: :func:`log`, the timestamped progress lines.
"""

from cxrcluster.bench.cli import (
    DEFAULT_MODELS,
    DEFAULT_SIZES,
    QUICK_SIZES,
    SHARED_SAMPLE_DIR,
    default_data_dir,
    main,
    select_images,
)
from cxrcluster.bench.extraction import (
    BASELINE_BATCH_SIZE,
    PATH_ORDER,
    PATHS,
    PIPELINE_DEFAULT,
    REFERENCE,
    bench_decode_cache,
    bench_decoding,
    bench_extraction,
    centred_cosine,
    fidelity,
)
from cxrcluster.bench.gemm import bench_gemm, model_flops
from cxrcluster.bench.machine import THREAD_ENV, describe_machine
from cxrcluster.bench.memory import SUITE_N, bench_clustering, synthetic_features
from cxrcluster.bench.progress import log
from cxrcluster.bench.report import CSV_COLUMNS, write_report
from cxrcluster.bench.targets import COSINE_TARGET, targets

__all__ = [
    "BASELINE_BATCH_SIZE",
    "COSINE_TARGET",
    "CSV_COLUMNS",
    "DEFAULT_MODELS",
    "DEFAULT_SIZES",
    "PATHS",
    "PATH_ORDER",
    "PIPELINE_DEFAULT",
    "QUICK_SIZES",
    "REFERENCE",
    "SHARED_SAMPLE_DIR",
    "SUITE_N",
    "THREAD_ENV",
    "bench_clustering",
    "bench_decode_cache",
    "bench_decoding",
    "bench_gemm",
    "bench_extraction",
    "centred_cosine",
    "model_flops",
    "default_data_dir",
    "describe_machine",
    "fidelity",
    "log",
    "main",
    "select_images",
    "synthetic_features",
    "targets",
    "write_report",
]
