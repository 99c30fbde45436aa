"""Whole-image prediction: tiled inference with smooth blending, 2D/3D/time.

The public entry point :func:`predict_image` is a generator that yields
:class:`~napari_seglab.core.events.TileDone` events and returns a
:class:`Prediction`. Planes of a stack (every index of the T and Z axes) are
predicted one by one; outputs are aligned with the input's spatial axes.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import product

import numpy as np
import torch
from scipy.special import expit

from .checkpoint import Checkpoint, load_checkpoint
from .data import (
    Normalization,
    check_scale,
    normalize,
    percentiles,
    resample_image,
    resample_labels,
    scaled_shape,
    to_chw,
)
from .device import Precision, is_oom, pick_device, precision_for
from .errors import InputError
from .events import Message, TileDone, run_to_completion  # noqa: F401 (part of this module's API)
from .io import check_image_values
from .labels import is_instance_mode
from .metadata import CheckpointMeta
from .models import ModelSpec, get_family
from .tiling import tile_starts  # noqa: F401 (part of this module's API)

CPU_BUDGET_CAP = 2.3 * 2**30
ALIGN = 32


def device_memory_budget(device: torch.device) -> float:
    """Bytes prediction may use on ``device``: free GPU memory x 0.6, or min(2.3 GB, RAM / 2) on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return 0.6 * free * 2  # fp16 activations: about half the float32 bytes per pixel
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        total = 8 * 2**30
    return float(min(CPU_BUDGET_CAP, total / 2))


class LoadedModel:
    """A model ready to predict: network in eval mode, its metadata (``info``) and device.

    ``meta`` may be given typed or in its on-disk dict form; the :attr:`meta`
    property gives the dict form back.
    """

    def __init__(self, model: torch.nn.Module, meta: CheckpointMeta | dict, device: torch.device,
                 precision: Precision):
        self.model, self.info, self.device, self.precision = model, CheckpointMeta.coerce(meta), device, precision

    @property
    def meta(self) -> dict:
        return self.info.to_dict()

    @property
    def spec(self) -> ModelSpec:
        return self.info.model

    @property
    def label_mode(self) -> str:
        return self.info.label_mode

    @property
    def normalization(self) -> Normalization:
        return self.info.normalization


def load_model(source: str | Checkpoint, device: str | torch.device = "auto", *, bf16_cpu: bool = False
               ) -> LoadedModel:
    """Load a checkpoint (path or :class:`Checkpoint`) onto ``device`` for inference."""
    ckpt = source if isinstance(source, Checkpoint) else load_checkpoint(source)
    dev = device if isinstance(device, torch.device) else pick_device(device)
    precision = precision_for(dev, bf16_cpu=bf16_cpu)
    model = ckpt.build(dev)
    if precision.channels_last and ckpt.spec.family_entry.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return LoadedModel(model=model, meta=ckpt.info, device=dev, precision=precision)


def wrap_model(model: torch.nn.Module, meta: CheckpointMeta, device: torch.device) -> LoadedModel:
    """A LoadedModel around a live (training) model; used for previews and validation."""
    return LoadedModel(model=model, meta=meta, device=device, precision=precision_for(device, training=True))


@dataclass
class Prediction:
    """What :func:`predict_image` returns.

    ``labels``: the image's shape without channels, int32 (class index, 0 =
    background; or object ids for instance outputs). ``probabilities``: float32
    (K, *spatial) when asked for. ``boxes``: rows with y0, x0, y1, x1, class,
    score, plane (detections or object bounding boxes).
    """

    labels: np.ndarray
    probabilities: np.ndarray | None = None
    boxes: list[dict] = field(default_factory=list)
    kind: str = "semantic"  # "semantic" | "instances"
    stopped: bool = False


