"""Clustering timed per algorithm and size, each in a child process whose peak memory is watched.

Clustering: every configured algorithm on synthetic 1,280-dimensional features
(:func:`synthetic_features`, prepared once per size as configured) at each
``n``, one fit each (``seeds: 1``), each in its own process under a time cap and
an address-space cap, reporting fit time, peak resident memory and status; an
algorithm that times out is not tried at larger ``n``. Then the whole suite,
as configured (5 seeds), on ``n = 5,228`` raw synthetic features, default
preparation included.

The child process is ``python -m benchmarks --cluster-worker <spec>``
(:func:`_cluster_worker`), started and watched by :func:`_run_child`. Rows are
those of :data:`benchmarks.report.CSV_COLUMNS`.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from benchmarks.progress import log

SUITE_N = 5_228
"""The real dataset's image count, at which the whole suite is timed."""


def synthetic_features(n: int, d: int = 1280, *, seed: int = 0, n_classes: int = 3,
                       latent: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Features shaped like pooled CNN activations, for timing clustering at any size.

    Each point is drawn from one of ``n_classes`` Gaussian groups in a
    ``latent``-dimensional space, mapped linearly to ``d`` dimensions with a
    random bias and noise, and passed through a ReLU: non-negative, redundant,
    of unequal scales, like global-average-pooled activations. They time the
    algorithms; they say nothing about chest X-rays.

    Parameters
    ----------
    n : int
        Number of points.
    d : int
        Dimension.
    seed : int
        The same seed gives the same points.
    n_classes : int
        Number of groups (labels ``C0``, ``C1``, ...), of similar sizes.
    latent : int
        Dimension of the space the groups are drawn in.

    Returns
    -------
    X : numpy.ndarray of float32, shape (n, d)
    labels : numpy.ndarray of str, shape (n,)
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(n_classes, size=n)
    centres = rng.normal(0.0, 1.5, (n_classes, latent))
    z = centres[y] + rng.normal(0.0, 1.0, (n, latent))
    weights = rng.normal(0.0, 1.0 / np.sqrt(latent), (latent, d))
    bias = rng.normal(-0.5, 0.5, d)
    X = z @ weights + bias
    X += rng.normal(0.0, 0.3, X.shape)
    np.maximum(X, 0.0, out=X)
    return X.astype(np.float32), np.array([f"C{i}" for i in range(n_classes)])[y]


def _cluster_worker(spec_path: str) -> None:
    """Child process: run the suite once per size, printing a JSON line before and after each.

    The peak resident memory of each size is the kernel's high-water mark
    (``VmHWM``), reset before the size starts, so that each size reports its
    own peak although one process runs them all, plus the largest peak of
    its ended children (the suite's preparation worker runs beside it; a
    bound, as the two peaks need not coincide). CPU time includes theirs.
    """
    from cxrcluster import clustering

    spec = json.loads(Path(spec_path).read_text())
    cfg = clustering.validate_config(spec["config"])
    for item in spec["runs"]:
        if "prepared" in item:
            X, labels = np.load(item["prepared"]), np.load(item["labels"])
        else:
            X, labels = synthetic_features(item["n"], seed=item["seed"])
        gc.collect()
        _reset_peak_rss()
        start_rss = _status_mib("VmRSS")
        print(json.dumps({"event": "start", "n": item["n"]}), flush=True)
        cpu0, wall0 = _cpu_seconds(), time.perf_counter()
        results, _ = clustering.run_suite(X, labels, cfg, progress=False)
        wall, cpu = time.perf_counter() - wall0, _cpu_seconds() - cpu0
        rows = []
        for _, r in results.iterrows():
            params = json.loads(r["params"]) if isinstance(r["params"], str) else {}
            rows.append({"algorithm": r["clustering"], "seconds": float(r["wall_time_s"]), "status": r["status"],
                         "subsample": params.get("subsample"), "n_seeds": int(r["n_seeds"])})
        print(json.dumps({"event": "done", "n": item["n"], "total_s": wall, "cpu_s": cpu,
                          # the suite's worker process runs beside this one: its peak is added
                          "peak_rss_mib": _status_mib("VmHWM") + _children_peak_mib(), "start_rss_mib": start_rss,
                          "rows": rows}),
              flush=True)
        del X, labels, results


def _cpu_seconds() -> float:
    """CPU time of this process and of its ended children (the suite's preparation worker)."""
    return sum(u.ru_utime + u.ru_stime for u in map(resource.getrusage, (resource.RUSAGE_SELF,
                                                                         resource.RUSAGE_CHILDREN)))


def _children_peak_mib() -> float:
    """The largest peak resident memory of this process's ended children, in MiB (0 without any)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux


def _reset_peak_rss() -> None:
    with contextlib.suppress(OSError):  # Linux: "5" resets the high-water mark VmHWM
        Path("/proc/self/clear_refs").write_text("5")


def _status_mib(field: str, pid: int | str = "self") -> float | None:
    """A memory figure of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``) in MiB, or None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    if field == "VmHWM" and pid == "self":
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return None


