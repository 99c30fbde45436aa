"""Batch work on Dask: a local cluster or an existing scheduler, tasks submitted a window at a time.

A local cluster of one worker runs it as a thread of this process (no start-up
cost); more workers are processes. Dask's local cluster starts worker
processes with the ``spawn`` method, which re-imports the calling script:
scripts calling :func:`~napari_seglab.core.batch.iter_run_batch` need an
``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlparse

from ..errors import InputError
from ..events import Message
from . import _manifest as mf
from ._task import FileTask, TaskDone, process_file, usable_cpus


def auto_workers(n_files: int, device: str = "auto") -> int:
    """Default number of local workers: one per GPU; on the CPU one per 2 cores and 2 GiB.

    A worker process takes seconds to start (torch imports, model load), about
    what 8 files take: smaller jobs get fewer workers (one is a thread).
    """
    import psutil
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        return max(1, min(n_files, torch.cuda.device_count()))
    return max(1, min(n_files // 8, usable_cpus() // 2, psutil.virtual_memory().total // 2**31))


def open_client(workers: int | None, scheduler: str | None, n_files: int, device: str):
    """(client, cluster or None, description, processes) for the Dask modes.

    A local cluster of one worker runs it as a thread of this process: torch
    releases the GIL, and a worker process would only add its start-up (torch
    imports and a model load, seconds) to the run. Several local workers are
    processes with one Dask thread each and torch threads = cores / workers,
    so Python-bound steps (reading, watershed, measuring) run in parallel too.
    """
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        is_file = Path(scheduler).is_file()
        # how long to try: Dask's own setting (DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT), 30 s by default
        timeout = dask.config.get("distributed.comm.timeouts.connect")
        try:
            if is_file:
                client = Client(scheduler_file=scheduler, timeout=timeout)
            else:
                client = Client(scheduler, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - every way of failing to connect is the address's fault
            what = "a Dask scheduler file" if is_file else "the Dask scheduler"
            first = (str(exc).splitlines() or [""])[0][:200]
            raise InputError(f"could not connect to {what} {scheduler} ({type(exc).__name__}: {first}); "
                             "nothing was written") from exc
        return client, None, f"on the Dask scheduler {scheduler}", True
    n = workers or auto_workers(n_files, device)
    # A file that kills its worker (out of memory) fails after two deaths instead of four;
    # one retry spares a file that merely waited in the dead worker's queue. The task
    # profiler (every 10 ms) and fast ticks wake Dask's event loop, which then competes
    # for the GIL with the worker's Python steps: a few percent of a run on 2 cores.
    processes = n > 1
    quiet = {"distributed.scheduler.allowed-failures": 1, "distributed.worker.profile.enabled": False,
             "distributed.admin.system-monitor.gil.enabled": False, "distributed.admin.tick.interval": "500ms",
             "distributed.admin.system-monitor.interval": "5s"}
    with dask.config.set(quiet):  # a worker thread gets no memory limit: it must never pause this process
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=processes, dashboard_address=":0",
                               **({} if processes else {"memory_limit": 0}))
    try:
        client = Client(cluster)
    except BaseException:
        cluster.close()
        raise
    where = (f"on a local Dask cluster of {n} worker processes x {max(1, usable_cpus() // n)} torch thread(s)"
             if processes else "in this process (one Dask worker thread)")
    return client, cluster, where, processes


def _layout(client) -> tuple[int, dict[str, int]]:
    """(total Dask threads, {host: threads on that host}) of the connected workers."""
    hosts: dict[str, int] = {}
    for address, nthreads in client.nthreads().items():
        host = urlparse(address).hostname or address
        hosts[host] = hosts.get(host, 0) + int(nthreads)
    return sum(hosts.values()), hosts


def _executing_keys(dask_worker=None) -> list:
    """Keys of the tasks a worker is running now (run with ``client.run``)."""
    return [ts.key for ts in dask_worker.state.executing]


def _failure(exc: BaseException) -> dict:
    from distributed import KilledWorker

    if isinstance(exc, KilledWorker):
        text = "the worker process died while predicting this file (out of memory or a crash)"
    else:
        text = f"{type(exc).__name__}: {exc}"
    now = mf.now_iso()
    return {"status": "failed", "error": text, "written": [], "summary": {}, "seconds": 0.0,
            "started": now, "finished": now}


def dask_results(client, tasks: list[FileTask], stop: threading.Event | None, processes: bool
                  ) -> Iterator[Message | TaskDone]:
    """Submit tasks a window at a time; yield a TaskDone as each completes.

    The window (two tasks per worker thread) keeps every worker busy without
    queueing the whole folder. On ``stop``: tasks not yet running are
    cancelled, running ones finish and are yielded. ``processes``: the
    workers are processes of their own, which set their torch threads.
    """
    queue = list(reversed(tasks))
    running: dict = {}
    wake = threading.Event()
    token = uuid.uuid4().hex[:8]
    threads, hosts = _layout(client)
    if threads == 0:
        yield Message("the Dask scheduler has no workers yet: files wait until workers join", "warning")
    checked = time.monotonic()

    def collect(futures) -> Iterator[Message | TaskDone]:
        for fut in futures:
            task = running.pop(fut)
            if fut.cancelled():  # not by us: the scheduler went away; the file is redone on resume
                yield Message(f"{task.rel}: cancelled by the Dask cluster; not recorded", "warning")
                continue
            try:
                yield TaskDone(task, fut.result())
            except Exception as exc:  # noqa: BLE001 - recorded as this file's failure
                yield TaskDone(task, _failure(exc))

    try:
        while queue or running:
            if time.monotonic() - checked > 2.0:
                threads, hosts = _layout(client)
                checked = time.monotonic()
            while queue and len(running) < max(2, 2 * threads) and not (stop is not None and stop.is_set()):
                task = replace(queue.pop(), host_threads=hosts if processes else None)
                fut = client.submit(process_file, task, key=f"seglab-{token}-{task.index}", pure=False)
                running[fut] = task
                fut.add_done_callback(lambda _f: wake.set())
            if stop is not None and stop.is_set():
                queue.clear()
                try:
                    busy = {k for keys in client.run(_executing_keys).values() for k in keys}
                except Exception:  # noqa: BLE001 - a worker gone: cancel everything
                    busy = set()
                idle = [f for f in running if f.key not in busy and not f.done()]
                client.cancel(idle)
                for fut in idle:
                    running.pop(fut)
                while running:
                    wake.wait(0.5)
                    wake.clear()
                    yield from collect([f for f in running if f.done()])
                return
            wake.wait(0.25)
            wake.clear()
            yield from collect([f for f in running if f.done()])
    finally:
        if running:
            client.cancel(list(running))


def max_workers() -> int:
    """The most local workers a run may ask for: one per CPU core, or per GPU where there are more."""
    try:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:  # pragma: no cover - torch is a dependency
        gpus = 0
    return max(usable_cpus(), gpus, 1)
