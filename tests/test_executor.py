"""Where the work runs: the SCHEDULER values, a scheduler that cannot be reached, and a real Dask cluster
(`dask scheduler` and two `dask worker` processes on 127.0.0.1) whose features and clustering equal an
in-process run's, also when a worker is killed mid-extraction."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrcluster import clustering, data, demo, executor, features
from cxrcluster.paths import PROJECT_ROOT

pytestmark = pytest.mark.filterwarnings("ignore:.*RANDOM weights:UserWarning")

DASK = Path(sys.executable).parent / "dask"
MODEL = "MobileNetV2-0.35"


@pytest.mark.parametrize("value, environ, workers, address, label", [
    ("", {}, None, None, "local"),
    (None, {}, None, None, "local"),
    ("  ", {}, None, None, "local"),
    ("local:1", {}, 1, None, "local:1"),
    ("local:4", {}, 4, None, "local:4"),
    ("tcp://10.1.2.3:8786", {}, None, "tcp://10.1.2.3:8786", "tcp://10.1.2.3:8786"),
    ("scheduler.cluster:8786", {}, None, "tcp://scheduler.cluster:8786", "tcp://scheduler.cluster:8786"),
    ("tls://head:8786", {}, None, "tls://head:8786", "tls://head:8786"),
    ("", {"DASK_SCHEDULER_ADDRESS": "tcp://head:8786"}, None, "tcp://head:8786", "tcp://head:8786"),
    ("local:2", {"DASK_SCHEDULER_ADDRESS": "tcp://head:8786"}, 2, None, "local:2"),  # the variable wins
])
def test_scheduler_values(value, environ, workers, address, label):
    where = executor.parse(value, environ)
    assert (where.workers, where.address, where.label) == (workers, address, label)
    assert where.in_process == (label == "local")


@pytest.mark.parametrize("value, message", [
    ("local:0", "at least one worker"),
    ("local", "is not a place to run"),
    ("local:two", "is not a place to run"),
    ("http://head:8786", "is not a place to run"),
    ("head", "is not a place to run"),
])
def test_malformed_scheduler_values_are_refused(value, message):
    with pytest.raises(executor.SchedulerError, match=message):
        executor.parse(value, {})
    with pytest.raises(executor.SchedulerError, match="DASK_SCHEDULER_ADDRESS"):
        executor.parse("", {"DASK_SCHEDULER_ADDRESS": value})


def test_nothing_set_runs_here_without_dask(monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    with executor.connect("") as cluster:
        assert cluster is None


@pytest.mark.slow  # waits out a connection timeout
@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_a_scheduler_that_cannot_be_reached_fails_within_seconds(kind):
    """Nothing listening, or a port that accepts connections and never answers: an error, not a hang."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]
    if kind == "refused":
        server.close()
    else:
        server.listen(8)  # the kernel accepts; nobody speaks Dask
    started = time.monotonic()
    try:
        with pytest.raises(executor.SchedulerError, match=f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}"):
            with executor.connect(f"127.0.0.1:{port}", timeout=2):
                pass
    finally:
        server.close()
    assert time.monotonic() - started < 30


def test_unreadable_names_what_a_worker_cannot_read(tmp_path):
    (tmp_path / "here.png").write_bytes(b"x")
    answer = executor.unreadable([str(tmp_path), str(tmp_path / "here.png"), str(tmp_path / "nowhere")])
    assert answer["host"] == socket.gethostname()
    assert answer["unreadable"] == [(str(tmp_path / "nowhere"), "does not exist here")]


# ---- a real cluster: a scheduler and two workers, each its own process ---------------------------

@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """`dask scheduler` and two `dask worker` processes (one thread, no nanny) on 127.0.0.1."""
    folder = tmp_path_factory.mktemp("dask")
    scheduler_file = folder / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src")}
    logs = [(folder / f"{name}.log").open("w") for name in ("scheduler", "worker0", "worker1")]
    scheduler = subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                  "--scheduler-file", scheduler_file], env=env, cwd=folder,
                                 stdout=logs[0], stderr=subprocess.STDOUT)
    workers = []
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        workers = [subprocess.Popen([DASK, "worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard",
                                     "--host", "127.0.0.1", "--name", f"worker{i}", "--death-timeout", "60"],
                                    env=env, cwd=folder, stdout=logs[1 + i], stderr=subprocess.STDOUT)
                   for i in range(2)]
        from dask.distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=120)
        yield address, workers
    finally:
        for process in [*workers, scheduler]:
            process.terminate()
        for process in [*workers, scheduler]:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        for log in logs:
            log.close()


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    """The 150 demo images, their labels file, and their features extracted in this process."""
    folder = tmp_path_factory.mktemp("demo")
    root = demo.write_demo_dataset(folder / "data")
    labels_csv = folder / "original_labels.csv"
    data.scan_dataset(root).to_csv(labels_csv, index=False)
    features.extract_dataset(labels_csv, root, MODEL, "none", folder / "here", **EXTRACTION)
    return root, labels_csv, folder


