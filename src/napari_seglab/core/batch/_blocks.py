"""Large files in a batch: which go block by block, and one such file's work (bounded memory).

:func:`block_side` decides per input, before the outputs are planned (a block-wise file's labels and
probabilities are OME-Zarr stores, ``<stem>_labels.ome.zarr`` / ``<stem>_probabilities.ome.zarr``):
every OME-Zarr input, a 2D TIFF whose plane is above :data:`~napari_seglab.core.predict.AUTO_BLOCK_PIXELS`
(read as it is: no scene, channel, axes or 3D choice), or every file when a block side is given.
:func:`process_blocks` predicts one such file through
:func:`~napari_seglab.core.predict.iter_predict_blocks` (or as block tasks of a Dask client,
:func:`~napari_seglab.core.predict.iter_predict_blocks_dask`) into hidden stores, measures the objects
block by block from the labels store and the lazy image (:func:`~napari_seglab.core.objects.measure_blocks`),
writes the objects CSV, and only then publishes the stores.
"""

from __future__ import annotations

import threading
from contextlib import ExitStack
from pathlib import Path

from ..errors import InputError
from ..events import Stopped, drive


def reading_choices(scene, channel, axes, volume) -> list[str]:
    """The reading options of a run that the block-wise path does not honour (yet)."""
    named = [name for name, value in (("scene", scene), ("channel", channel), ("axes", axes)) if value is not None]
    return named + (["3D objects"] if volume else [])


def batch_refusal(model, split: bool) -> str | None:
    """Why a batch with ``model`` (a checkpoint or a loaded model) cannot go block by block (None: it can)."""
    from ..predict import refusal

    why = refusal(model, False)
    if why is None and split:
        why = ("a binary semantic model's objects (its foreground split where objects touch) are not available "
               "block by block yet; use an instance model")
    return why


def block_side(path: Path, block: int | None, *, choices: list[str], why_not: str | None) -> int:
    """The block side to predict ``path`` with, 0 for the whole image.

    ``block``: None (automatic: OME-Zarr inputs and 2D TIFF planes above AUTO_BLOCK_PIXELS), 0 (never)
    or a side (every file). ``choices``: reading options given (scene, channel, axes, 3D), which only
    the whole-image path honours; ``why_not``: why the model cannot go block by block (None: it can).
    A file the automatic rule cannot probe goes whole (where it fails with the reader's own message);
    so does a TIFF when the model or the choices cannot go block by block.
    """
    from ..io import is_zarr_path, probe_tiff
    from ..predict import AUTO_BLOCK_PIXELS, DEFAULT_BLOCK

    if block == 0:
        return 0
    if is_zarr_path(path):  # read block by block only (a model or choice that cannot: the file fails, saying why)
        return int(block or DEFAULT_BLOCK)
    if why_not is not None or choices:  # a side given with these is refused before any file (see _run)
        return 0
    if block:
        return int(block)
    if path.suffix.lower() not in (".tif", ".tiff"):
        return 0
    try:
        shape, axes = probe_tiff(path)
    except (InputError, OSError, ValueError):
        return 0
    sizes = dict(zip(axes, shape, strict=False))
    big = sizes.get("Y", 1) * sizes.get("X", 1) > AUTO_BLOCK_PIXELS
    return DEFAULT_BLOCK if big and not set(axes) & set("TZQI") else 0


def blocks_note(task, result, dask: bool) -> str:
    """The manifest's ``blocks`` text of a block-wise file: block, halo, where the blocks ran, any note."""
    text = f"block={task.block} halo={task.halo}" + (" dask-block-tasks" if dask else "")
    objects = result.get("objects_note")
    return text + (f"; {objects}" if objects else "")


