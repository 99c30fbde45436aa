"""One large 2D image from a lazy file (OME-Zarr, TIFF) block by block into OME-Zarr outputs.

:func:`iter_predict_to_zarr` joins :class:`~napari_seglab.core.io.LazyImage` input,
:func:`~napari_seglab.core.predict._blocks.iter_predict_blocks` and
:class:`~napari_seglab.core.io.OmeZarrWriter` outputs: chunks are whole parts of a block (one writer per
chunk), and nothing is published unless every block is done.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Sequence

import numpy as np

from ..events import BlockDone, Message, TileDone
from ..io import LazyImage, OmeZarrWriter
from ._blocks import (
    DEFAULT_BLOCK,
    DEFAULT_HALO,
    BlockResult,
    block_factor,
    iter_predict_blocks,
    model_grid,
)

#: output chunk side: 1024 where the block is a multiple of it (napari reads 1024-chunks briskly), else the block
CHUNK = 1024


def chunk_for(block: int) -> int:
    """The chunk side for blocks of ``block`` px: every chunk lies within one block, so one block writes it."""
    return CHUNK if block % CHUNK == 0 else block


def labels_dtype(shape: Sequence[int], factor: float = 1.0) -> np.dtype:
    """int32 labels while the stitching's ids (1 + a pixel's linear index in the image, or in the model's
    grid when it is resampled by ``factor``) fit, else int64."""
    h, w = int(shape[0]), int(shape[1])
    mh, mw = model_grid((h, w), factor)
    return np.dtype(np.int32 if max(h * w, mh * mw) < np.iinfo(np.int32).max else np.int64)


def iter_predict_to_zarr(model, image: LazyImage, labels_path, *, probabilities_path=None,
                         block: int = DEFAULT_BLOCK, halo: int = DEFAULT_HALO, tile: int | None = None,
                         overlap: float = 0.25, stop: threading.Event | None = None, tta: bool = False,
                         protect: Sequence = (), pixel_size: Sequence[float] | None = None
                         ) -> Generator[TileDone | BlockDone | Message, None, BlockResult]:
    """Predict ``image`` block by block into an OME-Zarr of labels (and one of probabilities); a generator.

    Both stores are published (renamed into place) only when the prediction ends unstopped;
    ``protect``: paths never written over (the inputs). ``pixel_size``: the image's µm per pixel
    (default: ``image.pixel_size``); a model trained at another one, or at an object scale other
    than 1, runs on the resampled grid (a Message says so). Returns the :class:`BlockResult`.
    """
    shape = image.shape[:2]
    pixel_size = image.pixel_size if pixel_size is None else pixel_size
    factor, _ = block_factor(model, pixel_size)
    chunk = chunk_for(int(block))
    attrs = {"source": image.source, "model": model.spec.family, "block": int(block), "halo": int(halo)}
    with OmeZarrWriter(labels_path, shape, labels_dtype(shape, factor), chunk=chunk, pixel_size=image.pixel_size,
                       protect=protect) as labels:
        probs = None
        if probabilities_path is not None:
            k = max(2, model.spec.n_classes) if not model.spec.has_regression_head else 2
            probs = OmeZarrWriter(probabilities_path, (k, *shape), np.float32, chunk=chunk,
                                  pixel_size=image.pixel_size, protect=protect, name="probabilities")
        try:
            result = yield from iter_predict_blocks(model, image.read, shape, labels.array,
                                                    probabilities_out=None if probs is None else probs.array,
                                                    block=block, halo=halo, tile=tile, overlap=overlap, stop=stop,
                                                    tta=tta, pixel_size=pixel_size)
            if not result.stopped:
                labels.finish({**attrs, "objects": result.objects, "kind": str(result.kind.value)})
                if probs is not None:
                    probs.finish(attrs)
        finally:
            if probs is not None and not probs.done:
                probs.abort()
    return result
