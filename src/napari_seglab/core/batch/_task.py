"""One file of a batch job, as a worker runs it: :class:`FileTask` in, a small dict out.

:func:`process_file` is a module-level function that Dask workers import; it
returns a small dict, never arrays. Each process loads the model once and keeps
it between tasks (:func:`_cached_model`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ..errors import InputError
from ..events import drive
from ..io import is_disk_full, read_image, restore_singletons, write_csv, write_tiff
from ..labels import compact_labels
from . import _manifest as mf
from . import _outputs as out_mod


@dataclass(frozen=True)
class FileTask:
    """One file's work, sent to a worker (plain, picklable fields).

    ``outputs`` maps kind (``labels``, ``probabilities``, ``objects``; or
    ``boxes`` alone for a box detector) to an absolute path. ``host_threads`` maps a worker host to the Dask threads
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
    tta: bool = False
    host_threads: dict | None = None
    score_threshold: float = 0.5  # detections (Mask R-CNN objects, boxes) scoring less are dropped
    runtime: str = "auto"  # what runs the network: torch, onnx or auto (see load_model)
    pixel_size: float | None = None  # µm per pixel of files that do not say (--pixel-size)
    scene: int | str | None = None  # which scene / series / position of each file (None: the first)
    channel: int | None = None  # read only this channel (None: all)
    axes: str | None = None  # the files' axes, instead of what each file says
    volume: bool = False  # z-stacks as 3D objects (see iter_predict_volume)
    anisotropy: float | None = None  # z step / pixel size for volume; None: the file's pixel size, else 1
    volume_method: str = "auto"
    block: int = 0  # block side: > 0 predicts and measures the file block by block into OME-Zarr (see _blocks)
    halo: int = 128  # pixels around a block decoded with it (block-wise files)


@dataclass(frozen=True)
class TaskDone:
    """A finished task as the runners hand it back: the task and :func:`process_file`'s dict."""

    task: FileTask
    result: dict


_MODELS: dict = {}
_MODELS_LOCK = threading.Lock()
_LOADS = [0]


def clear_models() -> None:
    """Forget the models this process loaded (the end of a run in this process)."""
    with _MODELS_LOCK:
        _MODELS.clear()


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


def _cached_model(path: str, device: str, runtime: str = "auto"):
    """The model of ``path`` on ``device`` under ``runtime``, loaded once per process (one model kept)."""
    from ..predict import load_model

    st = os.stat(path)
    key = (os.path.abspath(path), st.st_mtime_ns, st.st_size, device, runtime)
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS.clear()
            _MODELS[key] = load_model(path, device, runtime=runtime)
            _LOADS[0] += 1
        return _MODELS[key]


def _write_boxes(task: FileTask, rows: list[dict], result: dict) -> None:
    """A box detector's file: its boxes CSV (columns :data:`~napari_seglab.core.labels._boxes.BOX_COLUMNS`) and the box count."""
    from ..labels import BOX_COLUMNS

    path = Path(task.outputs["boxes"])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv(path, rows, columns=BOX_COLUMNS, protect=[task.input])
    result.update(status="ok", written=["boxes"], summary=out_mod.summarize_boxes(rows))


def process_file(task: FileTask, stop: threading.Event | None = None, *, client=None, threads: int = 0) -> dict:
    """Predict one file and write its outputs; never raises for a bad file.

    Returns ``{"status": "ok"|"failed"|"stopped", "error", "seconds",
    "written": [kinds], "summary": dict, "started", "finished"}``: small
    enough to send back from a worker. All writes are atomic, so an output
    either is complete or is not there. A task with a ``block`` side goes block by block
    (:func:`~napari_seglab.core.batch._blocks.process_blocks`; ``client``: a Dask client whose workers
    run its blocks, ``threads``: their torch threads), and the result carries its ``blocks`` note.
    """
    from ..data import pixel_size_or
    from ..objects import summarize_objects
    from ..predict import iter_predict

    started, t0 = mf.now_iso(), time.perf_counter()
    result = {"status": "failed", "error": "", "written": [], "summary": {}, "started": started}
    try:
        device, threads = _on_dask_worker(task)
        if threads is not None:
            import torch

            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
        lm = _cached_model(task.model, device, task.runtime)
        if task.block:
            from ._blocks import blocks_note, process_blocks

            result["blocks"] = blocks_note(task, result, client is not None)
            process_blocks(task, lm, result, stop, client=client, threads=threads)
            result["blocks"] = blocks_note(task, result, client is not None)
            return result
        img = read_image(task.input, scene=task.scene, channel=task.channel, axes=task.axes)
        pixel_size = pixel_size_or(img.pixel_size, task.pixel_size)
        pred = drive(iter_predict(lm, img.data, img.axes, tile=task.tile, overlap=task.overlap,
                                  probabilities="probabilities" in task.outputs,
                                  split_instances=task.split_instances, stop=stop, tta=task.tta,
                                  score_threshold=task.score_threshold, pixel_size=pixel_size,
                                  volume=task.volume, anisotropy=task.anisotropy,
                                  volume_method=task.volume_method))
        if pred.stopped:
            result["status"] = "stopped"
            return result
        if pred.kind.boxes:
            _write_boxes(task, pred.boxes, result)
            return result
        lab_axes = img.axes.replace("C", "")
        out = task.outputs
        Path(out["labels"]).parent.mkdir(parents=True, exist_ok=True)
        protect = [task.input]
        labels, file_axes = restore_singletons(compact_labels(pred.labels), lab_axes, img.file_axes)
        written = result["written"]  # kinds written so far: a failure part-way removes them
        write_tiff(out["labels"], labels, axes=file_axes, protect=protect)
        written.append("labels")
        if "probabilities" in out and pred.probabilities is not None:
            probs = pred.probabilities.reshape(pred.probabilities.shape[:1] + labels.shape)
            write_tiff(out["probabilities"], probs, axes="C" + file_axes, protect=protect)
            written.append("probabilities")
        volume = pred.anisotropy is not None  # 3D objects: measured per stack, not per plane
        if task.measurements:
            rows = out_mod.measure_labels(pred.labels, img.data, img.axes, pixel_size, volume=volume)
            columns = None if rows else out_mod.object_columns(img.data, img.axes, pixel_size, volume=volume)
            write_csv(out["objects"], rows, columns=columns, protect=protect)
            written.append("objects")
        else:
            rows = out_mod.per_plane(out_mod.area_rows, pred.labels, None, lab_axes, volume=volume)
        summary = summarize_objects(rows)
        if volume:
            summary["anisotropy"] = pred.anisotropy
        result.update(status="ok", written=written, summary=summary)
    except InputError as exc:
        result.update(error=str(exc), disk_full=is_disk_full(exc))
    except Exception as exc:  # noqa: BLE001 - one file's failure must not end the run
        result.update(error=f"{type(exc).__name__}: {exc}", disk_full=is_disk_full(exc))
    finally:
        if result["status"] != "ok":  # a file is all its outputs or none: no half set is left behind
            for kind in result["written"]:
                with contextlib.suppress(OSError):
                    if Path(task.outputs[kind]).is_dir():  # an OME-Zarr store of a block-wise file
                        shutil.rmtree(task.outputs[kind])
                    else:
                        os.unlink(task.outputs[kind])
            result["written"] = []
        result["seconds"] = time.perf_counter() - t0
        result["finished"] = mf.now_iso()
    return result
