"""One large image split into block tasks on a Dask cluster, with the output of one process.

The driver settles the grids and the normalisation once (:func:`~._blocks.plan_blocks`), then
every block is a task: a worker opens the lazy input and the zarr arrays being written (paths its
file system shares with the driver), loads the model once per worker process, predicts the block
(:func:`~._blocks.iter_block`) and writes its core, which holds whole chunks: one writer per chunk.
Tasks return the ids their core holds and those cut by their halo; the driver numbers the objects
(:func:`~._blocks.finish_blocks`). Ids are canonical (a pixel's index), so the order in which blocks
finish changes nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Generator

from ..events import BlockDone, Message, Stopped, check_stop, drive
from ._blocks import (
    DEFAULT_BLOCK,
    DEFAULT_HALO,
    BlockJob,
    BlockResult,
    finish_blocks,
    iter_block,
    plan_blocks,
    resampling_note,
)

#: models loaded by this worker process, by (path, device, runtime): loaded once, used for every block
_MODELS: dict = {}


def _worker_model(model_path: str, device: str, runtime: str, tta: bool):
    from ._image import load_model

    key = (model_path, device, runtime)
    if key not in _MODELS:
        _MODELS[key] = load_model(model_path, device, runtime=runtime)
    model = _MODELS[key]
    return model.replace(tta=True) if tta else model


def block_task(model_path: str, device: str, runtime: str, tta: bool, threads: int, job: BlockJob, input_path: str,
               labels_path: str, probabilities_path: str | None, index: int) -> tuple[int, object, list]:
    """One block on a worker: (its index, the ids its core holds, the ids cut by its halo)."""
    import torch
    import zarr

    from ..io import open_lazy

    if threads:
        torch.set_num_threads(threads)
    model = _worker_model(model_path, device, runtime, tta)
    image = open_lazy(input_path)
    labels = zarr.open_array(labels_path, mode="r+")
    probs = zarr.open_array(probabilities_path, mode="r+") if probabilities_path else None
    present, cut = drive(iter_block(model, job, image.read, index, labels, probs))
    return index, present, cut


def iter_predict_blocks_dask(client, model, model_path: str, input_path: str, labels_path: str, *,
                             probabilities_path: str | None = None, block: int = DEFAULT_BLOCK,
                             halo: int = DEFAULT_HALO, tile: int | None = None, overlap: float = 0.25,
                             device: str = "cpu", runtime: str = "torch", tta: bool = False, threads: int = 0,
                             stop: threading.Event | None = None, pixel_size=None
                             ) -> Generator[BlockDone | Message, None, BlockResult]:
    """Predict the image at ``input_path`` block by block as tasks of ``client``'s workers: a generator.

    ``model``: the loaded model (the driver reads its settings); ``model_path``: the checkpoint the
    workers load. ``labels_path`` / ``probabilities_path``: existing zarr arrays of the image's
    shape (level 0 of :class:`~napari_seglab.core.io.OmeZarrWriter` stores) that the workers open
    and write. ``pixel_size``: the image's µm per pixel (default: the file's); the driver settles the
    resampling factor (object scale, pixel size) once, in the job every task gets. Yields BlockDone as
    blocks finish (in any order), then while renumbering; returns a :class:`~._blocks.BlockResult`
    (``stopped`` when ``stop`` was set: outstanding tasks are cancelled).
    """
    import zarr
    from distributed import as_completed

    from ..io import open_lazy
    from ..models import Kind

    image = open_lazy(input_path)
    labels = zarr.open_array(labels_path, mode="r+")
    job = plan_blocks(model.replace(tta=tta) if tta else model, image.read, image.shape[:2], block=block,
                      halo=halo, tile=tile, overlap=overlap, labels_dtype=labels.dtype,
                      pixel_size=image.pixel_size if pixel_size is None else pixel_size)
    yield from resampling_note(job)
    n = len(job.grid)
    result = BlockResult(job.shape, n, Kind.INSTANCES if job.objects else Kind.SEMANTIC, tile=job.plan.size[0])
    futures = [client.submit(block_task, str(model_path), device, runtime, tta, threads, job, str(input_path),
                             str(labels_path), probabilities_path and str(probabilities_path), i, pure=False)
               for i in range(n)]
    seen, cut = [], set()
    try:
        for done, future in enumerate(as_completed(futures), start=1):
            check_stop(stop)
            _, present, cut_here = future.result()
            seen.append(present)
            cut.update(cut_here)
            yield BlockDone(done, n)
        yield from finish_blocks(job, labels, seen, cut, result, stop)
    except Stopped:
        result.stopped = True
    finally:
        client.cancel([f for f in futures if not f.done()])
    return result
