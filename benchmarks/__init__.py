"""The benchmark harness: extraction paths side by side, input decoding, clustering as n grows.

A developer tool kept beside the package, not in it (as scikit-learn, numpy
and scipy keep theirs): it is not installed with ``cxrcluster`` and uses only
its public API. Run ``python -m benchmarks --out reports/benchmarks`` from the
project root (``make bench``). It writes ``<out>.md`` (the report, with the
machine's description) and ``<out>.csv`` (every figure, one row each, columns
:data:`CSV_COLUMNS`), both atomically (``<out>/benchmarks.md`` and ``.csv``
when ``<out>`` is a folder), and prints its progress as it goes. ``--help``
lists the options. Its tests are in ``benchmarks/tests`` (``make test``).

The package is in nine modules, and every public name below is re-exported
here, so ``import benchmarks; benchmarks.targets(...)`` works:

- :mod:`~benchmarks.extraction`: every extraction path of every model
  timed in interleaved rounds on the same images, and input decoding alone
  (:func:`bench_extraction`, :func:`bench_decoding`), with their fidelity to
  the fp32 reference (:func:`cxrcluster.extraction_path.fidelity`); :data:`PATHS`,
  :data:`PATH_ORDER`, :data:`REFERENCE`, :data:`PIPELINE_DEFAULT` and
  :data:`BASELINE_BATCH_SIZE`; ``MODELS=all`` extraction with and without
  the decode cache (:func:`bench_decode_cache`).
- :mod:`~benchmarks.gemm`: the machine's fp32 and int8 matrix-multiply
  throughput (:func:`bench_gemm`) and a backbone's operations per image
  (:func:`model_flops`), for the share of the machine a path reaches.
- :mod:`~benchmarks.memory`: clustering timed per algorithm and size,
  each in a child process under a time cap and an address-space cap whose peak
  resident memory is watched, then the whole suite (:func:`bench_clustering`);
  :func:`synthetic_features` and :data:`SUITE_N`.
- :mod:`~benchmarks.machine`: the machine's description (CPU, flags,
  bf16 support, thread settings, versions; :func:`describe_machine`) and
  :data:`THREAD_ENV`.
- :mod:`~benchmarks.targets`: the performance targets and how they are
  judged (:func:`targets`, :data:`COSINE_TARGET`).
- :mod:`~benchmarks.report`: ``<out>.md`` and ``<out>.csv``
  (:func:`write_report`, :data:`CSV_COLUMNS`).
- :mod:`~benchmarks.cli`: the command line (:func:`main`, run by
  ``python -m benchmarks`` through ``__main__``), the images it measures
  (:func:`default_data_dir`, :func:`select_images`) and its defaults
  (:data:`DEFAULT_MODELS`, :data:`DEFAULT_SIZES`, :data:`QUICK_SIZES`,
  :data:`SHARED_SAMPLE_DIR`).
- :mod:`~benchmarks.executors`: this process against a local Dask cluster
  on the same inputs (:func:`bench_executors`).
- :mod:`~benchmarks.progress`: :func:`log`, the timestamped progress lines.
"""

from benchmarks.cli import (
    DEFAULT_MODELS,
    DEFAULT_SIZES,
    QUICK_SIZES,
    SHARED_SAMPLE_DIR,
    default_data_dir,
    main,
    select_images,
)
from benchmarks.executors import bench_executors
from benchmarks.extraction import (
    BASELINE_BATCH_SIZE,
    PATH_ORDER,
    PATHS,
    PIPELINE_DEFAULT,
    REFERENCE,
    bench_decode_cache,
    bench_decoding,
    bench_extraction,
)
from benchmarks.gemm import bench_gemm, model_flops
from benchmarks.machine import THREAD_ENV, describe_machine
from benchmarks.memory import SUITE_N, bench_clustering, synthetic_features
from benchmarks.progress import log
from benchmarks.report import CSV_COLUMNS, write_report
from benchmarks.targets import COSINE_TARGET, targets

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
    "bench_executors",
    "bench_gemm",
    "bench_extraction",
    "model_flops",
    "default_data_dir",
    "describe_machine",
    "log",
    "main",
    "select_images",
    "synthetic_features",
    "targets",
    "write_report",
]
