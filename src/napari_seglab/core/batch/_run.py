"""Batch prediction over a folder of TIFFs, in-process or on a Dask cluster.

:func:`iter_run_batch` is a generator: it yields :class:`~napari_seglab.core.events.FileDone` per
finished file (and :class:`~napari_seglab.core.events.Message` lines) and returns a
:class:`BatchSummary`. Per input ``<stem>.tif`` it writes, under the output
folder (mirroring sub-folders): ``<stem>_labels.tif`` (the image's axes
without C), optionally ``<stem>_probabilities.tif`` (float32, C first) and
``<stem>_objects.csv`` (one row per object); plus ``manifest.csv`` (see
:mod:`napari_seglab.core.batch._manifest`) and ``summary.csv`` (one row per image) for the run.
A large file (every OME-Zarr input, a 2D TIFF above
:data:`~napari_seglab.core.predict.AUTO_BLOCK_PIXELS`, or every file given a ``block`` side) goes
block by block instead (:mod:`napari_seglab.core.batch._blocks`): ``<stem>_labels.ome.zarr`` (and
``<stem>_probabilities.ome.zarr``), its objects measured block by block; on Dask its blocks are tasks.

Each file is one task of :func:`~napari_seglab.core.batch._task.process_file`, a module-level
function that workers import (:mod:`napari_seglab.core.batch._task`); :mod:`napari_seglab.core.batch._dask` runs the
tasks on a Dask cluster. A one-worker local cluster runs its worker as a
thread of this process (no start-up cost); more workers are processes. With
``workers=0`` (or ``scheduler="sync"``) the files run one after another in
this process, without Dask. :func:`napari_seglab.core.api.run_batch` is the
blocking twin of :func:`iter_run_batch`.

Dask's local cluster starts worker processes with the ``spawn`` method, which
re-imports the calling script: scripts calling :func:`iter_run_batch` need an
``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..events import FileDone, Message
from ..io import (
    IMAGE_PATTERNS,
    ensure_not_input,
    is_disk_full,
    reading_note,
    resolved,
    scan_folder,
    write_csv,
)
from ..predict import DEFAULT_HALO, BatchOptions
from . import _manifest as mf
from . import _outputs as outputs
from ._dask import dask_results, max_workers, open_client
from ._task import FileTask, TaskDone, clear_models, process_file, usable_cpus


@dataclass(frozen=True)
class BatchSummary:
    """What :func:`iter_run_batch` returns. ``ok + failed + skipped < total`` after a stop."""

    total: int
    ok: int
    failed: int
    skipped: int
    seconds: float
    manifest: str
    summary_csv: str
    output_dir: str


@dataclass(frozen=True)
class _Setup:
    """A checked request: resolved folders and model, the output plan, the run's bookkeeping files."""

    in_dir: Path
    out_dir: Path
    model: str
    model_id: str
    description: str
    split: bool
    plan: list[tuple[Path, str, dict[str, Path]]]
    outputs: dict[str, dict[str, Path]]  # relative input name -> {kind: output path}, as planned
    blocks: dict[str, int] = field(default_factory=dict)  # relative input name -> block side (0: whole)

    @property
    def manifest(self) -> Path:
        return self.out_dir / mf.MANIFEST_NAME

    @property
    def summary_csv(self) -> Path:
        return self.out_dir / mf.SUMMARY_NAME


def _stopped(stop: threading.Event | None) -> bool:
    return stop is not None and stop.is_set()


def _check_request(options: BatchOptions, scheduler) -> None:
    options.check()
    workers = options.workers
    if workers is not None and scheduler is not None:
        raise InputError("give either a number of workers or a scheduler address, not both")
    if workers is not None and workers > max_workers():
        raise InputError(f"{workers} workers is more than this machine can run usefully ({max_workers()}: one "
                         "per CPU core or GPU); use fewer")


