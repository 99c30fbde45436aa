"""Block-wise prediction of one 2D image larger than memory: bounded memory, the whole image's result.

The image (Y, X[, C]) is cut into square blocks (:class:`BlockGrid`). For each block the network
runs on the tiles of the SAME global :class:`~napari_seglab.core.tiling.TilePlan` the whole-image
path uses, in the same order, and their raw outputs are blended over the block (plus a halo): every
pixel gets the same float32 sum of the same tiles, so the blended outputs equal the whole image's bit
for bit. Semantic labels are per pixel and are written for the block's core. Instance heads decode
the block with a halo of ``halo`` pixels; every object found is named by its canonical point (its
first pixel in raster order, as a linear index of the whole image), so an object seen by several
blocks gets one id from each of them without any exchange. A block writes only its core pixels (one
writer per chunk when blocks are whole chunks). Objects wider than the halo are cut by the halo's
edge: the blocks on each side of a face then merge them where they touch across it. A last pass
numbers the objects 1..N in the raster order of their first pixel.

A model that resamples (object scale != 1, or a pixel size other than its own) predicts on the grid
the whole-image path resamples the image to: the tile plan, the decoded regions, the halo and the
canonical ids live on that grid, each tile is resampled from the image window its taps reach with the
whole plane's sample positions (:func:`~napari_seglab.core.data.resample_region`), and each block maps
its own image pixels back (labels nearest, probabilities bilinear), so blocks stay squares of the
image's pixels (one writer per chunk).

Normalisation uses per-channel percentiles of a bounded sample (:func:`scaling_sample`: the whole
plane up to :data:`SAMPLE_PIXELS`, else a grid of windows); the whole-image path takes the same
sample, so both paths see the same values.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from ..data import (
    check_scale,
    normalize,
    prediction_factor,
    resample_region,
    scaled_shape,
    source_window,
    to_chw,
)
from ..device import release_free_memory
from ..errors import InputError
from ..events import BlockDone, Message, Stopped, TileDone, check_stop
from ..models import Kind
from ..tiling import ALIGN, TilePlan, check_overlap, window
from ._options import DEFAULT_BLOCK, DEFAULT_HALO  # torch-free, for the command line's options

#: percentiles are taken over the whole plane up to this many pixels, else over a grid of
#: SAMPLE_WINDOW-sized windows holding about as many (16 windows of 512 x 512)
SAMPLE_PIXELS = 2**22
SAMPLE_WINDOW = 512
#: block side (pixels) and instance halo: a flows block of 1024 + 2 x 128 decodes in about 0.3 GB
#: tile side of the blocked path when none is given (the whole-image path then needs the same --tile):
#: on the CPU 256, as a 512 px tile's activations add about 0.1 GB to the peak resident memory for the
#: same pixels per second (docs/large-images.md); on a GPU 512, where they live in the GPU's memory
DEFAULT_BLOCK_TILE = 512
CPU_BLOCK_TILE = 256


def default_block_tile(device) -> int:
    """The blocked path's tile side on ``device`` when none is given."""
    return CPU_BLOCK_TILE if getattr(device, "type", str(device)) == "cpu" else DEFAULT_BLOCK_TILE
#: a block whose core holds an object cut by the halo's edge is decoded again with the halo doubled,
#: at most this many times, and to at most MAX_HALO_FRACTION x the block (memory grows with the region)
HALO_GROWTH = 3
MAX_HALO_FRACTION = 0.25

Reader = Callable[[slice, slice], np.ndarray]


