"""Where extraction and clustering run: in this process, on a local Dask cluster, or on a Dask scheduler.

One value says where, the ``SCHEDULER`` make variable or the notebooks'
``scheduler`` parameter (:func:`parse`):

- empty (and ``DASK_SCHEDULER_ADDRESS`` unset): in this process, as always.
  Nothing of Dask is imported and no process is started.
- ``local:N``: a ``dask.distributed.LocalCluster`` of ``N`` worker processes
  on this machine, one thread each, started for the run and stopped after it.
- ``tcp://host:8786`` (or ``host:8786``), or the same in
  ``DASK_SCHEDULER_ADDRESS`` (Dask's own convention): an existing Dask
  scheduler and its workers (``dask scheduler`` / ``dask worker``,
  dask-jobqueue, Kubernetes).

The work is split into tasks that Dask schedules, re-running those of a worker
that dies: a shard of images per extraction task
(:func:`cxrcluster.features.extract_features`), one fit per algorithm and seed
for clustering (:func:`cxrcluster.clustering.run_suite`). The client gathers
the results and writes every file itself, so workers need to read the images
only: the data folder at the same path as here, which :func:`connect` checks
on every worker before any work. Results are the same as in this process
(tested byte for byte on one machine); which worker computed what is recorded,
since another CPU can change the last bits of a float.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

#: The environment variable Dask itself reads for a scheduler's address.
ENVIRONMENT_VARIABLE = "DASK_SCHEDULER_ADDRESS"

#: Seconds to wait for a scheduler to answer, and for its first worker.
CONNECT_TIMEOUT_S = 10.0

IN_PROCESS = "local"
"""The executor recorded for work done in this process."""


class SchedulerError(RuntimeError):
    """The scheduler asked for cannot be used: a malformed value, no answer, no worker, or unseen data."""


@dataclass(frozen=True)
class Where:
    """Where the work runs (:func:`parse`).

    Attributes
    ----------
    workers : int or None
        Worker processes of a local cluster; None otherwise.
    address : str or None
        The scheduler's address; None for this process or a local cluster.
    """

    workers: int | None = None
    address: str | None = None

    @property
    def in_process(self) -> bool:
        return self.workers is None and self.address is None

    @property
    def label(self) -> str:
        """``local`` (this process), ``local:N`` or the scheduler's address, as the sidecars record it."""
        if self.address:
            return self.address
        return IN_PROCESS if self.workers is None else f"local:{self.workers}"


def parse(value: str | None = None, environ: os._Environ | dict | None = None) -> Where:
    """Read a ``SCHEDULER`` value, falling back on ``DASK_SCHEDULER_ADDRESS``.

    Parameters
    ----------
    value : str, optional
        Empty or None (then the environment decides), ``local:N`` or a
        scheduler address (``tcp://host:port``, ``tls://host:port`` or
        ``host:port``, read as tcp).
    environ : mapping, optional
        The environment (default: ``os.environ``).

    Raises
    ------
    SchedulerError
        A value that is none of these.
    """
    environ = os.environ if environ is None else environ
    source = "SCHEDULER"
    text = (value or "").strip()
    if not text:
        text, source = environ.get(ENVIRONMENT_VARIABLE, "").strip(), ENVIRONMENT_VARIABLE
    if not text:
        return Where()
    local = re.fullmatch(r"local:(\d+)", text)
    if local:
        workers = int(local.group(1))
        if workers < 1:
            raise SchedulerError(f"{source}={text}: a local cluster needs at least one worker")
        return Where(workers=workers)
    if re.fullmatch(r"(tcp|tls|inproc|ucx)://\S+", text):
        return Where(address=text)
    if re.fullmatch(r"[\w.\-]+:\d+|\[[0-9a-fA-F:]+\]:\d+", text):
        return Where(address=f"tcp://{text}")
    raise SchedulerError(f"{source}={text!r} is not a place to run: leave it empty (this process), give local:N "
                         "(N worker processes on this machine) or a Dask scheduler's address (tcp://host:8786)")


@dataclass
class Cluster:
    """A connected Dask client and where it runs (what :func:`connect` yields).

    Attributes
    ----------
    client : dask.distributed.Client
    label : str
        :attr:`Where.label`, recorded in the sidecars.
    """

    client: object
    label: str

    def workers(self) -> list[str]:
        """The addresses of the workers connected now."""
        return sorted(self.client.scheduler_info(n_workers=-1)["workers"])


