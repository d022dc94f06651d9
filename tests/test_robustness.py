"""make's runs survive what goes wrong around them: a hung cell, two runs into one OUT, a SIGTERM.

Each test runs ``make`` in a copy of the project (its Makefile, notebooks, ``src/`` and
configuration; ``.venv`` linked to this project's) on a tiny demo dataset of 12 images of 64 px,
so that an edit under way in this working tree never reaches a run, and a notebook can be edited
for the test alone. ``PYTHONPATH`` points at the copy's ``src/``, ahead of the editable install.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from cxrcluster import demo
from cxrcluster.paths import PROJECT_ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(shutil.which("flock") is None, reason="util-linux flock absent")]

PARTS = ("Makefile", "notebooks", "src", "config", "requirements.txt", "requirements-source.txt", "pyproject.toml")
MODEL = "MobileNetV2-0.35"


def copy_project(root: Path) -> Path:
    """Copy the project's sources into ``root``; its ``.venv`` is this project's, and up to date."""
    root.mkdir()
    for part in PARTS:
        source = PROJECT_ROOT / part
        if source.is_dir():
            shutil.copytree(source, root / part, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, root / part)
    (root / ".venv").symlink_to(PROJECT_ROOT / ".venv", target_is_directory=True)
    # The venv's stamp is the real one: requirements older than it keep make from reinstalling.
    installed = (root / ".venv" / ".installed").stat().st_mtime
    for name in ("requirements.txt", "requirements-source.txt", "pyproject.toml"):
        os.utime(root / name, (installed - 60, installed - 60))
    return root


def make_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env["PYTHONPATH"] = str(root / "src")
    return env


def make_args(out: Path, data: Path, *goals: str, **variables: str) -> list[str]:
    settings = {"OUT": str(out), "DATA_DIR": str(data), "WEIGHTS": "none", "MODELS": MODEL, **variables}
    return ["make", "--no-print-directory", *goals, *(f"{k}={v}" for k, v in settings.items())]


def start(root: Path, args: list[str], log: Path) -> subprocess.Popen:
    """Start make in its own process group (so that a signal reaches all of it), output into ``log``."""
    with open(log, "w") as fh:
        return subprocess.Popen(args, cwd=root, env=make_env(root), stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def leftovers(out: Path) -> list[str]:
    """Temporary files under ``out``: make's (``*.tmp``, ``*.<pid>.tmp``) and the atomic module's."""
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if ".tmp" in p.name)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return copy_project(tmp_path_factory.mktemp("robust") / "project")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return demo.write_demo_dataset(tmp_path_factory.mktemp("data") / "demo", per_class=4, size=64)


def test_a_hung_cell_fails_its_step_within_the_timeout_and_leaves_no_output(tmp_path, tiny):
    root = copy_project(tmp_path / "project")
    path = root / "notebooks" / "00-prepare-data.ipynb"
    nb = json.loads(path.read_text())
    nb["cells"].insert(0, {"cell_type": "code", "execution_count": None, "id": "hang", "metadata": {}, "outputs": [],
                           "source": ["import time\n", "time.sleep(600)\n"]})
    path.write_text(json.dumps(nb, indent=1))
    out = tmp_path / "out"
    started = time.monotonic()
    proc = subprocess.run(make_args(out, tiny, "audit", NOTEBOOK_TIMEOUT="5"), cwd=root, env=make_env(root),
                          capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - started
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    assert elapsed < 120, elapsed
    assert "--execution-timeout 5" in output and "timed out" in output.lower(), output[-3000:]
    assert not (out / "original_labels.csv").exists() and not (out / "reports" / "dataset.json").exists()
    assert leftovers(out) == []


def test_a_second_run_into_the_same_out_refuses_and_a_killed_runs_lock_is_taken_over(tmp_path, project, tiny):
    out = tmp_path / "out"
    lock = out / ".make" / "lock"

    # A run killed outright (SIGKILL to its whole process group) while it holds the lock, in a notebook.
    killed_log = tmp_path / "killed.log"
    killed = start(project, make_args(out, tiny, "audit"), killed_log)
    wait_for(lambda: "00-prepare-data" in killed_log.read_text(), 120, "the killed run's first notebook")
    assert f"process {killed.pid} " in lock.read_text()
    os.killpg(killed.pid, signal.SIGKILL)
    assert killed.wait(timeout=30) == -signal.SIGKILL

    # The next run takes the lock over (the kernel released it with the killed processes) and says so.
    first_log = tmp_path / "first.log"
    first = start(project, make_args(out, tiny, "audit"), first_log)
    try:
        wait_for(lambda: f"process {first.pid} " in (lock.read_text() if lock.exists() else ""), 60, "the lock")
        # A second run into the same OUT, while the first holds the lock: refused, naming both.
        second = subprocess.run(make_args(out, tiny, "audit"), cwd=project, env=make_env(project),
                                capture_output=True, text=True, timeout=60)
        assert second.returncode != 0
        assert str(lock) in second.stderr and f"process {first.pid} " in second.stderr, second.stderr
        assert "another run" in second.stderr
        assert first.wait(timeout=600) == 0, first_log.read_text()[-3000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    log = first_log.read_text()
    assert "taking over" in log and f"process {killed.pid} " in log, log[:2000]
    # The first run finished as if alone; the refused run touched nothing, and the lock is free again.
    assert len(pd.read_csv(out / "original_labels.csv")) == 12
    assert (out / "reports" / "audit" / "confound.json").is_file()
    assert lock.read_text() == "" and leftovers(out) == []
    assert subprocess.run(["flock", "-n", str(lock), "true"]).returncode == 0


def test_the_lock_leaves_help_dry_runs_and_development_goals_alone(tmp_path, project, tiny):
    out = tmp_path / "out"
    lock = out / ".make" / "lock"
    (out / ".make").mkdir(parents=True)
    lock.write_text("process 1 (make audit)\n")
    with open(lock) as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # this process holds the lock now
        refused = subprocess.run(make_args(out, tiny, "audit"), cwd=project, env=make_env(project),
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0 and "process 1 (make audit)" in refused.stderr
        for args in (["help"], ["-n", "audit"]):
            proc = subprocess.run(make_args(out, tiny, *args), cwd=project, env=make_env(project),
                                  capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0 and "holds the lock" not in proc.stderr, proc.stderr
        assert "00-prepare-data" in proc.stdout  # make -n prints the steps it would run


def test_sigterm_during_clustering_leaves_nothing_half_done_and_a_rerun_matches(tmp_path, project, tiny):
    reference, cut = tmp_path / "reference", tmp_path / "cut"
    env = make_env(project)
    features = subprocess.run(make_args(reference, tiny, "features"), cwd=project, env=env,
                              capture_output=True, text=True, timeout=900)
    assert features.returncode == 0, (features.stdout + features.stderr)[-3000:]
    shutil.copytree(reference, cut, symlinks=True)  # the same features, times kept: only clustering is left
    uninterrupted = subprocess.run(make_args(reference, tiny, "cluster"), cwd=project, env=env,
                                   capture_output=True, text=True, timeout=900)
    assert uninterrupted.returncode == 0, (uninterrupted.stdout + uninterrupted.stderr)[-3000:]

    log = tmp_path / "cut.log"
    proc = start(project, make_args(cut, tiny, "cluster"), log)

    def clustering_started() -> bool:
        text = log.read_text()
        assert proc.poll() is None, text[-3000:]
        # the cell running the suite (papermill counts the injected parameters cell too)
        return "03-cluster" in text and "Executing Cell 8" in text.split("03-cluster", 1)[1]

    wait_for(clustering_started, 300, "03-cluster's suite")
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    time.sleep(3)  # the kernel (its own session) ends within a second of papermill: ipykernel's parent poller
    assert leftovers(cut) == []
    assert not (cut / "results" / f"{MODEL}.csv").exists(), log.read_text()[-3000:]

    again = subprocess.run(make_args(cut, tiny, "cluster"), cwd=project, env=env, capture_output=True, text=True,
                           timeout=900)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert "03-cluster" in again.stdout and "02-extract-features" not in again.stdout
    expected = pd.read_csv(reference / "results" / f"{MODEL}.csv").drop(columns="wall_time_s")
    found = pd.read_csv(cut / "results" / f"{MODEL}.csv").drop(columns="wall_time_s")
    pd.testing.assert_frame_equal(found, expected)
    assert leftovers(cut) == []
