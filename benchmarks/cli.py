"""The command line of ``python -m benchmarks``: options, the images measured, the run.

:func:`main` parses the options (``--help`` lists them), describes the
machine, runs extraction (:func:`benchmarks.extraction.bench_extraction`)
and clustering (:func:`benchmarks.memory.bench_clustering`) and writes
the report (:func:`benchmarks.report.write_report`). Called with the
hidden ``--cluster-worker <spec>``, it is instead a clustering child process
(:func:`benchmarks.memory._cluster_worker`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.executors import bench_executors
from benchmarks.extraction import (
    PATHS,
    PIPELINE_DEFAULT,
    bench_decode_cache,
    bench_extraction,
    choose_weights,
)
from benchmarks.gemm import bench_gemm
from benchmarks.machine import describe_machine
from benchmarks.memory import SUITE_N, _cluster_worker, bench_clustering
from benchmarks.progress import log
from benchmarks.report import write_report
from cxrcluster import data, demo, models
from cxrcluster.paths import DEMO_DATA_DIR, PROJECT_ROOT, resolve

#: Real sample used when present (``<project>/../shared/data/cxr-sample``).
SHARED_SAMPLE_DIR = PROJECT_ROOT.parent / "shared" / "data" / "cxr-sample"

DEFAULT_MODELS = ("ResNet50", "MobileNetV2-0.35")
DEFAULT_SIZES = (1_000, 5_000, 20_000, 50_000)
QUICK_SIZES = (200, 400)


def default_data_dir() -> Path:
    """``<project>/../shared/data/cxr-sample`` when present, else the demo data (written if missing)."""
    if SHARED_SAMPLE_DIR.is_dir():
        return SHARED_SAMPLE_DIR
    if not demo.is_synthetic(DEMO_DATA_DIR):
        log(f"writing the synthetic demo data to {DEMO_DATA_DIR}")
        demo.write_demo_dataset(DEMO_DATA_DIR)
    return DEMO_DATA_DIR


def select_images(data_dir: str | os.PathLike, limit: int | None = None) -> list[Path]:
    """Every image of the dataset in labels order, or ``limit`` of them spread evenly across it."""
    labels = data.scan_dataset(data_dir)
    paths = data.resolve_image_paths(labels, data_dir)
    if limit and limit < len(paths):
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, limit).round().astype(int)]
    return paths


def main(argv: list[str] | None = None) -> None:
    summary = sys.modules[__package__].__doc__.splitlines()[0]  # the package's, as ``--help`` always showed
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=summary)
    parser.add_argument("--out", default="reports/benchmarks",
                        help="output path without suffix: writes <out>.md and <out>.csv, or "
                             "<out>/benchmarks.md and .csv when <out> is a folder (default %(default)s)")
    parser.add_argument("--data-dir", help="images to extract (default: ../shared/data/cxr-sample when present, "
                                           "else data/demo, written if missing)")
    parser.add_argument("--models", nargs="+", help=f"backbones (default: {' '.join(DEFAULT_MODELS)})")
    parser.add_argument("--weights", default="auto",
                        help="auto (ImageNet when in Keras' cache, else random), imagenet, none (default %(default)s)")
    parser.add_argument("--images", type=int, help="use this many images, spread over the dataset (default: all)")
    parser.add_argument("--repeats", type=int, help="timed rounds per path; the median is reported (default 3)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="decoding threads (default %(default)s)")
    parser.add_argument("--pipeline-default", default=PIPELINE_DEFAULT, choices=["auto", *PATHS],
                        help="the path make runs, ENGINE-PRECISION, or auto: the rule of cxrcluster.extraction_path "
                             "(default %(default)s, the Makefile's)")
    parser.add_argument("--cache-models", nargs="+",
                        help="models extracted in turn without and with the decode cache (default: all; "
                             "with --quick the benchmarked models)")
    parser.add_argument("--sizes", type=int, nargs="+", help="clustering sizes (default 1000 5000 20000 50000)")
    parser.add_argument("--suite-n", type=int, help=f"size of the whole-suite run (default {SUITE_N}; 0: none)")
    parser.add_argument("--time-cap", type=float, default=None,
                        help="seconds per algorithm and size before it is stopped (default 90)")
    parser.add_argument("--config", default=str(PROJECT_ROOT / "config" / "clustering.yaml"))
    parser.add_argument("--algorithms", nargs="+",
                        help="only these clustering algorithms, in the scaling table and the suite (default: all)")
    parser.add_argument("--places", nargs="*",
                        help="where to run extraction and the suite, compared with this process: local:N or a "
                             "scheduler's address (default: local:2; none with --quick)")
    parser.add_argument("--skip", choices=["extraction", "gemm", "decode-cache", "clustering", "executors"],
                        action="append", default=[],
                        help="leave a part out (repeatable)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 8 images, one round, clustering at n = 200 and 400, suite at 300")
    parser.add_argument("--cluster-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cluster_worker:
        _cluster_worker(args.cluster_worker)
        return

    started = time.perf_counter()
    load_before = os.getloadavg()
    quick = args.quick
    model_names = models.expand_models(args.models or list(DEFAULT_MODELS))
    repeats = args.repeats or (1 if quick else 3)
    sizes = args.sizes or (QUICK_SIZES if quick else DEFAULT_SIZES)
    suite_n = args.suite_n if args.suite_n is not None else (300 if quick else SUITE_N)
    time_cap = args.time_cap or (60.0 if quick else 90.0)
    limit = args.images or (8 if quick else None)
    data_dir = resolve(args.data_dir) if args.data_dir else default_data_dir()
    command = "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = describe_machine()
    log(f"{machine['cpu']}, {machine['usable_cores']} cores, flags {' '.join(machine['flags'])}")

    rows: list[dict] = []
    data_note = ""
    if "extraction" not in args.skip:
        paths = select_images(data_dir, limit)
        synthetic = " (synthetic demo data)" if demo.is_synthetic(data_dir) else ""
        data_note = (f"{len(paths)} images from `{data_dir}`{synthetic}, batch {args.batch_size}, "
                     f"{args.workers} decoding threads, {repeats} timed round(s) after a warm-up.")
        log(f"extraction: {data_note}")
        rows += bench_extraction(paths, model_names, weights=args.weights, repeats=repeats,
                                 batch_size=args.batch_size, workers=args.workers,
                                 pipeline_default=args.pipeline_default)
    if "gemm" not in args.skip:
        rows += bench_gemm()
    if "decode-cache" not in args.skip:
        paths = select_images(data_dir, limit)
        cache_models = models.expand_models(args.cache_models or (model_names if quick else ["all"]))
        log(f"decode cache: {len(cache_models)} models on {len(paths)} images, without and with the cache")
        engine, _, precision = args.pipeline_default.partition("-")
        rows += bench_decode_cache(paths, cache_models, weights=args.weights, batch_size=args.batch_size,
                                   workers=args.workers, engine=engine, precision_=precision or engine)
    if "clustering" not in args.skip:
        rows += bench_clustering(resolve(args.config), sizes, time_cap=time_cap, suite_n=suite_n or None,
                                 suite_time_cap=max(600.0, time_cap), algorithms=args.algorithms)
    places = args.places if args.places is not None else ([] if quick else ["local:2"])
    if places and "executors" not in args.skip:
        model = model_names[-1]  # the smallest of the defaults
        paths = select_images(data_dir, limit)
        log(f"executors: this process against {', '.join(places)}")
        rows += bench_executors(paths, model, choose_weights(model, args.weights), resolve(args.config),
                                suite_n=suite_n or SUITE_N, places=["", *places], batch_size=args.batch_size,
                                workers=args.workers, engine=args.pipeline_default.split("-")[0])
    from cxrcluster import clustering

    budget = float(clustering.load_config(resolve(args.config))["memory_budget_gb"])
    md, csv = write_report(rows, resolve(args.out), machine=machine, command=command, data_note=data_note,
                           started=started, load_before=load_before, load_after=os.getloadavg(),
                           budget_gib=budget)
    log(f"wrote {md} and {csv}")