EXTRACTION = {"batch_size": 8, "engine": "openvino", "progress": False}
TIMINGS = ("seconds_total", "seconds_inference", "images_per_second")


def _sidecar(folder):
    return json.loads((folder / f"{MODEL}.json").read_text())


@pytest.mark.dask
def test_extraction_and_clustering_on_a_cluster_equal_a_run_here(dask_cluster, demo_data, tmp_path, monkeypatch):
    address, _ = dask_cluster
    root, labels_csv, folder = demo_data
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", address)  # Dask's own convention, SCHEDULER unset
    with executor.connect("") as cluster:
        assert cluster.label == address and len(cluster.workers()) == 2
        X, provenance = features.extract_dataset(labels_csv, root, MODEL, "none", tmp_path, cluster=cluster,
                                                 shard_batches=3, **EXTRACTION)
        here = (folder / "here" / f"{MODEL}.npy").read_bytes()
        assert (tmp_path / f"{MODEL}.npy").read_bytes() == here  # byte for byte
        there, local = _sidecar(tmp_path), _sidecar(folder / "here")
        assert there["executor"] == address and local["executor"] == "local"
        # 150 images in shards of 3 batches of 8: 7 shards, in row order, each named with its worker and CPU
        assert [s["rows"] for s in there["computed_by"]] == [[a, min(a + 24, 150)] for a in range(0, 150, 24)]
        assert {s["worker"] for s in there["computed_by"]} <= set(cluster.workers())
        assert all(s["host"] and s["cpu"] and isinstance(s["flags"], list) for s in there["computed_by"])
        differing = {k for k in there if there[k] != local[k]}
        assert differing <= {"executor", "computed_by", "engine_choice", *TIMINGS}, differing
        # the same path chosen for the same reason; only the decode cache is never used on a cluster
        choice_there, choice_here = there["engine_choice"], local["engine_choice"]
        assert {k for k in choice_here if choice_here[k] != choice_there[k]} <= {"decoded_cache"}
        assert choice_there["decoded_cache"].startswith("not used") and choice_there["reason"] == "fp32: forced"

        labels = data.read_labels(labels_csv)["label"].to_numpy()
        config = clustering.load_config(PROJECT_ROOT / "config" / "clustering.yaml")
        table_here, ids_here = clustering.run_suite(X, labels, config, model=MODEL, progress=False)
        table_there, ids_there = clustering.run_suite(X, labels, config, model=MODEL, progress=False,
                                                      cluster=cluster)
    pd.testing.assert_frame_equal(table_there.drop(columns="wall_time_s"), table_here.drop(columns="wall_time_s"))
    assert ids_there.keys() == ids_here.keys() and len(ids_here) >= 10
    for name in ids_here:
        np.testing.assert_array_equal(ids_there[name], ids_here[name])


@pytest.mark.dask
def test_a_model_file_on_a_cluster_gives_this_processs_features_and_a_changed_file_is_refused(
        dask_cluster, demo_data, tmp_path):
    import keras

    from cxrcluster import models

    address, _ = dask_cluster
    root, labels_csv, _ = demo_data

    def grey(seed):
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((64, 64, 1))
        x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv")(inputs)
        keras.Model(inputs, keras.layers.GlobalAveragePooling2D(name="pool")(x)).save(tmp_path / "grey.keras")

    grey(0)
    spec = models.get_backbone(str(tmp_path / "grey.keras"), preprocess="xray")
    settings = {"batch_size": 8, "progress": False}
    here, _ = features.extract_dataset(labels_csv, root, spec, "none", tmp_path / "here", **settings)
    with executor.connect(address) as cluster:
        there, provenance = features.extract_dataset(labels_csv, root, spec, "none", tmp_path / "there",
                                                     cluster=cluster, shard_batches=3, **settings)
        assert there.tobytes() == here.tobytes() and len(provenance["computed_by"]) == 7
        assert provenance["weights_sha256"] == spec.sha256 and provenance["model"] == spec.name
        grey(1)  # the file the workers would read is no longer the one checked here
        with pytest.raises(Exception, match="changed since it was checked"):
            features.extract_dataset(labels_csv, root, spec, "none", tmp_path / "stale", cluster=cluster,
                                     shard_batches=3, **settings)
    assert not (tmp_path / "stale").exists()