def window(size_y: int, size_x: int, min_weight: float = 1e-3) -> np.ndarray:
    """Smooth blending weights (Y, X) float32: a separable Hann window floored at min_weight."""
    def hann(n):
        if n < 3:
            return np.ones(n, np.float32)
        return np.maximum(np.sin(np.pi * (np.arange(n) + 0.5) / n) ** 2, min_weight).astype(np.float32)

    return np.outer(hann(size_y), hann(size_x))


def plan_tiles(length: int, tile: int, overlap: float) -> tuple[int, list[int]]:
    """Balanced tiling of one axis: (tile length, start offsets).

    Uses the fewest tiles of at most ``tile`` pixels that share at least
    ``overlap`` x ``tile`` pixels with their neighbours, then shrinks the tile
    (to a multiple of 32 where possible) so no pixel work is wasted.
    """
    if length <= tile:
        return length, [0]
    ov = int(round(tile * overlap))
    n = math.ceil((length - ov) / max(1, tile - ov))
    size = min(tile, length, -(-math.ceil((length + (n - 1) * ov) / n) // ALIGN) * ALIGN)
    if n == 1:
        return size, [0]
    return size, [round(i * (length - size) / (n - 1)) for i in range(n)]


def auto_tile(spatial: Sequence[int], family: str, budget_bytes: float, channels: int = 1,
              out_channels: int = 1) -> int:
    """The largest tile side (multiple of 32) whose forward pass fits ``budget_bytes``.

    The budget first pays for the plane-sized buffers (input, blended output,
    labels); the rest goes to the forward pass. The whole plane is one tile
    when it fits.
    """
    h, w = spatial
    fixed = h * w * (4 * out_channels + 4 + 4 * channels)
    per_pixel = get_family(family).bytes_per_pixel * (1 + 0.1 * (channels - 1))
    max_pixels = max(128 * 128, (budget_bytes - fixed) / per_pixel)
    if h * w <= max_pixels:
        return int(max(h, w))
    return max(128, int(math.sqrt(max_pixels)) // ALIGN * ALIGN)


def _pad_to_multiple(chw: np.ndarray, multiple: int = ALIGN) -> tuple[np.ndarray, tuple[int, int]]:
    h, w = chw.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not ph and not pw:
        return chw, (h, w)
    mode = "reflect" if min(h, w) > max(ph, pw) else "edge"
    return np.pad(chw, ((0, 0), (0, ph), (0, pw)), mode=mode), (h, w)


def _forward(lm: LoadedModel, chw: np.ndarray, *, compact: bool, raw: bool = False) -> np.ndarray:
    """Model output for one normalised (C, Y, X) tile, float32.

    ``compact``: binary models give (1, Y, X) foreground probability, others
    (K, Y, X) softmax; otherwise always (max(K, 2), Y, X) class probabilities.
    ``raw``: the network's outputs (K, Y, X) as they are, no activation (the
    "flows" / "distance" instance heads, decoded by :mod:`.flows`).
    """
    from .losses import probabilities

    padded, (h, w) = _pad_to_multiple(chw)
    x = torch.from_numpy(np.ascontiguousarray(padded, dtype=np.float32))[None].to(lm.device)
    if lm.precision.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), lm.precision.autocast():
        logits = lm.model(x)
    logits = logits.float()[:, :, :h, :w]
    if raw:
        return logits[0].cpu().numpy()
    out = torch.sigmoid(logits) if compact and logits.shape[1] == 1 else probabilities(logits)
    return out[0].cpu().numpy()


def forward_probabilities(lm: LoadedModel, chw: np.ndarray) -> np.ndarray:
    """Class probabilities (K, Y, X) float32 of one normalised (C, Y, X) tile (K >= 2)."""
    return _forward(lm, chw, compact=False)


def _tile_output(lm: LoadedModel, chw: np.ndarray, raw: bool) -> np.ndarray:
    """Compact probabilities, or raw outputs, of one tile (:func:`_forward`, looked up at call time)."""
    return _forward(lm, chw, compact=True, raw=True) if raw else _forward(lm, chw, compact=True)


def forward_raw(lm: LoadedModel, chw: np.ndarray) -> np.ndarray:
    """Raw network outputs (K, Y, X) float32 of one normalised (C, Y, X) tile (no activation)."""
    return _forward(lm, chw, compact=False, raw=True)


def expand_probabilities(out: np.ndarray) -> np.ndarray:
    """Compact output (1, Y, X) foreground probability -> (2, Y, X); (K, Y, X) unchanged."""
    return np.concatenate([1 - out, out]) if out.shape[0] == 1 else out


def predict_plane_probabilities(lm: LoadedModel, chw: np.ndarray, *, tile: int, overlap: float,
                                lohi: tuple | None = None, stop: threading.Event | None = None, raw: bool = False
                                ) -> Iterator[tuple[int, int, np.ndarray | None]]:
    """Yield (tile index, tile count, None) per tile; the last item carries the blended output.

    ``chw``: a (C, Y, X) plane, raw when ``lohi`` (per-channel percentiles)
    is given (each tile is then normalised on the fly, so no normalised copy
    of the whole plane is made), else already normalised. The output is
    compact (see :func:`_forward`): (1, Y, X) foreground probability for
    binary models, (K, Y, X) otherwise. Overlapping tiles are blended with a
    separable Hann window; a plane that fits is one tile. ``raw``: blend the
    network's raw outputs (K, Y, X) instead (instance heads: decode the
    blended plane once, so objects on tile borders stay whole).
    """
    from .data import normalize

    def prepared(a):
        return normalize(a, *lohi) if lohi is not None else a

    h, w = chw.shape[-2:]
    tile_y, ys = plan_tiles(h, tile, overlap)
    tile_x, xs = plan_tiles(w, tile, overlap)
    positions = list(product(ys, xs))
    if len(positions) == 1:
        yield 1, 1, _tile_output(lm, prepared(chw), raw)
        return
    k = lm.spec.out_channels if raw else 1 if lm.spec.out_channels == 1 else max(2, lm.spec.n_classes)
    acc = np.zeros((k, h, w), np.float32)
    # the window is separable and tiles form a grid, so the weight sum is an outer product
    wy, wx = window(tile_y, 1)[:, 0], window(1, tile_x)[0]
    sum_y, sum_x = np.zeros(h, np.float32), np.zeros(w, np.float32)
    for y0 in ys:
        sum_y[y0:y0 + tile_y] += wy
    for x0 in xs:
        sum_x[x0:x0 + tile_x] += wx
    weight = np.outer(wy, wx)
    for i, (y0, x0) in enumerate(positions):
        if stop is not None and stop.is_set():
            return
        out = _tile_output(lm, prepared(chw[:, y0:y0 + tile_y, x0:x0 + tile_x]), raw)
        out *= weight
        acc[:, y0:y0 + tile_y, x0:x0 + tile_x] += out
        if i + 1 < len(positions):
            yield i + 1, len(positions), None
    for y in range(0, h, 1024):
        acc[:, y:y + 1024] /= np.outer(sum_y[y:y + 1024], sum_x)
    yield len(positions), len(positions), acc


def _argmax_rows(probs: np.ndarray, rows: int = 512) -> np.ndarray:
    """argmax over axis 0 as int32, in row blocks (no full-size int64 temporary)."""
    out = np.empty(probs.shape[1:], np.int32)
    for y in range(0, probs.shape[1], rows):
        out[y:y + rows] = np.argmax(probs[:, y:y + rows], axis=0)
    return out


def labels_from_probabilities(probs: np.ndarray, label_mode: str, *, split_instances: bool = False) -> np.ndarray:
    """Probabilities -> (Y, X) int32 labels for the checkpoint's label mode.

    ``probs``: (K, Y, X) class probabilities, or the compact (1, Y, X)
    foreground probability of a binary model.
    """
    from .instances import instances_from_foreground, instances_from_probabilities

    if is_instance_mode(label_mode) and probs.shape[0] == 3:
        return instances_from_probabilities(probs).astype(np.int32)
    fg = probs[0] if probs.shape[0] == 1 else (1 - probs[0] if probs.shape[0] == 2 else None)
    if split_instances:
        return instances_from_foreground(fg if fg is not None else 1 - probs[0]).astype(np.int32)
    if fg is not None:
        return (fg > 0.5).astype(np.int32)
    return _argmax_rows(probs)


#: decoding settings of the instance heads. flows: following the flows for 200 steps and dropping
#: objects whose own flows differ from the predicted ones by more than 0.8 (mean squared, unit
#: vectors) scored best on AP@0.5 on a real DSB nuclei image (0.86-0.88; 0.4 drops good objects
#: of a young model)
HEAD_DECODING = {"flows": {"flow_threshold": 0.8}, "distance": {}}


def decode_head(outputs: np.ndarray, head: str) -> np.ndarray:
    """Objects (Y, X) int32 from the blended raw outputs (K, Y, X) of a "flows" / "distance" head."""
    from .flows import decode

    return decode(outputs, head, **HEAD_DECODING.get(head, {}))


def plane_indices(image_shape: Sequence[int], axes: str) -> list[tuple[int, ...]]:
    """Indices over the non-spatial, non-channel axes (T, Z): one tuple per plane."""
    lead = [image_shape[i] for i, a in enumerate(axes) if a in "TZ"]
    return list(product(*[range(n) for n in lead])) if lead else [()]


def predict_image(model: LoadedModel, image: np.ndarray, axes: str | None = None, *,
                  tile: int | None = None, overlap: float = 0.25, planes: Sequence[tuple[int, ...]] | None = None,
                  probabilities: bool = False, split_instances: bool = False,
                  score_threshold: float = 0.5, memory_budget: float | None = None,
                  stop: threading.Event | None = None) -> Generator[TileDone | Message, None, Prediction]:
    """Predict every plane (or the ``planes`` given) of ``image``.

    ``image``: canonical axes (a subset of TZYXC, see :mod:`.io`); ``axes``
    defaults to a guess from the shape and the model's channel count.
    Yields TileDone per tile (and Messages); returns a :class:`Prediction`
    whose ``labels`` have the image's shape without ``C``. Planes not
    predicted stay 0. When ``stop`` is set, returns what is done with
    ``stopped=True``.
    """
    from .io import guess_axes

    spec = model.spec
    image = check_image_values(np.asarray(image))
    if axes is None:
        axes = guess_axes(image.shape, rgb=spec.in_channels > 1 and image.ndim >= 3 and image.shape[-1] == spec.in_channels)
    if len(axes) != image.ndim:
        raise InputError(f"axes {axes!r} do not match an image of shape {image.shape}")
    has_c = "C" in axes
    channels = image.shape[-1] if has_c else 1
    if channels != spec.in_channels:
        raise InputError(f"the model was trained on {spec.in_channels}-channel images but this image has "
                         f"{channels} channel(s)")
    spatial = image.shape[:-1] if has_c else image.shape
    ysize, xsize = spatial[-2], spatial[-1]
    # the network sees planes resampled by the checkpoint's object scale (tiles are in its pixels)
    scale = check_scale(model.info.scale) if spec.semantic else 1.0
    if not tile:
        budget = memory_budget if memory_budget is not None else device_memory_budget(model.device)
        out_ch = spec.out_channels if spec.has_regression_head or spec.out_channels == 1 else spec.n_classes
        tile = auto_tile(scaled_shape((ysize, xsize), scale), spec.family, budget, channels, out_ch)
    tile = max(ALIGN, int(tile))
    all_planes = plane_indices(image.shape, axes)
    todo = all_planes if planes is None else [tuple(p) for p in planes]
    for p in todo:
        if p not in all_planes:
            raise InputError(f"plane {p} is outside the image's planes {all_planes[0]}..{all_planes[-1]}")
    labels = np.zeros(spatial, np.int32)
    k = max(2, spec.n_classes)
    probs_out = np.zeros((k, *spatial), np.float32) if probabilities and spec.semantic else None
    boxes: list[dict] = []
    norm = model.normalization
    stopped = False
    for pi, index in enumerate(todo):
        if stop is not None and stop.is_set():  # planes of one tile have no tile loop that would notice
            stopped = True
            break
        plane = image[index] if index else image
        raw = to_chw(plane, spec.in_channels)
        lohi = (norm.lo, norm.hi) if (not norm.per_image and norm.lo) else percentiles(raw, norm.low, norm.high)
        if not spec.semantic:
            chw = normalize(raw, *lohi)
            gen = spec.family_entry.predict_objects(model, chw, tile=tile, overlap=overlap,
                                                    score_threshold=score_threshold, stop=stop)
            result = None
            try:
                while True:
                    done, total = next(gen)
                    yield TileDone(done, total, pi, len(todo))
            except StopIteration as fin:
                result = fin.value
            if result is None:
                stopped = True
                break
            inst, det = result
            labels[index] = inst
            for row in det:
                boxes.append({**row, "plane": ",".join(map(str, index)) if index else ""})
            continue
        probs = None
        if scale != 1.0:
            raw = resample_image(raw, scaled_shape(raw.shape, scale))
        head = spec.has_regression_head
        for done, total, out in _with_oom_retry(model, raw, lohi, tile, overlap, stop, head):
            if isinstance(out, Message):
                yield out
                continue
            yield TileDone(done, total, pi, len(todo))
            probs = out
        if probs is None:
            stopped = True
            break
        # objects are found at the resampled size (the network's scale), then mapped back
        if head:  # decode the blended raw outputs of the whole plane, then keep [1 - p, p] of the foreground
            plane_labels = decode_head(probs, spec.head)
            probs = expit(probs[:1]).astype(np.float32, copy=False)
        else:
            plane_labels = labels_from_probabilities(probs, model.label_mode, split_instances=split_instances)
        labels[index] = resample_labels(plane_labels, (ysize, xsize))
        if probs_out is not None:
            if scale != 1.0:
                probs = resample_image(probs, (ysize, xsize))
            probs_out[(slice(None), *index)] = expand_probabilities(probs)
        del probs
    kind = "instances" if not spec.semantic or is_instance_mode(model.label_mode) or split_instances \
        else "semantic"
    return Prediction(labels=labels, probabilities=probs_out, boxes=boxes, kind=kind, stopped=stopped)


def _with_oom_retry(model: LoadedModel, chw: np.ndarray, lohi: tuple | None, tile: int, overlap: float,
                    stop: threading.Event | None, raw: bool = False):
    """Run tiled prediction; on an out-of-memory error halve the tile, then fall back to the CPU."""
    while True:
        try:
            yield from predict_plane_probabilities(model, chw, tile=tile, overlap=overlap, lohi=lohi, stop=stop,
                                                   raw=raw)
            return
        except (RuntimeError, MemoryError) as exc:
            if not is_oom(exc) and not isinstance(exc, MemoryError):
                raise
            if model.device.type == "cuda":
                torch.cuda.empty_cache()
            if tile > 128:
                tile = max(128, tile // 2 // ALIGN * ALIGN)
                yield 0, 1, Message(f"out of memory: retrying with {tile}px tiles", "warning")
                continue
            if model.device.type != "cpu":
                model.model.to("cpu")
                model.device = torch.device("cpu")
                model.precision = precision_for(model.device)
                yield 0, 1, Message("out of GPU memory even with small tiles: continuing on the CPU", "warning")
                continue
            raise InputError("out of memory even with 128px tiles; close other programs or use a machine "
                             "with more memory") from exc