def _scan(in_dir: Path, pattern: str, recursive: bool) -> list[Path]:
    """The inputs: files matching ``pattern``, several globs separated by ``;`` (``*.tif;*.nd2``), or
    ``images`` for every file a reader takes (TIFF, ND2, LIF, CZI, and OME-Zarr folders); OME-Zarr
    stores (folders named ``*.zarr``) match a pattern as files do (``*.zarr``, ``*.ome.zarr``)."""
    patterns = [*IMAGE_PATTERNS, "*.zarr"] if pattern.strip() == "images" else \
        [p.strip() for p in pattern.split(";") if p.strip()]
    found = {p for glob in patterns for p in scan_folder(in_dir, glob, recursive)}
    found |= {p for glob in patterns for p in _zarr_stores(in_dir, glob, recursive)}
    return sorted(found)


def _zarr_stores(in_dir: Path, glob: str, recursive: bool) -> list[Path]:
    """Folders matching ``glob`` that are zarr stores (named ``*.zarr``), not hidden, not inside another store."""
    found = in_dir.rglob(glob) if recursive else in_dir.glob(glob)
    return [p for p in found if p.name.lower().endswith(".zarr") and p.is_dir() and not p.name.startswith(".")
            and not any(q.name.lower().endswith(".zarr") for q in p.relative_to(in_dir).parents if q.name)]


def _block_sides(files: list[Path], options: BatchOptions, ckpt, split: bool, reading: dict) -> dict[Path, int]:
    """Each input's block side (0: whole), refusing a request the block-wise path cannot honour."""
    from ..io import is_zarr_path
    from ._blocks import batch_refusal, block_side, reading_choices

    why_not = batch_refusal(ckpt, split)
    choices = reading_choices(*(reading.get(k) for k in ("scene", "channel", "axes")), options.volume)
    stores = [p.name for p in files if is_zarr_path(p)]
    if options.block == 0 and stores:
        raise InputError(f"block side 0: OME-Zarr inputs ({', '.join(stores[:3])}) are read block by block only; "
                         "leave the block side automatic")
    if options.block and why_not:
        raise InputError(f"a block side was given, but {why_not}")
    if options.block and choices:
        raise InputError(f"a block side was given, but {', '.join(choices)} are not available block by block yet")
    return {p: block_side(p, options.block, choices=choices, why_not=why_not) for p in files}


def _set_up(model, input_dir, output_dir, options: BatchOptions, measurements: bool,
            reading: dict | None = None) -> _Setup:
    """Folders and model resolved once, the checkpoint checked (and the options against its family), the inputs
    found, which go block by block decided, and their outputs planned. ``reading``: the scene, channel and
    axes chosen (only the whole-image path honours them)."""
    reading = reading or {}
    from ..models import describe_checkpoint, load_checkpoint
    from ..settings import check_used

    pattern, recursive, probabilities = options.pattern, options.recursive, options.probabilities
    in_dir, out_dir = mf.check_folders(input_dir, output_dir)
    model = str(resolved(model))
    from ..predict import is_package

    if is_package(model):  # a bioimage.io package: read (and refused) once, not once per file
        from ..predict import load_package, package_summary

        ckpt = load_package(model, "cpu")
        about = package_summary(ckpt)
    else:
        ckpt = load_checkpoint(model)
        ckpt.build("cpu")  # weights that do not fit the recorded model: refuse once, not once per file
        about = describe_checkpoint(ckpt)
    spec = ckpt.spec
    check_used(options, spec.family_entry)
    if options.runtime == "onnx" and not is_package(model):  # refused once, before any file
        import torch

        from ..predict import use_onnx

        use_onnx(options.runtime, torch.device("cuda" if options.device == "cuda" else "cpu"), spec.family_entry)
    split = spec.semantic and ckpt.label_mode != "instances" and spec.n_classes == 2
    files = _scan(in_dir, pattern, recursive)
    files = [p for p in files if not any(q.name.lower().endswith(".zarr") for q in p.relative_to(in_dir).parents
                                         if q.name)]  # the chunks and metadata inside a store are not inputs
    if in_dir in out_dir.parents:  # outputs inside the input folder are never inputs
        files = [p for p in files if out_dir not in p.parents and out_dir not in p.resolve().parents]
    if not files:
        raise InputError(f"no files matching {pattern!r} in {input_dir}" + ("" if recursive else
                         " (sub-folders are not searched; use recursive)"))
    sides = _block_sides(files, options, ckpt, split, reading)
    plan = outputs.plan_outputs(in_dir, out_dir, files, probabilities=probabilities and spec.semantic,
                                measurements=measurements, boxes=spec.family_entry.kind.boxes,
                                blockwise=frozenset(p for p in files if sides[p]))
    setup = _Setup(in_dir, out_dir, model, mf.model_stamp(model), about, split, plan,
                   {rel: outs for _, rel, outs in plan}, {rel: sides[path] for path, rel, _ in plan})
    ensure_not_input(setup.manifest, files)
    ensure_not_input(setup.summary_csv, files)
    return setup