@contextmanager
def connect(value: str | None = None, *, readable: Iterable[str | os.PathLike] = (),
            timeout: float = CONNECT_TIMEOUT_S) -> Iterator[Cluster | None]:
    """Connect to where the work runs, check that the workers see the data, and disconnect after.

    Parameters
    ----------
    value : str, optional
        See :func:`parse`.
    readable : iterable of path-like
        Files or folders every worker must be able to read at the same path
        (the data folder, an image or two), checked before any work
        (:func:`check_readable`).
    timeout : float
        Seconds to wait for a scheduler to answer and for its first worker.

    Yields
    ------
    Cluster or None
        None when the work runs in this process.

    Raises
    ------
    SchedulerError
        A malformed value, a scheduler that does not answer within
        ``timeout``, a scheduler without workers, or a worker that cannot
        read one of ``readable``.
    """
    where = parse(value)
    if where.in_process:
        yield None
        return
    from dask.distributed import Client, LocalCluster

    local = None
    if where.workers is not None:
        # one thread per worker: the clustering fits are single-threaded for reproducibility, and a
        # worker's extraction uses the engine's own threads
        local = LocalCluster(n_workers=where.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                             dashboard_address=None, silence_logs=logging.ERROR)
        client = Client(local)
    else:
        client = _client(Client, where.address, timeout)
    try:
        try:
            client.wait_for_workers(1, timeout=timeout)
        except TimeoutError:
            raise SchedulerError(f"the Dask scheduler at {where.label} has no worker after {timeout:g} s; "
                                 "start some (dask worker ADDRESS)") from None
        check_readable(client, readable)
        yield Cluster(client, where.label)
    finally:
        client.close()
        if local is not None:
            local.close()


def _client(Client, address: str, timeout: float):
    """A client of the scheduler at ``address``, or :class:`SchedulerError` within about ``timeout`` seconds.

    Dask's own timeout covers connecting, not a peer that accepts the
    connection and never answers (a wrong port, a stuck proxy): there the
    client waits for ever, so it is made in a thread given ``timeout`` plus a
    grace period, and abandoned after it.
    """
    made: dict = {}

    def make() -> None:
        try:
            made["client"] = Client(address, timeout=f"{timeout}s")
        except Exception as exc:  # reported below
            made["error"] = exc

    thread = threading.Thread(target=make, name="dask-client", daemon=True)
    thread.start()
    thread.join(timeout + 5)
    if "client" in made:
        return made["client"]
    reason = _one_line(made["error"]) if "error" in made else "no answer"
    raise SchedulerError(f"cannot reach the Dask scheduler at {address} within {timeout:g} s ({reason}). "
                         f"Start one (dask scheduler), check the address, or unset SCHEDULER and "
                         f"{ENVIRONMENT_VARIABLE} to run in this process")


def check_readable(client, paths: Iterable[str | os.PathLike]) -> None:
    """Check that every connected worker can read ``paths`` at the same path as this process.

    Raises
    ------
    SchedulerError
        Naming each worker (its address and host) and each path it cannot read, with the reason.
    """
    wanted = [os.path.abspath(p) for p in paths]
    if not wanted:
        return
    answers = client.run(unreadable, wanted)
    problems = [f"  worker {address} on host {answer['host']}: {path}: {reason}"
                for address, answer in sorted(answers.items()) for path, reason in answer["unreadable"]]
    if problems:
        raise SchedulerError("some Dask workers cannot read the data at the path this process uses; the data "
                             "folder must be on a file system the workers share, at the same path:\n"
                             + "\n".join(problems))


def unreadable(paths: Sequence[str]) -> dict:
    """On a worker: which of ``paths`` this process cannot read, and why, with the host's name."""
    missing = []
    for path in paths:
        p = Path(path)
        if not p.exists():
            missing.append((path, "does not exist here"))
        elif not os.access(p, os.R_OK | (os.X_OK if p.is_dir() else 0)):
            missing.append((path, "is not readable here"))
    return {"host": socket.gethostname(), "unreadable": missing}


def worker_description() -> dict:
    """The worker running the calling task (its address, host and CPU), or this process's host and CPU."""
    from cxrcluster import engines

    cpu = engines.describe_cpu()
    described = {"worker": IN_PROCESS, "host": socket.gethostname(), "cpu": cpu["cpu"], "flags": cpu["flags"]}
    try:
        from distributed import get_worker

        described["worker"] = get_worker().address
    except (ImportError, ValueError):  # not on a Dask worker
        pass
    return described


def completed(cluster: Cluster, futures: Sequence, *, desc: str, units: Sequence[int] | None = None,
              unit: str = "task", progress: bool = True) -> Iterator[int]:
    """Yield the index of each future as it completes, with a progress bar over them.

    ``units`` weighs each future in the bar (images of a shard); by default one each.
    A future whose task failed raises its exception when its result is asked for.
    """
    import sys

    from dask.distributed import as_completed
    from tqdm.auto import tqdm

    index = {future.key: i for i, future in enumerate(futures)}
    weights = list(units) if units is not None else [1] * len(futures)
    with tqdm(total=sum(weights), desc=f"{desc} on {cluster.label}", unit=unit, disable=not progress,
              mininterval=2.0, file=sys.stdout) as bar:
        for future in as_completed(futures):
            i = index[future.key]
            bar.update(weights[i])
            yield i


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