def _limit_address_space(gib: float) -> Callable[[], None]:
    def limit() -> None:
        cap = int(gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    return limit


def _run_child(spec: dict, workdir: Path, time_cap: float, address_space_gib: float) -> list[dict]:
    """Run :func:`_cluster_worker` in a fresh interpreter, one result per size, each under ``time_cap``.

    A size that overruns the cap is stopped (``{"n": n, "error": "timed out ..."}``
    with the peak memory seen so far) and the larger sizes are not run; so is a
    child killed by a signal.
    """
    import queue
    import threading

    spec_path = workdir / f"spec-{time.monotonic_ns()}.json"
    spec_path.write_text(json.dumps(spec))
    # ``benchmarks`` is not installed: the child finds it where this process did, from any folder
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks", "--cluster-worker", str(spec_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=_limit_address_space(address_space_gib))
    lines: queue.Queue = queue.Queue()
    errors: list[str] = []
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout] + [lines.put(None)], daemon=True).start()
    threading.Thread(target=lambda: errors.extend(proc.stderr), daemon=True).start()
    out: list[dict] = []
    pending = [item["n"] for item in spec["runs"]]
    deadline, peak, current = None, 0.0, None
    try:
        while pending:
            try:
                line = lines.get(timeout=0.25)
            except queue.Empty:
                line = ""
            if line is None:  # the child is gone
                proc.wait()
                code = proc.returncode
                tail = " ".join("".join(errors).strip().splitlines()[-2:])[-300:]
                reason = (f"killed by signal {-code}" + (" (out of memory?)" if code == -9 else "") if code < 0
                          else f"exit code {code}: {tail}")
                out.append({"n": pending[0], "error": reason, "peak_rss_mib": peak or None})
                break
            if line.startswith("{"):
                event = json.loads(line)
                if event["event"] == "start":
                    current, deadline, peak = event["n"], time.monotonic() + time_cap, 0.0
                    continue
                out.append(event)
                pending.remove(event["n"])
                deadline, current = None, None
                continue
            if current is not None:
                peak = max(peak, _status_mib("VmHWM", proc.pid) or 0.0)
                if time.monotonic() > deadline:
                    proc.kill()
                    out.append({"n": current, "error": f"timed out after {time_cap:g} s",
                                "peak_rss_mib": peak or None})
                    break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        spec_path.unlink(missing_ok=True)
    return out