@dataclass
class _Ledger:
    """This run's manifest rows and image summaries, merged with what earlier runs recorded.

    Rows of earlier runs are kept for every file this run does not redo (the
    manifest is never truncated).
    """

    setup: _Setup
    previous: dict
    previous_summary: dict
    stamps: dict = field(default_factory=dict)
    rows: dict = field(default_factory=dict)
    summaries: dict = field(default_factory=dict)
    counts: dict = field(default_factory=lambda: {"ok": 0, "failed": 0, "skipped": 0})
    reading: str = ""  # what is read of each file (scene, channel, pixel size), as the manifest records it

    def merged(self) -> list[dict]:
        """This run's rows, and earlier rows of every file it has not redone, in input order."""
        order = [rel for _, rel, _ in self.setup.plan] + [rel for rel in self.previous if rel not in self.stamps]
        return [self.rows.get(rel) or self.previous[rel] for rel in order if rel in self.rows or rel in self.previous]

    def skip_done(self, skip_existing: bool, task_options: dict) -> tuple[list[FileDone], list[FileTask]]:
        """(FileDone "skipped" events, tasks to run): with ``skip_existing``, files proven done are skipped."""
        setup, skipped, tasks = self.setup, [], []
        for index, (path, rel, outs) in enumerate(setup.plan):
            try:
                stamp = self.stamps[rel] = mf.input_stamp(path)
            except OSError:  # gone since the scan: the task fails on its own
                stamp = self.stamps[rel] = ("", "")
            if skip_existing and mf.is_complete(self.previous.get(rel), outs, setup.out_dir, stamp, setup.model_id,
                                                self.reading):
                try:
                    self.summaries[rel] = outputs.summary_of_outputs(outs)
                except (OSError, ValueError, KeyError):
                    pass  # an output no longer reads: redo the file
                else:
                    self.rows[rel] = mf.file_row(rel, "skipped", outs, setup.out_dir, stamp, setup.model_id,
                                                 reading=self.reading)
                    skipped.append(FileDone(len(skipped) + 1, len(setup.plan), str(path), "skipped",
                                            outputs={k: str(p) for k, p in outs.items()}))
                    continue
            tasks.append(FileTask(index=index, input=str(path), rel=rel, outputs={k: str(p) for k, p in outs.items()},
                                  model=setup.model, split_instances=setup.split, block=setup.blocks[rel],
                                  **task_options))
        self.counts["skipped"] = len(skipped)
        return skipped, tasks

    def record(self, task: FileTask, res: dict, writer: mf.ManifestWriter) -> FileDone | None:
        """Append a finished file's row to the manifest; its FileDone event (None: stopped mid-file)."""
        if res["status"] not in ("ok", "failed"):
            return None  # stopped mid-file: nothing written for it
        setup = self.setup
        outs = {k: setup.outputs[task.rel][k] for k in res["written"]}
        # the input stamp as planned: an input changed meanwhile is redone on resume
        self.rows[task.rel] = mf.file_row(task.rel, res["status"], outs, setup.out_dir, self.stamps[task.rel],
                                          setup.model_id, reading=self.reading, blocks=res.get("blocks", ""),
                                          **{k: res[k] for k in ("error", "seconds", "started", "finished")})
        writer.append(self.rows[task.rel])
        if res["status"] == "ok":
            self.summaries[task.rel] = res["summary"]
        self.counts[res["status"]] += 1
        return FileDone(sum(self.counts.values()), len(setup.plan), task.input, res["status"], res["error"],
                        res["seconds"], {k: str(p) for k, p in outs.items()})

    def finish(self, writer: mf.ManifestWriter) -> None:
        """Rewrite the manifest in input order and write ``summary.csv`` (atomically)."""
        final_rows = self.merged()
        writer.finish(final_rows)
        summary_rows = []
        for row in final_rows:
            rel = row["input"]
            if rel in self.summaries:
                summary_rows.append({"input": mf.quote_name(rel), **self.summaries[rel]})
            elif rel not in self.rows and rel in self.previous_summary:  # an earlier run's file, not redone
                summary_rows.append(self.previous_summary[rel])
        write_csv(self.setup.summary_csv, summary_rows, columns=None if summary_rows else mf.SUMMARY_COLUMNS)


