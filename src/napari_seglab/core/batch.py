"""Batch prediction over a folder of TIFFs, in-process or on a Dask cluster.

:func:`run_batch` is a generator: it yields :class:`~.events.FileDone` per
finished file (and :class:`~.events.Message` lines) and returns a
:class:`BatchSummary`. Per input ``<stem>.tif`` it writes, under the output
folder (mirroring sub-folders): ``<stem>_labels.tif`` (the image's axes
without C), optionally ``<stem>_probabilities.tif`` (float32, C first) and
``<stem>_objects.csv`` (one row per object); plus ``manifest.csv`` (see
:mod:`.manifest`) and ``summary.csv`` (one row per image) for the run.

Each file is one task of :func:`process_file`, a module-level function that
workers import; it returns a small dict, never arrays. Each process loads the
model once and keeps it between tasks. A one-worker local cluster runs its
worker as a thread of this process (no start-up cost); more workers are
processes. With ``workers=0`` (or ``scheduler="sync"``) the files run one
after another in this process, without Dask.

Dask's local cluster starts worker processes with the ``spawn`` method, which
re-imports the calling script: scripts calling :func:`run_batch` need an
``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlparse

from . import manifest as mf
from .errors import InputError
from .events import FileDone, Message
from .io import ensure_not_input, read_image, restore_singletons, scan_folder, write_csv, write_tiff
from .paths import resolved

__all__ = ["BatchSummary", "FileTask", "process_file", "run_batch"]


@dataclass(frozen=True)
class BatchSummary:
    """What :func:`run_batch` returns. ``ok + failed + skipped < total`` after a stop."""

    total: int
    ok: int
    failed: int
    skipped: int
    seconds: float
    manifest: str
    summary_csv: str
    output_dir: str


@dataclass(frozen=True)
class FileTask:
    """One file's work, sent to a worker (plain, picklable fields).

    ``outputs`` maps kind (``labels``, ``probabilities``, ``objects``) to an
    absolute path. ``host_threads`` maps a worker host to the Dask threads
    running there, so each worker can give torch its share of the cores.
    """

    index: int
    input: str
    rel: str
    outputs: dict
    model: str
    device: str = "auto"
    tile: int | None = None
    overlap: float = 0.25
    split_instances: bool = False
    measurements: bool = True
    host_threads: dict | None = None


# ----------------------------------------------------------------------------- worker side

_MODELS: dict = {}
_MODELS_LOCK = threading.Lock()
_LOADS = [0]


def model_loads() -> int:
    """How many times this process has loaded a model for batch work (a diagnostic)."""
    return _LOADS[0]


def usable_cpus() -> int:
    """CPU cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _on_dask_worker(task: FileTask) -> tuple[str, int | None]:
    """(device, torch threads) for this task when running on a Dask worker, else (device, None)."""
    if "distributed" not in sys.modules:  # not imported: certainly not on a worker
        return task.device, None
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:
        return task.device, None
    threads = None
    if task.host_threads is not None:  # a worker process of its own: give torch its share of the cores
        share = task.host_threads.get(urlparse(worker.address).hostname) or worker.state.nthreads
        threads = max(1, usable_cpus() // max(1, share))
    device = task.device
    if device in ("auto", "cuda"):
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count > 1 and isinstance(worker.name, int):
            device = f"cuda:{worker.name % count}"  # one GPU per local worker
    return device, threads


def _cached_model(path: str, device: str):
    """The model of ``path`` on ``device``, loaded once per process (one model kept)."""
    from .predict import load_model

    st = os.stat(path)
    key = (os.path.abspath(path), st.st_mtime_ns, st.st_size, device)
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS.clear()
            _MODELS[key] = load_model(path, device)
            _LOADS[0] += 1
        return _MODELS[key]


def process_file(task: FileTask, stop: threading.Event | None = None) -> dict:
    """Predict one file and write its outputs; never raises for a bad file.

    Returns ``{"status": "ok"|"failed"|"stopped", "error", "seconds",
    "written": [kinds], "summary": dict, "started", "finished"}``: small
    enough to send back from a worker. All writes are atomic, so an output
    either is complete or is not there.
    """
    from .instances import summarize_objects
    from .predict import predict_image, run_to_completion

    started, t0 = mf.now_iso(), time.perf_counter()
    result = {"status": "failed", "error": "", "written": [], "summary": {}, "started": started}
    try:
        device, threads = _on_dask_worker(task)
        if threads is not None:
            import torch

            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
        lm = _cached_model(task.model, device)
        img = read_image(task.input)
        pred = run_to_completion(predict_image(lm, img.data, img.axes, tile=task.tile, overlap=task.overlap,
                                               probabilities="probabilities" in task.outputs,
                                               split_instances=task.split_instances, stop=stop))
        if pred.stopped:
            result["status"] = "stopped"
            return result
        lab_axes = img.axes.replace("C", "")
        out = task.outputs
        Path(out["labels"]).parent.mkdir(parents=True, exist_ok=True)
        protect = [task.input]
        labels, file_axes = restore_singletons(mf.compact_labels(pred.labels), lab_axes, img.file_axes)
        write_tiff(out["labels"], labels, axes=file_axes, protect=protect)
        written = ["labels"]
        if "probabilities" in out and pred.probabilities is not None:
            probs = pred.probabilities.reshape(pred.probabilities.shape[:1] + labels.shape)
            write_tiff(out["probabilities"], probs, axes="C" + file_axes, protect=protect)
            written.append("probabilities")
        if task.measurements:
            rows = mf.measure_labels(pred.labels, img.data, img.axes)
            columns = None if rows else mf.object_columns(img.data, img.axes)
            write_csv(out["objects"], rows, columns=columns, protect=protect)
            written.append("objects")
        else:
            rows = mf.per_plane(mf.area_rows, pred.labels, None, lab_axes)
        result.update(status="ok", written=written, summary=summarize_objects(rows))
    except InputError as exc:
        result["error"] = str(exc)
    except Exception as exc:  # noqa: BLE001 - one file's failure must not end the run
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        result["seconds"] = time.perf_counter() - t0
        result["finished"] = mf.now_iso()
    return result


# ----------------------------------------------------------------------------- running


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


def _open_client(workers: int | None, scheduler: str | None, n_files: int, device: str):
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
        try:
            if is_file:
                client = Client(scheduler_file=scheduler, timeout="20s")
            else:
                client = Client(scheduler, timeout="20s")
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


def _dask_results(client, tasks: list[FileTask], stop: threading.Event | None, processes: bool
                  ) -> Iterator[Message | tuple[FileTask, dict]]:
    """Submit tasks a window at a time; yield (task, result) as each completes.

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

    def collect(futures) -> Iterator[Message | tuple[FileTask, dict]]:
        for fut in futures:
            task = running.pop(fut)
            if fut.cancelled():  # not by us: the scheduler went away; the file is redone on resume
                yield Message(f"{task.rel}: cancelled by the Dask cluster; not recorded", "warning")
                continue
            try:
                yield task, fut.result()
            except Exception as exc:  # noqa: BLE001 - recorded as this file's failure
                yield task, _failure(exc)

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


def _local_results(tasks: list[FileTask], stop: threading.Event | None) -> Iterator[tuple[FileTask, dict]]:
    for task in tasks:
        if stop is not None and stop.is_set():
            return
        yield task, process_file(task, stop=stop)


def run_batch(model: str, input_dir: str, output_dir: str, *, pattern: str = "*.tif", recursive: bool = False,
              probabilities: bool = False, measurements: bool = True, skip_existing: bool = False,
              workers: int | None = None, scheduler: str | None = None, device: str = "auto",
              tile: int | None = None, overlap: float = 0.25, stop: threading.Event | None = None
              ) -> Generator[FileDone | Message, None, BatchSummary]:
    """Predict every TIFF of a folder; yields FileDone per finished file, returns a BatchSummary.

    ``workers=None`` with no ``scheduler``: a local Dask cluster of
    :func:`auto_workers` workers; ``workers=N``: N local workers (one: a
    thread of this process; more: processes, see :func:`_open_client`);
    ``workers=0`` or ``scheduler="sync"``: in this process, no Dask;
    ``scheduler="tcp://HOST:PORT"`` (or a scheduler file): an existing
    cluster whose workers see the same paths. ``skip_existing``: files whose
    manifest row says ok and whose outputs exist are skipped. Binary semantic
    models write objects (connected foreground, split where touching);
    multi-class models write class labels. ``stop`` returns after the files
    already running finish; their outputs and rows are kept.
    """
    from .checkpoint import describe_checkpoint, load_checkpoint

    t0 = time.perf_counter()
    if workers is not None and scheduler is not None:
        raise InputError("give either a number of workers or a scheduler address, not both")
    if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 0):
        raise InputError(f"workers must be a whole number >= 0; got {workers!r}")
    if workers is not None and workers > max_workers():
        raise InputError(f"{workers} workers is more than this machine can run usefully ({max_workers()}: one "
                         "per CPU core or GPU); use fewer")
    if not 0 <= overlap < 1:
        raise InputError(f"tile overlap must lie in [0, 1); got {overlap}")
    in_dir, out_dir = mf.check_folders(input_dir, output_dir)
    model = str(resolved(model))
    ckpt = load_checkpoint(model)
    ckpt.build("cpu")  # weights that do not fit the recorded model: refuse once, not once per file
    spec = ckpt.spec
    split = spec.semantic and ckpt.label_mode != "instances" and spec.n_classes == 2
    files = scan_folder(in_dir, pattern, recursive)
    if in_dir in out_dir.parents:  # outputs inside the input folder are never inputs
        files = [p for p in files if out_dir not in p.parents and out_dir not in p.resolve().parents]
    if not files:
        raise InputError(f"no files matching {pattern!r} in {input_dir}" + ("" if recursive else
                         " (sub-folders are not searched; use recursive)"))
    plan = mf.plan_outputs(in_dir, out_dir, files, probabilities=probabilities and spec.semantic,
                           measurements=measurements)
    manifest, summary_csv = out_dir / mf.MANIFEST_NAME, out_dir / mf.SUMMARY_NAME
    ensure_not_input(manifest, files)
    ensure_not_input(summary_csv, files)
    description = describe_checkpoint(ckpt)
    del ckpt

    # read what earlier runs recorded: kept for every file this run does not redo (never truncated)
    previous = mf.read_manifest(manifest)
    previous_summary = mf.read_summary(summary_csv)
    model_id = mf.model_stamp(model)
    rows: dict[str, dict] = {}
    summaries: dict[str, dict] = {}
    skipped_events: list[FileDone] = []
    tasks: list[FileTask] = []
    stamps: dict[str, tuple[str, str]] = {}
    for index, (path, rel, outs) in enumerate(plan):
        try:
            stamp = stamps[rel] = mf.input_stamp(path)
        except OSError:  # gone since the scan: the task fails on its own
            stamp = stamps[rel] = ("", "")
        if skip_existing and mf.is_complete(previous.get(rel), outs, out_dir, stamp, model_id):
            try:
                summaries[rel] = mf.summary_of_outputs(outs)
            except (OSError, ValueError, KeyError):
                pass  # an output no longer reads: redo the file
            else:
                rows[rel] = mf.file_row(rel, "skipped", outs, out_dir, stamp, model_id)
                skipped_events.append(FileDone(len(skipped_events) + 1, len(plan), str(path), "skipped",
                                               outputs={k: str(p) for k, p in outs.items()}))
                continue
        tasks.append(FileTask(index=index, input=str(path), rel=rel, outputs={k: str(p) for k, p in outs.items()},
                              model=model, device=device, tile=tile, overlap=overlap, split_instances=split,
                              measurements=measurements))

    # connect (or start the local cluster) before the output folder is touched: a cluster that
    # cannot be reached leaves every file there as it was
    client = cluster = None
    local = workers == 0 or scheduler == "sync"
    if tasks and not local and not (stop is not None and stop.is_set()):
        client, cluster, where, processes = _open_client(workers, scheduler, len(tasks), device)
    writer = mf.ManifestWriter(manifest)
    results: Iterator = iter(())
    counts = {"ok": 0, "failed": 0, "skipped": len(skipped_events)}

    def merged() -> list[dict]:
        """This run's rows, and earlier rows of every file it has not redone, in input order."""
        order = [rel for _, rel, _ in plan] + [rel for rel in previous if rel not in stamps]
        return [rows.get(rel) or previous[rel] for rel in order if rel in rows or rel in previous]

    try:
        mf.make_folder(out_dir)
        writer.start(merged())
        yield Message(f"model: {description}")
        yield from skipped_events
        if not tasks or (stop is not None and stop.is_set()):
            pass
        elif local:
            yield Message(f"{len(tasks)} file(s) to predict in this process")
            results = _local_results(tasks, stop)
        else:
            yield Message(f"{len(tasks)} file(s) to predict {where}")
            results = _dask_results(client, tasks, stop, processes)
        done = len(skipped_events)
        base_of = {rel: outs for _, rel, outs in plan}
        for item in results:
            if isinstance(item, Message):
                yield item
                continue
            task, res = item
            if res["status"] not in ("ok", "failed"):
                continue  # stopped mid-file: nothing written for it
            outs = {k: base_of[task.rel][k] for k in res["written"]}
            # the input stamp as planned: an input changed meanwhile is redone on resume
            rows[task.rel] = mf.file_row(task.rel, res["status"], outs, out_dir, stamps[task.rel], model_id, **{
                k: res[k] for k in ("error", "seconds", "started", "finished")})
            writer.append(rows[task.rel])
            if res["status"] == "ok":
                summaries[task.rel] = res["summary"]
            counts[res["status"]] += 1
            done += 1
            yield FileDone(done, len(plan), task.input, res["status"], res["error"], res["seconds"],
                           {k: str(p) for k, p in outs.items()})
    finally:
        if hasattr(results, "close"):
            results.close()  # cancels the futures still out
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
        _MODELS.clear()  # models loaded in this process (no Dask, or a worker thread)
        if writer.started:
            final_rows = merged()
            writer.finish(final_rows)
            summary_rows = []
            for row in final_rows:
                rel = row["input"]
                if rel in summaries:
                    summary_rows.append({"input": mf.quote_name(rel), **summaries[rel]})
                elif rel not in rows and rel in previous_summary:  # an earlier run's file, not redone
                    summary_rows.append(previous_summary[rel])
            write_csv(summary_csv, summary_rows, columns=None if summary_rows else mf.SUMMARY_COLUMNS)
    return BatchSummary(total=len(plan), ok=counts["ok"], failed=counts["failed"], skipped=counts["skipped"],
                        seconds=time.perf_counter() - t0, manifest=str(manifest), summary_csv=str(summary_csv),
                        output_dir=str(out_dir))


def max_workers() -> int:
    """The most local workers a run may ask for: one per CPU core, or per GPU where there are more."""
    try:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:  # pragma: no cover - torch is a dependency
        gpus = 0
    return max(usable_cpus(), gpus, 1)