def bench_clustering(config_path: str | os.PathLike, sizes: Sequence[int], *, time_cap: float = 90.0,
                     suite_n: int | None = SUITE_N, suite_time_cap: float = 600.0, seed: int = 0,
                     algorithms: Sequence[str] | None = None) -> list[dict]:
    """Fit time and peak memory of each algorithm at each size, then the whole suite at ``suite_n``.

    Parameters
    ----------
    config_path : path-like
        The clustering configuration (``config/clustering.yaml``).
    sizes : sequence of int
        Numbers of synthetic points (:func:`synthetic_features`), run in
        increasing order.
    time_cap : float
        Seconds one algorithm may take at one size; beyond it its process is
        stopped, the row says ``timed out`` (with the peak memory seen so far)
        and larger sizes are not run.
    suite_n : int, optional
        Size at which the whole suite runs as configured (None: not run).
    suite_time_cap : float
        Seconds the whole suite may take.
    seed : int
        Seed of the synthetic features.
    algorithms : sequence of str, optional
        Only these algorithms, in the table and in the suite (default: every
        enabled one).

    Returns
    -------
    list of dict
        Rows of :data:`~benchmarks.report.CSV_COLUMNS` (sections ``clustering`` and ``suite``).
    """
    from cxrcluster import clustering

    shipped = clustering.load_config(config_path)
    budget = float(shipped["memory_budget_gb"])
    address_space = budget + 4.0  # the budget plus the interpreter, libraries and thread arenas
    names = [a for a, spec in shipped["algorithms"].items()
             if spec["enabled"] and (algorithms is None or a in algorithms)]
    sizes = sorted(sizes)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="cxrcluster-bench-") as tmp:
        work = Path(tmp)
        runs, description = [], ""
        for n in sizes:
            X, labels = synthetic_features(n, seed=seed)
            start = time.perf_counter()
            prepared, description = clustering.prepare_features(X, shipped["preparation"])
            log(f"clustering: n={n:,} synthetic features, {description} in {time.perf_counter() - start:.1f} s")
            del X
            runs.append({"n": n, "prepared": str(work / f"X-{n}.npy"), "labels": str(work / f"y-{n}.npy")})
            np.save(runs[-1]["prepared"], prepared)
            np.save(runs[-1]["labels"], labels)
            del prepared
        for name in names:
            cfg = {**{k: v for k, v in shipped.items() if k != "algorithms"}, "seeds": 1,
                   "preparation": {}, "algorithms": {name: shipped["algorithms"][name]}}
            results = {r["n"]: r for r in _run_child({"config": cfg, "runs": runs}, work, time_cap, address_space)}
            stopped = None
            for n in sizes:
                row = {"section": "clustering", "algorithm": name, "n": n}
                r = results.get(n)
                if r is None:
                    rows.append({**row, "status": "not run", "note": stopped or "the process stopped"})
                    continue
                if "error" in r:
                    rows.append({**row, "peak_rss_mib": _round(r.get("peak_rss_mib"), 1), "status": r["error"],
                                 "note": "peak memory: the highest seen before it was stopped"})
                    stopped = f"{r['error'].split(' (')[0]} at n={n:,}"
                    log(f"  {name} at n={n:,}: {r['error']}")
                    continue
                fit = r["rows"][0]
                rows.append({**row, "seconds": round(fit["seconds"], 3), "cpu_s": round(r["cpu_s"], 2),
                             "peak_rss_mib": _round(r["peak_rss_mib"], 1), "subsample": fit["subsample"],
                             "status": fit["status"],
                             "note": f"prepared {description}; resident before fitting "
                                     f"{r['start_rss_mib']:.0f} MiB"})
                log(f"  {name} at n={n:,}: {fit['seconds']:.2f} s, peak {r['peak_rss_mib']:.0f} MiB"
                    + (f", subsample {fit['subsample']:,}" if fit["subsample"] else "")
                    + ("" if fit["status"] == "ok" else f", {fit['status'][:90]}"))
        if suite_n:
            log(f"whole suite at n={suite_n:,} as configured (synthetic 1,280-d features, preparation included)")
            whole = dict(shipped)
            if algorithms is not None:
                whole["algorithms"] = {a: shipped["algorithms"][a] for a in names}
            out = _run_child({"config": whole, "runs": [{"n": suite_n, "seed": seed}]}, work,
                             suite_time_cap, address_space)
            suite = {"section": "suite", "algorithm": "(whole suite)", "n": suite_n}
            r = out[0] if out else {"error": "the process stopped"}
            if "error" in r:
                rows.append({**suite, "status": r["error"]})
                log(f"  whole suite: {r['error']}")
            else:
                rows.append({**suite, "seconds": round(r["total_s"], 2), "cpu_s": round(r["cpu_s"], 2),
                             "peak_rss_mib": _round(r["peak_rss_mib"], 1), "status": "ok",
                             "note": f"seeds {shipped['seeds']}; preparation, fitting and scoring"})
                for a in r["rows"]:
                    rows.append({"section": "suite", "algorithm": a["algorithm"], "n": suite_n,
                                 "seconds": round(a["seconds"], 3), "subsample": a["subsample"],
                                 "status": a["status"], "note": f"fit time over {a['n_seeds']} run(s)"})
                log(f"  whole suite: {r['total_s']:.1f} s ({r['cpu_s']:.1f} CPU s), "
                    f"peak {r['peak_rss_mib']:.0f} MiB")
    return rows


def _round(value, digits: int):
    return None if value is None else round(float(value), digits)