def _local_results(tasks: list[FileTask], stop: threading.Event | None, client=None, threads: int = 0
                   ) -> Iterator[TaskDone]:
    """Each task run in this process, one after another; with ``client``, their blocks are its tasks."""
    for task in tasks:
        if _stopped(stop):
            return
        yield TaskDone(task, process_file(task, stop=stop, client=client, threads=threads))


def _dask_run(client, tasks: list[FileTask], stop: threading.Event | None, processes: bool, threads: int
              ) -> Iterator[Message | TaskDone]:
    """Files predicted whole are Dask tasks; then each block-wise file runs here, its blocks the cluster's tasks."""
    whole = [t for t in tasks if not t.block]
    blocked = [t for t in tasks if t.block]
    if whole:
        yield from dask_results(client, whole, stop, processes)
    yield from _local_results(blocked, stop, client, threads)


def iter_run_batch(model: str, input_dir: str, output_dir: str, *, pattern: str = "*.tif", recursive: bool = False,
              probabilities: bool = False, measurements: bool = True, skip_existing: bool = False,
              workers: int | None = None, scheduler: str | None = None, device: str = "auto",
              tile: int | None = None, overlap: float = 0.25, stop: threading.Event | None = None,
              tta: bool = False, score_threshold: float = 0.5, runtime: str = "auto",
              pixel_size: float | None = None, scene: int | str | None = None, channel: int | None = None,
              axes: str | None = None, volume: bool = False, anisotropy: float | None = None,
              volume_method: str = "auto", block: int | None = None, halo: int = DEFAULT_HALO
              ) -> Generator[FileDone | Message, None, BatchSummary]:
    """Predict every image file of a folder; yields FileDone per finished file, returns a BatchSummary.

    ``workers=None`` with no ``scheduler``: a local Dask cluster of
    :func:`auto_workers` workers; ``workers=N``: N local workers (one: a
    thread of this process; more: processes, see :func:`~napari_seglab.core.batch._dask.open_client`);
    ``workers=0`` or ``scheduler="sync"``: in this process, no Dask;
    ``scheduler="tcp://HOST:PORT"`` (or a scheduler file): an existing
    cluster whose workers see the same paths. ``skip_existing``: files whose
    manifest row says ok and whose outputs exist are skipped. Binary semantic
    models write objects (connected foreground, split where touching);
    multi-class models write class labels. ``stop`` returns after the files
    already running finish; their outputs and rows are kept. Folders (links
    included) are resolved once here; the summary names the resolved output folder.
    ``tta``: test-time augmentation (see :func:`~napari_seglab.core.predict._image.iter_predict_image`).
    ``runtime``: what runs the network (see :func:`~napari_seglab.core.predict.load_model`).
    ``pixel_size``: µm per pixel of files whose metadata has none; a file of another pixel size than the
    model's is resampled to it, and its measurements get ``area_um2`` / ``perimeter_um`` columns.
    ``scene`` / ``channel`` / ``axes``: what to read of each file, and how (see
    :func:`~napari_seglab.core.io.read_image`); the manifest's ``reading`` column records them. The folder
    may mix TIFF, ND2, LIF and CZI files (``pattern="images"``: all of them; or globs joined by ``;``).
    A box detector (kind "boxes") writes ``<stem>_boxes.csv`` per image
    (columns :data:`~napari_seglab.core.labels._boxes.BOX_COLUMNS`, the boxes scoring at least
    ``score_threshold``) and their count as the summary's ``object_count``.
    ``volume``: z-stacks as 3D objects (``anisotropy``: the z step / pixel size, None: each file's pixel
    size, else 1; ``volume_method``: see :func:`~napari_seglab.core.predict.iter_predict_volume`); the
    objects CSV then has one row per 3D object and ``summary.csv`` the anisotropy used.
    ``block``: None (automatic), 0 or a side; a file predicted block by block (every OME-Zarr input, a 2D
    TIFF above :data:`~napari_seglab.core.predict.AUTO_BLOCK_PIXELS` with a U-Net / FCN model, or every
    file given a side) is read lazily, written as ``<stem>_labels.ome.zarr`` (and
    ``<stem>_probabilities.ome.zarr``) and measured block by block (see :mod:`._blocks`); ``halo``: pixels
    decoded around each block. On Dask, such a file's blocks are the cluster's tasks.
    """
    t0 = time.perf_counter()
    options = BatchOptions(pattern=pattern, recursive=recursive, probabilities=probabilities,
                           skip_existing=skip_existing, workers=workers, device=device, tile=tile or 0,
                           overlap=overlap, tta=tta, score_threshold=score_threshold, runtime=runtime,
                           pixel_size=pixel_size, volume=volume, anisotropy=anisotropy, volume_method=volume_method,
                           block=block, halo=halo)
    _check_request(options, scheduler)
    setup = _set_up(model, input_dir, output_dir, options, measurements,
                    {"scene": scene, "channel": channel, "axes": axes})
    ledger = _Ledger(setup, mf.read_manifest(setup.manifest), mf.read_summary(setup.summary_csv),
                     reading=reading_note(scene, channel, pixel_size, axes))
    skipped, tasks = ledger.skip_done(skip_existing, {"device": device, "tile": tile, "overlap": overlap,
                                                      "measurements": measurements, "tta": tta,
                                                      "score_threshold": float(score_threshold),
                                                      "runtime": runtime, "pixel_size": pixel_size,
                                                      "scene": scene, "channel": channel, "axes": axes,
                                                      "volume": volume, "anisotropy": anisotropy,
                                                      "volume_method": volume_method, "halo": int(halo)})
    # connect (or start the local cluster) before the output folder is touched: a cluster that
    # cannot be reached leaves every file there as it was
    client = cluster = None
    local = workers == 0 or scheduler == "sync"
    if tasks and not local and not _stopped(stop):
        client, cluster, where, processes = open_client(workers, scheduler, len(tasks), device)
    writer = mf.ManifestWriter(setup.manifest)
    results: Iterator = iter(())
    disk_full = False
    try:
        mf.make_folder(setup.out_dir)
        writer.start(ledger.merged())
        yield Message(f"model: {setup.description}")
        yield from skipped
        if tasks and not _stopped(stop):
            yield Message(f"{len(tasks)} file(s) to predict " + ("in this process" if local else where))
            threads = max(1, usable_cpus() // max(1, len(client.nthreads()))) if cluster is not None and processes \
                else 0
            results = _local_results(tasks, stop) if local else _dask_run(client, tasks, stop, processes, threads)
        for item in results:
            try:
                event = item if isinstance(item, Message) else ledger.record(item.task, item.result, writer)
            except OSError as exc:  # the manifest row itself could not be written
                if not is_disk_full(exc):
                    raise
                disk_full = True
                break
            if event is not None:
                yield event
            if not isinstance(item, Message) and item.result.get("disk_full"):
                disk_full = True  # every later file would fail the same way: stop here
                break
    finally:
        if hasattr(results, "close"):
            results.close()  # cancels the futures still out
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
        clear_models()  # models loaded in this process (no Dask, or a worker thread)
        if writer.started:
            try:
                ledger.finish(writer)
            except (InputError, OSError) as exc:
                if not (disk_full and is_disk_full(exc)):
                    raise  # a full disk keeps the manifest as appended so far: every finished file is in it
    c = ledger.counts
    if disk_full:
        raise InputError(f"{setup.out_dir}: no space left on the device after {c['ok']} of {len(setup.plan)} "
                         f"file(s); the batch stopped, the manifest lists the finished files and no partial "
                         "output was left: free some space and run again with --skip-existing")
    return BatchSummary(total=len(setup.plan), ok=c["ok"], failed=c["failed"], skipped=c["skipped"],
                        seconds=time.perf_counter() - t0, manifest=str(setup.manifest),
                        summary_csv=str(setup.summary_csv), output_dir=str(setup.out_dir))