@pytest.mark.dask
def test_bad_images_on_a_cluster_are_reported_as_here(dask_cluster, tmp_path):
    address, _ = dask_cluster
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for label in demo.CLASSES:
        (root / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(demo.synthetic_xray(label, rng, size=96), "L").save(root / label / f"{label}{i}.png")
    (root / "COVID" / "zero.png").write_bytes(b"")
    (root / "NORMAL" / "text.png").write_text("not an image")
    labels_csv = tmp_path / "labels.csv"
    data.scan_dataset(root).to_csv(labels_csv, index=False)
    small = {"batch_size": 2, "engine": "openvino", "progress": False}
    X_here, here = features.extract_dataset(labels_csv, root, MODEL, "none", tmp_path / "here",
                                            max_bad_fraction=0.5, **small)
    with executor.connect(address) as cluster:
        X_there, there = features.extract_dataset(labels_csv, root, MODEL, "none", tmp_path / "there",
                                                  max_bad_fraction=0.5, cluster=cluster, shard_batches=1, **small)
        assert len(here["bad_images"]) == 2 and there["bad_images"] == here["bad_images"]
        assert X_there.tobytes() == X_here.tobytes()
        # over the limit: the same error, stopped after the same batch
        errors = []
        for run in ({}, {"cluster": cluster, "shard_batches": 1}):
            with pytest.raises(features.BadInputError) as caught:
                features.extract_dataset(labels_csv, root, MODEL, "none", tmp_path / "stop", max_bad_fraction=0.05,
                                         **small, **run)
            errors.append(str(caught.value))
        assert errors[0] == errors[1] and "stopped after" in errors[0]
        # a folder the workers cannot see is named, with the worker, before any work
        with pytest.raises(executor.SchedulerError, match=r"worker tcp://127\.0\.0\.1:\d+ on host .*nowhere"):
            executor.check_readable(cluster.client, [tmp_path / "nowhere"])


@pytest.mark.dask
def test_a_worker_killed_mid_extraction_costs_only_its_tasks(dask_cluster, demo_data, tmp_path):
    """Runs last: it leaves the cluster with one worker."""
    address, workers = dask_cluster
    root, labels_csv, folder = demo_data
    with executor.connect(address) as cluster:
        client = cluster.client
        by_name = {w["name"]: addr for addr, w in client.scheduler_info(n_workers=-1)["workers"].items()}
        result = {}

        def extract():
            try:
                result["features"] = features.extract_dataset(labels_csv, root, MODEL, "none", tmp_path,
                                                              cluster=cluster, shard_batches=1, **EXTRACTION)
            except BaseException as exc:  # reported by the assertion below
                result["error"] = exc

        thread = threading.Thread(target=extract)
        thread.start()
        victim, deadline = None, time.monotonic() + 120
        while victim is None and thread.is_alive() and time.monotonic() < deadline:
            processing = client.processing()
            finished = sum(len(keys) for keys in client.has_what().values())
            for i, process in enumerate(workers):
                addr = by_name.get(f"worker{i}")
                if finished >= 1 and processing.get(addr):  # a shard done somewhere, this one busy
                    victim = (process, addr, finished)
                    process.send_signal(signal.SIGKILL)
                    break
            time.sleep(0.02)
        thread.join(timeout=300)
        assert victim is not None, "the extraction ended before a worker could be killed"
        assert "error" not in result, result.get("error")
        process, addr, finished = victim
        assert process.wait(timeout=30) == -signal.SIGKILL
        assert finished < 19  # 150 images in 19 shards of 8: killed mid-extraction
        assert addr not in cluster.workers()
    assert (tmp_path / f"{MODEL}.npy").read_bytes() == (folder / "here" / f"{MODEL}.npy").read_bytes()
    computed_by = {s["worker"] for s in _sidecar(tmp_path)["computed_by"]}
    assert computed_by - {addr}, computed_by  # the survivor did the rest
