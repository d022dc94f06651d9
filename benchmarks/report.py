"""Writing the benchmark's report: ``<out>.md`` and ``<out>.csv``, both atomically.

:func:`write_report` writes every row (columns :data:`CSV_COLUMNS`) to the
CSV, and the Markdown report: the machine, extraction, decoding, clustering as
n grows, the whole suite and the targets
(:func:`benchmarks.targets.targets`).
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.targets import targets
from cxrcluster import atomic

CSV_COLUMNS = [
    "section", "model", "weights", "path", "engine", "precision", "role", "input_size", "batch_size", "images",
    "repeats", "seconds", "images_per_s", "speedup_vs_baseline", "forward_images_per_s", "cpu_s_per_image",
    "min_cosine", "min_centred_cosine", "max_rel_error", "median_centred_cosine", "kmeans_ari",
    "kmeans_matched_change", "passes_check", "deterministic", "algorithm", "n", "cpu_s", "peak_rss_mib",
    "subsample", "gflops", "gflop_per_image", "status", "note",
]
"""Columns of ``<out>.csv``. ``section`` is ``extraction``, ``decoding``,
``clustering`` (one algorithm, one ``n``), ``suite`` (the whole suite, and
its algorithms' fit times) or ``executor`` (extraction and the suite in this
process and on a local Dask cluster: ``path`` is where, ``algorithm`` the part), ``gemm`` (the
machine's matrix-multiply GFLOP/s per precision) or ``decode-cache`` (every model in turn without and
with the decode cache); columns that do not apply to a section are empty.
``role`` marks the original study's pipeline, the fp32 reference
(``extract_features``' default) and the path ``make`` runs by default."""


def write_report(rows: list[dict], out: str | os.PathLike, *, machine: dict, command: str, data_note: str,
                 started: float, load_before: tuple, load_after: tuple, budget_gib: float = 8.0
                 ) -> tuple[Path, Path]:
    """Write ``<out>.md`` and ``<out>.csv`` atomically; return their paths.

    When ``out`` is an existing folder, they are ``<out>/benchmarks.md`` and
    ``<out>/benchmarks.csv``.
    """
    out = Path(out)
    if out.is_dir():
        out = out / "benchmarks"
    csv_path, md_path = out.with_name(out.name + ".csv"), out.with_name(out.name + ".md")
    frame = pd.DataFrame(rows, columns=CSV_COLUMNS)
    atomic.write_csv(frame, csv_path)
    lines = [
        "# Benchmarks",
        "",
        f"Written by `{command}` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC in "
        f"{(time.perf_counter() - started) / 60:.1f} min. Every figure is also in `{csv_path.name}`.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        f"| CPU | {machine['cpu']} |",
        f"| cores | {machine['logical_cores']} logical, {machine['usable_cores']} usable |",
        f"| flags | {' '.join(machine['flags']) or '—'} |",
        f"| AMX | {'yes' if machine['amx'] else 'no'} |",
        f"| bf16 | TensorFlow: {machine['bf16']['tensorflow']}; OpenVINO: {machine['bf16']['openvino']} |",
        f"| memory | {_fmt(machine['memory_gib'])} GiB |",
        f"| load average (1 min) | {load_before[0]:.2f} at the start, {load_after[0]:.2f} at the end |",
        f"| platform | {machine['platform']} |",
        f"| thread settings | {', '.join(f'{k}={v}' for k, v in machine.get('environment', {}).items()) or 'library defaults'} |",
        f"| versions | {', '.join(f'{k} {v}' for k, v in machine['versions'].items())} |",
        "",
        "A load average above the core count means other processes shared the CPU while this ran: "
        "paths are timed in interleaved rounds so that they share it alike.",
        "",
    ]
    ext = frame[frame["section"] == "extraction"]
    if not ext.empty:
        lines += ["## Feature extraction", "", data_note, "",
                  "| model | weights | path | role | images/s | × baseline | forward images/s "
                  "| min cosine vs fp32 | centred (min / median) | k-means ARI (matched change) | max rel. error "
                  "| rerun identical | note |",
                  "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
        for _, r in ext.iterrows():
            if r["status"] != "ok":
                lines.append(f"| {r['model']} | {r['weights']} | {r['path']} | {_fmt(r['role'])} "
                             f"| — | — | — | — | — | — | — | — | {r['status']}: {r['note']} |")
                continue
            det = "yes" if r["deterministic"] is True else ("no" if r["deterministic"] is False else "—")
            lines.append(
                f"| {r['model']} | {r['weights']} | {r['path']} | {_fmt(r['role'])} "
                f"| {_fmt(r['images_per_s'], '.1f')} | {_fmt(r['speedup_vs_baseline'], '.2f')} "
                f"| {_fmt(r['forward_images_per_s'], '.1f')} | {_fmt(r['min_cosine'], '.6f')} "
                f"| {_fmt(r['min_centred_cosine'], '.4f')} / {_fmt(r['median_centred_cosine'], '.4f')} "
                f"| {_kmeans_cell(r)} | {_fmt(r['max_rel_error'], '.2g')} | {det} "
                f"| {r['note']} |")
        lines += [
            "",
            "*images/s*: end to end, from the files to the features, median of the rounds. *× baseline*: "
            "the median over rounds of the baseline's time in that round divided by the path's, so that a "
            "change of load between rounds does not count as speed. *forward "
            "images/s*: the same run counting only the time in the forward pass (decoding runs meanwhile in "
            "two threads). *min cosine*, *max rel. error*: the least similar image's cosine with the fp32 "
            "TensorFlow features (`tensorflow-fp32`), and the largest per-image `max|f − r| / max|r|`. "
            "*centred*: the least cosine after subtracting the fp32 features' mean image from both, which "
            "compares only what tells images apart (an untrained network's features of different images "
            "can have cosines near 0.995 to each other, which makes plain cosines flatter it). "
            "*k-means ARI*: k-means (3 clusters, PCA 50, seeded) of the path's features against the same "
            "on fp32's, with the percentage of images whose cluster differs after matching; ✓ marks a path "
            "that passes the pipeline's check (ARI >= 0.98 and median centred cosine >= 0.99, "
            "`cxrcluster.extraction_path`). *role*: the path `make` runs by default on this machine, and why. "
            "*baseline*: `tf.keras.preprocessing.image.ImageDataGenerator(rescale=1/255)` "
            "(Keras 3 still ships it as a legacy class) with `model.predict`, batch 16: the original study's "
            "pipeline, with other inputs, so it is not scored. Random weights (`none`) time the architecture "
            "exactly (speed does not depend on the weight values); their fidelity figures are those of an "
            "untrained network, not of the ImageNet one.",
            "",
        ]
    gemm = frame[frame["section"] == "gemm"]
    if not gemm.empty:
        n = int(gemm["n"].iloc[0])
        lines += ["## Matrix-multiply throughput and the share of it extraction reaches", "",
                  f"A {n}×{n}×{n} matrix product and a 3×3 convolution of 32 maps of 256 channels at 28×28 "
                  "through OpenVINO with extraction's settings, median of the rounds (2 operations per "
                  "multiply-add); the larger of the two is the machine's measured peak in that precision.", "",
                  "| precision | work | GFLOP/s | note |", "|---|---|---:|---|"]
        for _, r in gemm.iterrows():
            lines.append(f"| {r['precision']} | {r['algorithm']} | {r['gflops']:.0f} | {r['note']} |")
        shares = share_of_gemm(frame)
        if shares:
            lines += ["", "| model | path | GFLOP per image | forward images/s | GFLOP/s reached | share of peak |",
                      "|---|---|---:|---:|---:|---:|"]
            lines += [f"| {m} | {p} | {g:.3f} | {ips:.1f} | {g * ips:.0f} | {share:.0%} |"
                      for m, p, g, ips, share in shares]
        lines.append("")
    cache = frame[frame["section"] == "decode-cache"]
    if not cache.empty:
        lines += ["## Decode once: every model in turn, without and with the decode cache", "",
                  "| run | images | seconds | × without | note |", "|---|---:|---:|---:|---|"]
        for _, r in cache.iterrows():
            lines.append(f"| {r['path']} ({r['model']}) | {int(r['images'])} | {r['seconds']:.1f} "
                         f"| {r['speedup_vs_baseline']:.2f} | {r['note']} |")
        lines.append("")
    dec = frame[frame["section"] == "decoding"]
    if not dec.empty:
        lines += ["## Input decoding", "", "| input size | images/s | note |", "|---:|---:|---|"]
        for _, r in dec.iterrows():
            lines.append(f"| {int(r['input_size'])} | {r['images_per_s']:.1f} | {r['note']} |")
        lines.append("")
    clus = frame[frame["section"] == "clustering"]
    if not clus.empty:
        sizes = sorted(int(n) for n in clus["n"].unique())
        lines += ["## Clustering: fit time and peak memory as n grows", "",
                  "Synthetic 1,280-dimensional features (`benchmarks.synthetic_features`), prepared as "
                  "configured, one fit (`seeds: 1`) per algorithm and size, each in its own process; peak "
                  "resident memory of that process. Each cell: fit time (wall), CPU time of fitting and scoring, "
                  "peak memory. *sub N*: fitted on a subsample of N, the rest assigned.",
                  "",
                  "| algorithm | " + " | ".join(f"n = {n:,}" for n in sizes) + " |",
                  "|---|" + "---:|" * len(sizes)]
        for name in clus["algorithm"].unique():
            cells = []
            for n in sizes:
                hit = clus[(clus["algorithm"] == name) & (clus["n"] == n)]
                cells.append(_cluster_cell(hit.iloc[0]) if not hit.empty else "—")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    suite = frame[frame["section"] == "suite"]
    if not suite.empty:
        whole = suite[suite["algorithm"] == "(whole suite)"].iloc[0]
        lines += [f"## The whole suite at n = {int(whole['n']):,}", ""]
        if whole["status"] == "ok":
            lines.append(f"{whole['seconds']:.1f} s in total ({whole['cpu_s']:.1f} CPU s), peak "
                         f"{whole['peak_rss_mib']:.0f} MiB ({whole['note']}). Fit time of each algorithm:")
            lines += ["", "| algorithm | seconds | status |", "|---|---:|---|"]
            for _, r in suite[suite["algorithm"] != "(whole suite)"].iterrows():
                lines.append(f"| {r['algorithm']} | {r['seconds']:.2f} | {str(r['status'])[:100]} |")
        else:
            lines.append(f"{whole['status']}.")
        lines.append("")
    places = frame[frame["section"] == "executor"]
    if not places.empty:
        lines += ["## Where the work runs: this process against a local Dask cluster", "",
                  "The same images and the same synthetic features on each; wall seconds of one run each.", "",
                  "| executor | part | seconds | images | note |", "|---|---|---:|---:|---|"]
        for _, r in places.iterrows():
            lines.append(f"| {r['path']} | {r['algorithm']} | {r['seconds']:.1f} | {_fmt(r['n'], ',.0f')} | "
                         f"{_fmt(r['note'])} |")
        lines.append("")
    goals = targets(frame, budget_gib)
    if goals:
        lines += ["## Targets", "", "| target | measured | |", "|---|---|---|"]
        lines += [f"| {t} | {m} | {v} |" for t, m, v in goals]
        lines.append("")
    with atomic.atomic_open(md_path, "w") as fh:
        fh.write("\n".join(lines))
    return md_path, csv_path


def share_of_gemm(frame: pd.DataFrame) -> list[tuple[str, str, float, float, float]]:
    """Per model, the default path's forward GFLOP/s as a share of the measured GEMM of its precision."""
    gemm = frame[frame["section"] == "gemm"].groupby("precision")["gflops"].max()
    ext = frame[(frame["section"] == "extraction") & (frame["status"] == "ok")]
    out = []
    for _, r in ext[ext["role"].fillna("").str.contains("make default")].iterrows():
        gflop = r.get("gflop_per_image")
        peak = gemm.get(r["precision"], gemm.get("fp32"))
        if pd.notna(gflop) and peak and pd.notna(r["forward_images_per_s"]):
            out.append((r["model"], r["path"], gflop, float(r["forward_images_per_s"]),
                        gflop * float(r["forward_images_per_s"]) / float(peak)))
    return out


def _kmeans_cell(r: pd.Series) -> str:
    if pd.isna(r.get("kmeans_ari")):
        return "—"
    mark = " ✓" if r.get("passes_check") is True else ""
    return f"{r['kmeans_ari']:.4f} ({r['kmeans_matched_change']:.1f} %){mark}"


def _cluster_cell(r: pd.Series) -> str:
    status = str(r["status"])
    if status == "ok":
        sub = f", sub {int(r['subsample']):,}" if pd.notna(r["subsample"]) and r["subsample"] else ""
        return f"{r['seconds']:.1f} s ({r['cpu_s']:.1f} CPU s), {r['peak_rss_mib']:.0f} MiB{sub}"
    if status.startswith("skipped"):
        return "skipped (budget)"
    if status == "not run":
        return f"not run ({r['note']})"
    peak = f", {r['peak_rss_mib']:.0f} MiB so far" if pd.notna(r["peak_rss_mib"]) else ""
    return status.split(":")[0] + peak


def _fmt(value, spec: str = "") -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
        return "—"
    return format(value, spec) if spec else str(value)