def process_blocks(task, model, result: dict, stop: threading.Event | None = None, *, client=None,
                   threads: int = 0) -> None:
    """Predict ``task``'s file block by block into OME-Zarr stores, measure it block by block; fills ``result``.

    ``model``: the loaded model; ``client``: a Dask client whose workers run the blocks (None: this
    process). The stores are published (renamed into place) after the objects CSV is written; a
    stop or a failure leaves neither (``result["written"]`` lists what the caller removes).
    """
    import numpy as np

    from ..data import pixel_size_or
    from ..io import OmeZarrWriter, open_lazy, write_csv
    from ..objects import MAX_SHAPE_SIDE, measure_blocks, summarize_objects
    from ..predict import (
        block_factor,
        chunk_for,
        iter_predict_blocks,
        iter_predict_blocks_dask,
        labels_dtype,
    )
    from . import _outputs as out_mod

    why = batch_refusal(model, task.split_instances)
    if why:
        raise InputError(f"{Path(task.input).name}: {why}; an OME-Zarr is read block by block only")
    chosen = reading_choices(task.scene, task.channel, task.axes, task.volume)
    if chosen:
        raise InputError(f"{Path(task.input).name}: {', '.join(chosen)} not available block by block yet; "
                         "this file goes block by block (OME-Zarr, or --block)")
    image = open_lazy(task.input)
    shape = image.shape[:2]
    pixel_size = pixel_size_or(image.pixel_size, task.pixel_size)
    factor, _ = block_factor(model, pixel_size)
    out, protect, written = task.outputs, [task.input], result["written"]
    block = int(task.block)
    Path(out["labels"]).parent.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        labels = stack.enter_context(OmeZarrWriter(out["labels"], shape, labels_dtype(shape, factor),
                                                   chunk=chunk_for(block), pixel_size=pixel_size, protect=protect))
        probs = None
        if "probabilities" in out:
            k = 2 if model.spec.has_regression_head else max(2, model.spec.n_classes)
            probs = stack.enter_context(OmeZarrWriter(out["probabilities"], (k, *shape), np.float32,
                                                      chunk=chunk_for(block), pixel_size=pixel_size,
                                                      protect=protect, name="probabilities"))
        common = {"block": block, "halo": task.halo, "tile": task.tile, "overlap": task.overlap, "stop": stop,
                  "tta": task.tta, "pixel_size": pixel_size}
        if client is not None:
            pred = drive(iter_predict_blocks_dask(client, model, task.model, task.input, str(labels.tmp / "0"),
                                                  probabilities_path=None if probs is None else str(probs.tmp / "0"),
                                                  device=task.device, runtime=task.runtime, threads=threads,
                                                  **common))
        else:
            pred = drive(iter_predict_blocks(model, image.read, shape, labels.array,
                                             probabilities_out=None if probs is None else probs.array, **common))
        if pred.stopped:
            result["status"] = "stopped"
            return
        size = None if pixel_size is None else tuple(float(v) for v in pixel_size[-2:])
        channels = image.shape[2] if "C" in image.axes else 0
        try:  # the shape columns only with measurements; the sums alone give the summary
            rows, note = measure_blocks(labels.array, image.read if task.measurements else None, block=block,
                                        channels=channels, pixel_size=size if task.measurements else None,
                                        max_side=MAX_SHAPE_SIDE if task.measurements else -1, stop=stop)
        except Stopped:
            result["status"] = "stopped"
            return
        if task.measurements:
            columns = None if rows else out_mod.object_columns(np.zeros((1, 1, channels) if channels else (1, 1)),
                                                               image.axes, size)
            write_csv(out["objects"], rows, columns=columns, protect=protect)
            written.append("objects")
            result["objects_note"] = note
        else:
            rows = [{"label": r["label"], "area": r["area"]} for r in rows]
        attrs = {"source": task.input, "block": block, "halo": int(task.halo), "objects": pred.objects,
                 "crossing": pred.crossing, "merged": pred.merged, "kind": pred.kind.value}
        labels.finish(attrs)
        written.append("labels")
        if probs is not None:
            probs.finish(attrs)
            written.append("probabilities")
    result.update(status="ok", written=written, summary=summarize_objects(rows))