def sample_windows(shape: Sequence[int], max_pixels: int = SAMPLE_PIXELS,
                   size: int = SAMPLE_WINDOW) -> list[tuple[slice, slice]]:
    """Where the normalisation sample is read: the whole (Y, X) plane when small, else an even grid of windows."""
    h, w = int(shape[0]), int(shape[1])
    if h * w <= max_pixels:
        return [(slice(0, h), slice(0, w))]
    wy, wx = min(size, h), min(size, w)
    k = max(1, int(math.sqrt(max_pixels / (wy * wx))))
    ys = [round(i * (h - wy) / (k - 1)) for i in range(k)] if k > 1 else [(h - wy) // 2]
    xs = [round(i * (w - wx) / (k - 1)) for i in range(k)] if k > 1 else [(w - wx) // 2]
    return [(slice(y, y + wy), slice(x, x + wx)) for y in ys for x in xs]


def scaling_sample(read: Reader | np.ndarray, shape: Sequence[int] | None = None) -> np.ndarray:
    """The (C, y, x) pixels the normalisation percentiles come from: the plane itself when small.

    ``read``: a raw (C, Y, X) plane, or a function ``read(ys, xs)`` giving (C, y, x) of a lazy
    image of (Y, X) ``shape``. Windows of a large plane are laid side by side along X.
    """
    if isinstance(read, np.ndarray):
        chw = read
        shape = chw.shape[-2:]

        def read(ys, xs):
            return chw[:, ys, xs]
    windows = sample_windows(shape)
    if len(windows) == 1:
        return np.asarray(read(*windows[0]))
    return np.concatenate([np.asarray(read(*w)) for w in windows], axis=-1)


@dataclass(frozen=True)
class BlockGrid:
    """Square blocks of a (Y, X) plane, row by row; the last row and column may be smaller."""

    shape: tuple[int, int]
    block: int

    def cores(self) -> list[tuple[slice, slice]]:
        h, w = self.shape
        b = self.block
        return [(slice(y, min(y + b, h)), slice(x, min(x + b, w))) for y in range(0, h, b) for x in range(0, w, b)]

    def extended(self, core: tuple[slice, slice], halo: int) -> tuple[slice, slice]:
        """``core`` grown by ``halo`` on every side, within the plane."""
        h, w = self.shape
        ys, xs = core
        return (slice(max(0, ys.start - halo), min(h, ys.stop + halo)),
                slice(max(0, xs.start - halo), min(w, xs.stop + halo)))

    def __len__(self) -> int:
        return math.ceil(self.shape[0] / self.block) * math.ceil(self.shape[1] / self.block)


@dataclass
class BlockResult:
    """What :func:`iter_predict_blocks` returns (the arrays themselves are in the caller's outputs).

    ``objects``: objects (instance outputs) or classes present (semantic); ``crossing``: objects
    whose pixels lie in more than one block (kept whole); ``merged``: objects wider than the halo,
    joined across block faces.
    """

    shape: tuple[int, int]
    blocks: int
    kind: Kind
    objects: int = 0
    crossing: int = 0
    merged: int = 0
    tile: int = 0
    stopped: bool = False


def refusal(model, split_instances: bool = False) -> str | None:
    """Why ``model`` cannot predict block by block (None: it can)."""
    spec = model.spec
    if not spec.semantic:
        return (f"block-wise prediction covers the per-pixel families (unet, fcn); a {spec.family} model "
                "predicts whole images")
    if split_instances:
        return "--split-instances is not available block-wise yet; predict the whole image"
    return None


def block_factor(model, pixel_size: Sequence[float] | None = None) -> tuple[float, str | None]:
    """(resampling factor, note or None) of ``model`` on an image of ``pixel_size`` (µm, or None):
    its object scale times the pixel-size ratio, as the whole-image path computes it (InputError out of range)."""
    return prediction_factor(check_scale(float(model.info.scale or 1.0)), pixel_size,
                             getattr(model.info, "pixel_size", None))


def model_grid(shape: Sequence[int], factor: float) -> tuple[int, int]:
    """(Y, X) of the model's pixel grid over an image of (Y, X) ``shape`` resampled by ``factor``."""
    h, w = int(shape[0]), int(shape[1])
    return (h, w) if factor == 1.0 else scaled_shape((h, w), factor)


def nearest_rows(n_image: int, n_model: int, part: slice) -> np.ndarray:
    """The model pixels whose labels the image pixels ``part`` of one axis take: the nearest-neighbour
    mapping of :func:`~napari_seglab.core.data.resample_labels` (pixel centres aligned), globally."""
    y = np.arange(part.start, part.stop)
    return np.minimum(((y + 0.5) * n_model / n_image).astype(np.int64), n_model - 1)


def _take(a: np.ndarray, inner) -> np.ndarray:
    """``a[..., rows, cols]`` for slices, or the (rows x cols) grid of index arrays."""
    if isinstance(inner[0], slice):
        return a[(..., *inner)]
    return a[..., inner[0][:, None], inner[1][None, :]]


def _check_model(model, split_instances: bool) -> None:
    why = refusal(model, split_instances)
    if why:
        raise InputError(why)


def _decodes_objects(model) -> bool:
    from ..labels import is_instance_mode

    return model.spec.has_regression_head or (is_instance_mode(model.label_mode) and model.spec.n_classes == 3)


def _overlaps(a: tuple[slice, slice], b: tuple[slice, slice]) -> bool:
    return a[0].start < b[0].stop and b[0].start < a[0].stop and a[1].start < b[1].stop and b[1].start < a[1].stop


def _blend_region(model, read: Reader, plan: TilePlan, region: tuple[slice, slice], lohi: tuple, raw: bool,
                  stop: threading.Event | None) -> Generator[TileDone, None, np.ndarray]:
    """Blended outputs (K, *region) of the plan's tiles that touch ``region``: the whole-image blend, cropped."""
    from ._forward import _tile_output

    tiles = [t for t in plan.slices() if _overlaps(t, region)]
    ry, rx = region
    acc = total = None
    weights = window(*plan.size) if len(plan) > 1 else None
    for i, (ty, tx) in enumerate(tiles):
        check_stop(stop)
        out = _tile_output(model, normalize(read(ty, tx), *lohi), raw)
        # the part of the tile inside the region, in tile and region coordinates
        y0, y1 = max(ty.start, ry.start), min(ty.stop, ry.stop)
        x0, x1 = max(tx.start, rx.start), min(tx.stop, rx.stop)
        src = (slice(y0 - ty.start, y1 - ty.start), slice(x0 - tx.start, x1 - tx.start))
        dst = (slice(y0 - ry.start, y1 - ry.start), slice(x0 - rx.start, x1 - rx.start))
        if weights is None:  # one tile covers the plane: no blending, as in the whole-image path
            acc = np.ascontiguousarray(out[(slice(None), *src)])
        else:
            if acc is None:
                acc = np.zeros((out.shape[0], ry.stop - ry.start, rx.stop - rx.start), np.float32)
                total = np.zeros(acc.shape[1:], np.float32)
            out *= weights  # the Blender's own arithmetic, so every pixel gets the same float32 sum
            acc[(slice(None), *dst)] += out[(slice(None), *src)]
            total[dst] += weights[src]
        yield TileDone(i + 1, len(tiles))
    if total is not None:
        acc /= total
    return acc


def _canonical_ids(labels: np.ndarray, region: tuple[slice, slice], shape: tuple[int, int]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(local ids, their canonical ids, cut flags) of the objects of a decoded region.

    Canonical id: 1 + the linear index, in the whole image, of the object's first pixel in raster
    order (translation keeps raster order, so a block finds the whole image's first pixel of every
    object it holds whole). Cut: the object touches an edge of the region that is not an image edge.
    """
    ids, first = np.unique(labels.ravel(), return_index=True)
    keep = ids > 0
    ids, first = ids[keep], first[keep]
    h, w = labels.shape
    fy, fx = np.divmod(first, w)
    canon = (fy + region[0].start).astype(np.int64) * shape[1] + fx + region[1].start + 1
    edges = []
    if region[0].start > 0:
        edges.append(labels[0])
    if region[0].stop < shape[0]:
        edges.append(labels[-1])
    if region[1].start > 0:
        edges.append(labels[:, 0])
    if region[1].stop < shape[1]:
        edges.append(labels[:, -1])
    cut = np.isin(ids, np.concatenate(edges)) if edges else np.zeros(ids.size, bool)
    return ids, canon, cut


class _Union:
    """Union-find over canonical ids (a dict: only ids cut by a halo's edge ever join)."""

    def __init__(self):
        self.parent: dict[int, int] = {}

    def find(self, a: int) -> int:
        root = a
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while self.parent.get(a, a) != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def join(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _face_pairs(labels, grid: BlockGrid) -> np.ndarray:
    """(N, 2) distinct pairs of nonzero ids that touch across a face between two block cores."""
    h, w = grid.shape
    pairs = []
    for y in range(grid.block, h, grid.block):
        a, b = np.asarray(labels[y - 1]), np.asarray(labels[y])
        pairs.append(np.stack([a, b], 1))
    for x in range(grid.block, w, grid.block):
        a, b = np.asarray(labels[:, x - 1]), np.asarray(labels[:, x])
        pairs.append(np.stack([a, b], 1))
    if not pairs:
        return np.zeros((0, 2), np.int64)
    p = np.concatenate(pairs).astype(np.int64)
    p = p[(p[:, 0] > 0) & (p[:, 1] > 0) & (p[:, 0] != p[:, 1])]
    return np.unique(p, axis=0) if p.size else p


@dataclass(frozen=True)
class BlockJob:
    """What every block of one image shares: the grids, the normalisation, what is decoded (picklable).

    ``grid``: blocks of the image's pixels (their cores are what a block writes); ``plan``: the tiles of
    the model's pixel grid (``model_shape``: the image resampled by ``factor``, the whole-image path's
    grid); ``halo`` is in model pixels. ``note``: why the image is resampled, or None.
    """

    shape: tuple[int, int]
    grid: BlockGrid
    plan: TilePlan
    lohi: tuple
    halo: int
    objects: bool
    head: bool
    in_channels: int
    model_shape: tuple[int, int] | None = None
    factor: float = 1.0
    note: str | None = None

    def chw(self, read: Reader, ys: slice, xs: slice) -> np.ndarray:
        return to_chw(np.asarray(read(ys, xs)), self.in_channels)

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(Y, X) of the model's pixel grid (the image's when it is not resampled)."""
        return self.model_shape or self.shape

    def model_area(self, core: tuple[slice, slice], probabilities: bool) -> tuple[tuple[slice, slice], tuple]:
        """(the model pixels a block ``core`` of image pixels needs, the model rows and columns its pixels take).

        Without resampling: the core itself and its slices. Resampled: the model pixels the core's
        labels take (nearest) and, with ``probabilities``, those its probabilities are interpolated from.
        """
        if self.factor == 1.0:
            return core, core
        (h, w), (mh, mw) = self.shape, self.grid_shape
        rows, cols = nearest_rows(h, mh, core[0]), nearest_rows(w, mw, core[1])
        ys, xs = slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)
        if probabilities:
            py, px = source_window((mh, mw), (h, w), core)
            ys, xs = slice(min(ys.start, py.start), max(ys.stop, py.stop)), \
                slice(min(xs.start, px.start), max(xs.stop, px.stop))
        return (ys, xs), (rows, cols)

    def model_read(self, read: Reader) -> Reader:
        """``read`` of raw (C, y, x) image pixels -> (C, y, x) of the model's grid (resampled regions)."""
        def chw(ys, xs):
            return self.chw(read, ys, xs)

        if self.factor == 1.0:
            return chw

        def resampled(ys, xs):
            return resample_region(chw, self.shape, self.grid_shape, (ys, xs))

        return resampled


def _grow(area: tuple[slice, slice], halo: int, shape: tuple[int, int]) -> tuple[slice, slice]:
    ys, xs = area
    return (slice(max(0, ys.start - halo), min(shape[0], ys.stop + halo)),
            slice(max(0, xs.start - halo), min(shape[1], xs.stop + halo)))


def plan_blocks(model, read: Reader, shape: Sequence[int], *, block: int = DEFAULT_BLOCK, halo: int = DEFAULT_HALO,
                tile: int | None = None, overlap: float = 0.25, split_instances: bool = False,
                labels_dtype=np.int32, pixel_size: Sequence[float] | None = None) -> BlockJob:
    """Check the request (InputError) and settle the grids and the normalisation (read from a bounded sample).

    ``pixel_size``: the image's µm per pixel (or None); with the model's object scale it sets the
    resampling factor (:func:`block_factor`).
    """
    _check_model(model, split_instances)
    check_overlap(overlap)
    h, w = (int(n) for n in shape[:2])
    factor, note = block_factor(model, pixel_size)
    mh, mw = model_grid((h, w), factor)
    if np.dtype(labels_dtype).itemsize < 8 and max(h * w, mh * mw) >= np.iinfo(labels_dtype).max:
        raise InputError(f"a {h}x{w} image (resampled by {factor:g}) needs int64 labels while blocks are stitched")
    tile = max(ALIGN, int(tile or default_block_tile(getattr(model, "device", "cpu"))))
    if model.max_tile:
        tile = min(tile, model.max_tile)
    spec = model.spec
    objects = _decodes_objects(model)
    grid = BlockGrid((h, w), max(ALIGN, int(block)))
    plan = TilePlan.balanced((mh, mw), tile, overlap)

    def chw(ys, xs):
        return to_chw(np.asarray(read(ys, xs)), spec.in_channels)

    lohi = model.input_scaling(scaling_sample(chw, (h, w)))
    return BlockJob((h, w), grid, plan, tuple(tuple(float(v) for v in part) for part in lohi),
                    max(0, int(halo)) if objects else 0, objects, spec.has_regression_head, spec.in_channels,
                    (mh, mw), factor, note)


def iter_block(model, job: BlockJob, read: Reader, index: int, labels_out, probabilities_out=None,
               stop: threading.Event | None = None) -> Generator[TileDone | Message, None, tuple[np.ndarray, list]]:
    """Predict block ``index`` of ``job`` and write its core; returns (ids its core holds, ids cut by its halo).

    Object ids are canonical (1 + the linear index of the object's first pixel), not yet numbered 1..N;
    semantic blocks return the classes present. Raises Stopped when ``stop`` is set between tiles.
    """
    cores = job.grid.cores()
    core = cores[index]
    halo = job.halo
    chw = job.model_read(read)  # tiles of the model's grid: resampled from the image's window when factor != 1
    area, inner_at = job.model_area(core, probabilities_out is not None)

    growth, limit = 0, max(halo, MAX_HALO_FRACTION * job.grid.block * job.factor)
    while job.objects and growth < HALO_GROWTH and (halo << (growth + 1)) <= limit:
        growth += 1
    for grow in range(growth + 1):
        # a block whose core holds an object cut by the halo's edge is decoded again with twice the
        # halo (up to HALO_GROWTH times); what is still cut then is joined across faces at the end
        region = _grow(area, halo << grow, job.grid_shape)
        gen = _blend_region(model, chw, job.plan, region, job.lohi, job.head, stop)
        while True:
            try:
                event = next(gen)
            except StopIteration as fin:
                out = fin.value
                break
            yield TileDone(event.tile, event.tiles, plane=index, planes=len(cores))
        if isinstance(inner_at[0], slice):  # the core's pixels, relative to the region
            inner = tuple(slice(c.start - r.start, c.stop - r.start) for c, r in zip(inner_at, region, strict=True))
        else:
            inner = tuple(i - r.start for i, r in zip(inner_at, region, strict=True))
        if not job.objects:
            present = _semantic_labels(model, out, labels_out, core, inner)
            cut: list = []
            break
        decoded = _decode_region(model, out, region, job.grid_shape, inner)
        if not decoded[3] or grow == growth or halo == 0:
            labels_out[core] = decoded[0]
            present, cut = decoded[1], [int(c) for c in decoded[2]]
            break
        yield Message(f"block {index + 1}: an object is wider than the {halo << grow}px halo; "
                      f"decoding it again with {halo << (grow + 1)}px", "info")
    if probabilities_out is not None:
        from ._forward import expand_probabilities

        p = expit(out[:1]).astype(np.float32) if job.head else out
        if job.factor == 1.0:
            p = p[(slice(None), *inner)]
        else:  # interpolated back to the image's pixels as the whole-image path does, from the region
            on_grid = p
            p = resample_region(lambda ys, xs: on_grid[:, ys.start - region[0].start: ys.stop - region[0].start,
                                                       xs.start - region[1].start: xs.stop - region[1].start],
                                job.grid_shape, job.shape, core)
        probabilities_out[(slice(None), *core)] = expand_probabilities(p)
    return present, cut


def iter_predict_blocks(model, read: Reader, shape: Sequence[int], labels_out, *, probabilities_out=None,
                        block: int = DEFAULT_BLOCK, halo: int = DEFAULT_HALO, tile: int | None = None,
                        overlap: float = 0.25, split_instances: bool = False, stop: threading.Event | None = None,
                        tta: bool = False, pixel_size: Sequence[float] | None = None
                        ) -> Generator[TileDone | BlockDone | Message, None, BlockResult]:
    """Predict a 2D image block by block into ``labels_out`` (and ``probabilities_out``): a generator.

    ``read(ys, xs)``: the raw image's (y, x[, c]) pixels of two slices (a numpy array, a zarr array
    or a lazy TIFF behind it); ``shape``: the image's (Y, X). ``labels_out``: a writable (Y, X)
    integer array (numpy or zarr; int32 needs Y x X < 2**31), written one block core at a time and
    renumbered in a last pass; ``probabilities_out``: a writable (K, Y, X) float32 array or None.
    ``block``: block side; ``halo``: pixels around a block decoded with it (objects up to about this
    size are found exactly as in the whole image); ``tile`` (default :func:`default_block_tile`:
    256 on the CPU, 512 on a GPU) and ``overlap`` define the global tile grid. Yields TileDone per tile (``plane`` = block) and
    BlockDone per block; returns a :class:`BlockResult` (``stopped`` when ``stop`` was set: the
    outputs are then incomplete). ``pixel_size``: the image's µm per pixel, or None.

    A model that resamples (object scale != 1, or a pixel size other than its own) runs on the
    whole-image path's resampled grid: tiles, blocks' regions and ``halo`` are in its pixels, each
    tile is resampled from the image window it covers with the whole plane's sample positions, and
    the labels (nearest) and probabilities (bilinear) come back to the image's pixels as in the
    whole-image path; a Message says the image was resampled.
    """
    if tta:
        model = model.replace(tta=True)
    job = plan_blocks(model, read, shape, block=block, halo=halo, tile=tile, overlap=overlap,
                      split_instances=split_instances, labels_dtype=labels_out.dtype, pixel_size=pixel_size)
    yield from resampling_note(job)
    result = BlockResult(job.shape, len(job.grid), Kind.INSTANCES if job.objects else Kind.SEMANTIC,
                         tile=job.plan.size[0])
    seen: list[np.ndarray] = []  # per block, the ids its core holds
    cut: set[int] = set()
    n = len(job.grid)
    try:
        for bi in range(n):
            check_stop(stop)
            present, cut_here = yield from iter_block(model, job, read, bi, labels_out, probabilities_out, stop)
            seen.append(present)
            cut.update(cut_here)
            release_free_memory()  # the next block starts from this block's memory given back
            yield BlockDone(bi + 1, n)
        yield from finish_blocks(job, labels_out, seen, cut, result, stop)
    except Stopped:
        result.stopped = True
    return result


def resampling_note(job: BlockJob) -> Generator[Message, None, None]:
    """The Message that says a job's image is resampled (none when it is not)."""
    if job.factor != 1.0:
        mh, mw = job.grid_shape
        why = job.note or f"object scale {job.factor:g}: resampling the image by {job.factor:.3g}"
        yield Message(f"{why} ({job.shape[0]}x{job.shape[1]} -> {mh}x{mw} pixels, block by block)")


def finish_blocks(job: BlockJob, labels_out, seen: list, cut: set, result: BlockResult,
                  stop: threading.Event | None = None) -> Generator[BlockDone, None, None]:
    """After every block: number the objects (and join those cut by a halo), or count the classes."""
    if job.objects:
        yield from _renumber(labels_out, job.grid, seen, cut, result, stop)
    else:
        result.objects = len(np.unique(np.concatenate(seen))) if seen else 0


def _semantic_labels(model, probs: np.ndarray, labels_out, core, inner) -> np.ndarray:
    """Per-pixel class labels of a block core (no halo: nothing to stitch); returns the classes present."""
    from ._image import labels_from_probabilities

    labels = _take(labels_from_probabilities(probs, model.label_mode), inner)
    labels_out[core] = labels
    return np.unique(labels)


def _decode_region(model, out: np.ndarray, region, shape, inner):
    """Decode a block with its halo: (labels, canonical id lookup, core labels, cut object in the core?)."""
    from ..objects import instances_from_probabilities, split_solidity
    from ._image import HEAD_DECODING

    spec = model.spec
    if spec.has_regression_head:
        from ..objects import decode

        labels = decode(out, spec.head, origin=(region[0].start, region[1].start), **HEAD_DECODING.get(spec.head, {}))
    else:
        labels = instances_from_probabilities(out, object_area=model.info.object_area,
                                              min_solidity=split_solidity(model.info.object_solidity))
    ids, canon, is_cut = _canonical_ids(labels, region, shape)
    lut = np.zeros(int(labels.max()) + 1, np.int64)
    lut[ids] = canon
    written = lut[_take(labels, inner)]
    present = np.unique(written)
    present = present[present > 0]
    cut_here = np.intersect1d(canon[is_cut], present)
    return written, present, cut_here, bool(cut_here.size)


def _renumber(labels_out, grid: BlockGrid, seen: list, cut: set, result: BlockResult, stop
              ) -> Generator[BlockDone, None, None]:
    """Join objects cut by a halo across block faces, then number all 1..N by their first pixel."""
    ids = np.unique(np.concatenate(seen)) if seen else np.zeros(0, np.int64)
    counts = np.unique(np.concatenate(seen), return_counts=True)[1] if seen else np.zeros(0)
    union = _Union()
    if cut:
        for a, b in _face_pairs(labels_out, grid):
            if int(a) in cut or int(b) in cut:
                union.join(int(a), int(b))
    roots = np.array([union.find(int(i)) for i in ids], np.int64) if union.parent else ids
    final_ids, rank = np.unique(roots, return_inverse=True)
    new = rank.astype(np.int64) + 1  # new id of ids[i]
    result.objects = int(final_ids.size)
    result.merged = int(ids.size - final_ids.size)
    result.crossing = int((counts > 1).sum())
    cores = grid.cores()
    for bi, core in enumerate(cores):
        check_stop(stop)
        lab = np.asarray(labels_out[core])
        fg = lab > 0
        out = np.zeros(lab.shape, lab.dtype)
        out[fg] = new[np.searchsorted(ids, lab[fg])]
        labels_out[core] = out
        yield BlockDone(bi + 1, len(cores), stage="renumber")
