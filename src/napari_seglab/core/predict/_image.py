"""Whole-image prediction: loaded models, tiled inference with smooth blending, 2D/3D/time.

:func:`iter_predict_image` (the name the
fronts use) is a generator that yields
:class:`~napari_seglab.core.events.TileDone` events and returns a
:class:`Prediction`; :func:`napari_seglab.core.api.predict_image` is its
blocking twin. Planes of a stack (every index of the T and Z axes) are
predicted one by one (:mod:`napari_seglab.core.predict._forward` runs the network over the tiles of one
plane, :mod:`napari_seglab.core.tiling` plans and blends them); outputs are aligned with the
input's spatial axes.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from itertools import product

import numpy as np
import torch
from scipy.special import expit

from ..data import (
    check_scale,
    normalize,
    percentiles,
    prediction_factor,
    resample_image,
    resample_labels,
    scaled_shape,
    to_chw,
)
from ..device import Precision, pick_device, precision_for
from ..errors import InputError
from ..events import Message, Stopped, TileDone, check_stop, relay
from ..io import check_image_values
from ..labels import is_instance_mode
from ..models import Checkpoint, CheckpointMeta, DescribedModel, Kind, get_family, load_checkpoint
from ..settings import check_used
from ..tiling import ALIGN, check_overlap
from ._blocks import scaling_sample
from ._forward import (
    expand_probabilities,
    iter_plane_with_fallback,
    iter_with_fallback,
)
from ._options import PredictOptions

CPU_BUDGET_CAP = 2.3 * 2**30


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


class LoadedModel(DescribedModel):
    """A model ready to predict: network in eval mode, its metadata (``info``) and device.

    ``meta`` may be given typed or in its on-disk dict form; the :attr:`meta`
    property gives the dict form back. ``tta``: test-time augmentation (flips,
    see :func:`~napari_seglab.core.predict._forward._tile_output`). ``scaling``: a function of a raw
    (C, Y, X) plane giving the per-channel ``(lo, hi)`` that map to 0 and 1 (a bioimage.io package's
    preprocessing); None: the checkpoint's normalisation. ``max_tile``: the largest tile side the
    network takes (a package of fixed input size), None: any. ``halo``: output pixels at a tile's
    border the network declares unreliable; tiles then overlap by at least twice that.
    """

    def __init__(self, model: torch.nn.Module, meta: CheckpointMeta | dict, device: torch.device,
                 precision: Precision, tta: bool = False, scaling=None, max_tile: int | None = None,
                 halo: int = 0):
        self.model, self.info, self.device, self.precision = model, CheckpointMeta.coerce(meta), device, precision
        self.tta = bool(tta)
        self.scaling, self.max_tile, self.halo = scaling, max_tile, int(halo)

    def replace(self, **changes) -> LoadedModel:
        """A copy with some of ``model``, ``meta``, ``device``, ``precision``, ``tta`` changed (this one is kept)."""
        values = {"model": self.model, "meta": self.info, "device": self.device, "precision": self.precision,
                  "tta": self.tta, "scaling": self.scaling, "max_tile": self.max_tile, "halo": self.halo}
        return LoadedModel(**{**values, **changes})

    def input_scaling(self, raw: np.ndarray) -> tuple:
        """Per-channel ``(lo, hi)`` of a raw (C, Y, X) plane: what maps to 0 and 1 before the network."""
        if self.scaling is not None:
            return self.scaling(raw)
        norm = self.normalization
        return (norm.lo, norm.hi) if (not norm.per_image and norm.lo) else percentiles(raw, norm.low, norm.high)


def load_model(source: str | Checkpoint, device: str | torch.device = "auto", *, bf16_cpu: bool = False,
               runtime: str = "auto") -> LoadedModel:
    """Load a checkpoint (path or :class:`Checkpoint`) or a bioimage.io package onto ``device`` for inference.

    ``runtime``: "torch", "onnx" (the network exported to ONNX in memory and run by onnxruntime on the
    CPU; a package runs its ONNX weights) or "auto" (the default: torch, switching to onnx once the model
    has predicted :data:`~napari_seglab.core.predict._onnx.AUTO_ONNX_PIXELS` pixels, on a CPU with
    onnxruntime installed, for the per-pixel families; where onnx is faster, a batch or a large image).
    """
    from ._onnx import AutoNetwork, onnx_network, use_onnx

    if not isinstance(source, Checkpoint):
        from ._package import is_package, load_package

        if is_package(source):
            return load_package(source, device, weights="onnx" if runtime == "onnx" else None)
    ckpt = source if isinstance(source, Checkpoint) else load_checkpoint(source)
    dev = device if isinstance(device, torch.device) else pick_device(device)
    onnx = use_onnx(runtime, dev, ckpt.spec.family_entry)
    if onnx and runtime == "onnx":
        return LoadedModel(model=onnx_network(ckpt), meta=ckpt.info, device=dev, precision=precision_for(dev))
    precision = precision_for(dev, bf16_cpu=bf16_cpu)
    model = ckpt.build(dev)
    if precision.channels_last and ckpt.spec.family_entry.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if onnx and not bf16_cpu:  # "auto": onnxruntime runs float32; bfloat16 torch is not compared with it
        model = AutoNetwork(model, ckpt).eval()
    return LoadedModel(model=model, meta=ckpt.info, device=dev, precision=precision)


def wrap_model(model: torch.nn.Module, meta: CheckpointMeta | dict, device: torch.device) -> LoadedModel:
    """A LoadedModel around a live (training) model; used for previews and validation."""
    return LoadedModel(model=model, meta=meta, device=device, precision=precision_for(device, training=True))


@dataclass
class Prediction:
    """What :func:`iter_predict_image` returns.

    ``labels``: the image's shape without channels, int32 (class index, 0 =
    background; or object ids for instance outputs; all 0 for a box
    detector). ``probabilities``: float32 (K, *spatial) when asked for.
    ``head_outputs``: the raw (K, *spatial) float32 outputs of a "flows" or
    "distance" instance head when asked for (what the objects were decoded
    from, e.g. for :func:`napari_seglab.core.objects.flow_agreement`), else None.
    ``boxes``: rows with y0, x0, y1, x1, class, score, plane (detections or
    object bounding boxes); for a box detector (``kind.boxes``), the
    detections at or above the score threshold, the whole result. ``kind``:
    what the labels hold (a :class:`~napari_seglab.core.models.Kind`; its value string is taken too).
    """

    labels: np.ndarray
    probabilities: np.ndarray | None = None
    boxes: list[dict] = field(default_factory=list)
    kind: Kind = Kind.SEMANTIC
    stopped: bool = False
    head_outputs: np.ndarray | None = None
    #: 3D objects (:func:`~napari_seglab.core.predict._volume.iter_predict_volume`): the z step / pixel size used
    anisotropy: float | None = None
    #: measurements of 3D objects, one dict per object (filled by the fronts that show them)
    objects: list[dict] | None = None

    def __post_init__(self):
        self.kind = Kind(self.kind)


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


def _argmax_rows(probs: np.ndarray, rows: int = 512) -> np.ndarray:
    """argmax over axis 0 as int32, in row blocks (no full-size int64 temporary)."""
    out = np.empty(probs.shape[1:], np.int32)
    for y in range(0, probs.shape[1], rows):
        out[y:y + rows] = np.argmax(probs[:, y:y + rows], axis=0)
    return out


def labels_from_probabilities(probs: np.ndarray, label_mode: str, *, split_instances: bool = False,
                              guide: np.ndarray | None = None, object_area: float | None = None,
                              min_solidity: float | None = None) -> np.ndarray:
    """Probabilities -> (Y, X) int32 labels for the checkpoint's label mode.

    ``probs``: (K, Y, X) class probabilities, or the compact (1, Y, X)
    foreground probability of a binary model. ``split_instances`` splits the
    foreground into objects; with ``guide``, the normalised image (C, Y, X)
    in [0, 1], the foreground first snaps to the image's edges
    (:func:`~napari_seglab.core.objects._refine.snap_to_edges`), which parts objects a scribble-trained
    network merges. ``object_area``: the typical object's area at the
    network's scale (the checkpoint's): decoded objects under
    ``FRAGMENT_FRACTION`` of it are fragments, dropped. ``min_solidity``: objects less convex than this are
    split in two where that helps (:func:`~napari_seglab.core.objects.split_non_convex`; None: never).
    """
    from ..objects import instances_from_foreground, instances_from_probabilities

    if is_instance_mode(label_mode) and probs.shape[0] == 3:
        return instances_from_probabilities(probs, object_area=object_area,
                                            min_solidity=min_solidity).astype(np.int32)
    fg = probs[0] if probs.shape[0] == 1 else (1 - probs[0] if probs.shape[0] == 2 else None)
    if split_instances:
        from ..objects import FRAGMENT_FRACTION, SPLIT_THRESHOLD, snap_to_edges, split_non_convex

        fg = fg if fg is not None else 1 - probs[0]
        min_size = max(8, int(FRAGMENT_FRACTION * object_area)) if object_area else 8
        if guide is None:
            objects = instances_from_foreground(fg, min_size=min_size)
        else:
            objects = instances_from_foreground(snap_to_edges(fg, guide), threshold=SPLIT_THRESHOLD,
                                                min_size=min_size)
        return split_non_convex(objects, min_solidity).astype(np.int32)
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
    from ..objects import decode

    return decode(outputs, head, **HEAD_DECODING.get(head, {}))


def plane_indices(image_shape: Sequence[int], axes: str) -> list[tuple[int, ...]]:
    """Indices over the non-spatial, non-channel axes (T, Z): one tuple per plane."""
    lead = [image_shape[i] for i, a in enumerate(axes) if a in "TZ"]
    return list(product(*[range(n) for n in lead])) if lead else [()]


@dataclass(frozen=True)
class _Job:
    """What :func:`iter_predict_image` settled before the first plane: axes, shapes, tile, planes."""

    axes: str
    spatial: tuple[int, ...]
    scale: float
    tile: int
    planes: list[tuple[int, ...]]
    #: why ``scale`` differs from the checkpoint's (the image's pixel size is not the model's), or None
    note: str | None = None


def image_axes(spec, image: np.ndarray, axes: str | None) -> tuple[str, tuple[int, ...]]:
    """(axes, spatial shape) of an image for a model of ``spec``: axes guessed when None, the channels checked."""
    from ..io import guess_axes

    if axes is None:
        axes = guess_axes(image.shape, rgb=spec.in_channels > 1 and image.ndim >= 3 and image.shape[-1] == spec.in_channels)
    if len(axes) != image.ndim:
        raise InputError(f"axes {axes!r} do not match an image of shape {image.shape}")
    has_c = "C" in axes
    channels = image.shape[-1] if has_c else 1
    if channels != spec.in_channels:
        raise InputError(f"the model was trained on {spec.in_channels}-channel images but this image has "
                         f"{channels} channel(s)")
    return axes, (image.shape[:-1] if has_c else image.shape)


def _plan_job(model: LoadedModel, image: np.ndarray, axes: str | None, tile: int | None, overlap: float,
              planes: Sequence[tuple[int, ...]] | None, memory_budget: float | None,
              pixel_size: Sequence[float] | None = None) -> _Job:
    """Check the request against the model and the image (InputError on a mismatch); choose the tile."""
    spec = model.spec
    check_overlap(overlap)
    axes, spatial = image_axes(spec, image, axes)
    ysize, xsize = spatial[-2], spatial[-1]
    # every family sees planes resampled by the checkpoint's object scale, as it trained (tiles are in its pixels)
    # an image of another pixel size is resampled further, so its objects reach the network at the trained size
    scale, note = prediction_factor(check_scale(model.info.scale), pixel_size, model.info.pixel_size)
    if not tile:
        budget = memory_budget if memory_budget is not None else device_memory_budget(model.device)
        out_ch = spec.out_channels if spec.has_regression_head or spec.out_channels == 1 else spec.n_classes
        tile = auto_tile(scaled_shape((ysize, xsize), scale), spec.family, budget, spec.in_channels, out_ch)
    tile = max(ALIGN, int(tile))
    if model.max_tile:  # a package of fixed input size
        tile = min(tile, model.max_tile)
    all_planes = plane_indices(image.shape, axes)
    todo = all_planes if planes is None else [tuple(p) for p in planes]
    for p in todo:
        if p not in all_planes:
            raise InputError(f"plane {p} is outside the image's planes {all_planes[0]}..{all_planes[-1]}")
    return _Job(axes, tuple(spatial), scale, tile, todo, note)


def _semantic_plane(model: LoadedModel, raw: np.ndarray, lohi: tuple, job: _Job, overlap: float,
                    split_instances: bool, want_probs: bool, stop: threading.Event | None,
                    outputs: list | None = None):
    """One plane through a semantic network (or an instance head): (labels, probabilities or None, model).

    ``outputs``: a list that receives an instance head's raw outputs of the plane, at the image's size.

    Objects are found at the resampled size (the network's scale), then
    mapped back; the model returned is the one the plane ran on (a CPU copy
    after an out-of-memory fallback).
    """
    spec = model.spec
    size = raw.shape[-2:]
    if job.scale != 1.0:
        raw = resample_image(raw, scaled_shape(raw.shape, job.scale))
    head = spec.has_regression_head
    probs, model = yield from iter_plane_with_fallback(model, raw, tile=job.tile, overlap=overlap, lohi=lohi,
                                                       stop=stop, raw=head)
    if head and outputs is not None:
        outputs.append(probs if job.scale == 1.0 else resample_image(probs, size))
    guide = np.clip(normalize(raw, *lohi), 0, 1) if split_instances and not head else None
    plane_labels, probs = decode_plane(model, probs, guide)
    if not want_probs:
        probs = None
    elif job.scale != 1.0:
        probs = resample_image(probs, size)
    return resample_labels(plane_labels, size), probs, model


def decode_plane(model: LoadedModel, outputs: np.ndarray, guide: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(labels (Y, X), probabilities) of one plane's blended network outputs, at the network's scale.

    An instance head's raw outputs are decoded into objects, and the probabilities are its foreground's
    (1, Y, X); a per-pixel network's class probabilities (K, Y, X) become classes or objects by the model's
    label mode (``guide``: the normalised plane, to split a semantic model's touching objects).
    """
    from ..objects import split_solidity

    if model.spec.has_regression_head:
        return decode_head(outputs, model.spec.head), expit(outputs[:1]).astype(np.float32, copy=False)
    return labels_from_probabilities(outputs, model.label_mode, split_instances=guide is not None, guide=guide,
                                     object_area=model.info.object_area,
                                     min_solidity=split_solidity(model.info.object_solidity)), outputs


def _object_plane(model: LoadedModel, chw: np.ndarray, job: _Job, overlap: float, score_threshold: float,
                  stop: threading.Event | None):
    """One normalised plane through an object or box family's tiled detection, under the out-of-memory policy.

    The plane is resampled by the checkpoint's object scale first, as the
    family's training images were, and the objects and boxes found are mapped
    back to the plane's pixels. Returns ((labels, rows), the model it ran on),
    as :func:`_semantic_plane` does.
    """
    detect = model.spec.family_entry.predict_objects
    size = chw.shape[-2:]
    if job.scale != 1.0:
        chw = resample_image(chw, scaled_shape(size, job.scale))

    def run(lm, side):
        return detect(lm, chw, tile=side, overlap=overlap, score_threshold=score_threshold, stop=stop)

    (labels, rows), model = yield from iter_with_fallback(run, model, job.tile)
    if job.scale != 1.0:
        labels = resample_labels(labels, size)
        rows = _unscaled_rows(rows, size[0] / chw.shape[-2], size[1] / chw.shape[-1])
    return (labels, rows), model


def _unscaled_rows(rows: Sequence[dict], fy: float, fx: float) -> list[dict]:
    """Box rows found on a resampled plane, in the original plane's pixels (corners times ``fy`` / ``fx``)."""
    out = []
    for r in rows:
        out.append({**r, "y0": round(float(r["y0"]) * fy, 2), "x0": round(float(r["x0"]) * fx, 2),
                    "y1": round(float(r["y1"]) * fy, 2), "x1": round(float(r["x1"]) * fx, 2)})
    return out


def iter_predict_image(model: LoadedModel, image: np.ndarray, axes: str | None = None, *,
                       tile: int | None = None, overlap: float = 0.25,
                       planes: Sequence[tuple[int, ...]] | None = None, probabilities: bool = False,
                       split_instances: bool = False, score_threshold: float = 0.5,
                       memory_budget: float | None = None, stop: threading.Event | None = None,
                       tta: bool = False, head_outputs: bool = False,
                       pixel_size: Sequence[float] | None = None) -> Generator[TileDone | Message, None, Prediction]:
    """Predict every plane (or the ``planes`` given) of ``image``: a generator of progress events.

    ``image``: canonical axes (a subset of TZYXC, see :mod:`napari_seglab.core.io._tiff`); ``axes``
    defaults to a guess from the shape and the model's channel count.
    ``tile``: tile side in pixels (default: the largest that fits the memory
    budget); ``overlap``: in [0, 1). Yields TileDone per tile (and warning
    Messages); returns a :class:`Prediction` whose ``labels`` have the image's
    shape without ``C`` (all 0 for a box detector, whose result is
    ``boxes``, ``kind.boxes``). Planes not predicted stay 0. When ``stop`` is set,
    returns what is done with ``stopped=True``. ``tta``: test-time augmentation,
    every tile also predicted flipped three ways and the outputs averaged
    (U-Net / FCN models; about 4x the time). ``head_outputs``: keep an instance
    head's raw outputs in :attr:`Prediction.head_outputs`. ``pixel_size``: the image's µm per pixel
    (``(y, x)``, or ``(z, y, x)``: the last two count); when the checkpoint records another, the image is
    resampled to the model's pixel size (combined with its object scale) and a Message says so. For a blocking call use
    :func:`napari_seglab.core.api.predict_image`.
    """
    options = PredictOptions(tile=tile or 0, overlap=overlap, split_instances=split_instances, tta=tta,
                             score_threshold=score_threshold).check()
    spec = model.spec
    check_used(options, spec.family_entry)  # --tta or splitting with a model that would ignore them
    if tta:
        model = model.replace(tta=True)  # the caller's (perhaps cached) model is left as it was
    image = check_image_values(np.asarray(image))
    job = _plan_job(model, image, axes, tile, overlap, planes, memory_budget, pixel_size)
    if job.note:
        yield Message(job.note)
    if model.halo:  # a package's halo: neighbouring tiles cover each other's unreliable borders
        overlap = max(overlap, min(0.5, 2 * model.halo / job.tile))
    labels = np.zeros(job.spatial, np.int32)
    probs_out = np.zeros((max(2, spec.n_classes), *job.spatial), np.float32) if probabilities and spec.semantic \
        else None
    boxes: list[dict] = []
    outputs_out = None
    current = model  # becomes a CPU copy for the rest of this call after an out-of-memory fallback
    stopped = False
    try:
        for pi, index in enumerate(job.planes):
            check_stop(stop)  # planes of one tile have no tile loop that would notice
            plane = image[index] if index else image
            raw = to_chw(plane, spec.in_channels)
            lohi = model.input_scaling(scaling_sample(raw))  # the block-wise path's sample too
            tagged = partial(_tag_plane, plane=pi, planes=len(job.planes))
            if not spec.semantic:  # object and box families: their own tiled prediction
                (inst, det), current = yield from relay(
                    _object_plane(current, normalize(raw, *lohi), job, overlap, score_threshold, stop),
                    tagged)
                labels[index] = inst
                boxes.extend({**row, "plane": ",".join(map(str, index)) if index else ""} for row in det)
                continue
            kept: list = [] if head_outputs and spec.has_regression_head else None
            labels[index], probs, current = yield from relay(
                _semantic_plane(current, raw, lohi, job, overlap, split_instances, probs_out is not None, stop,
                                kept), tagged)
            if kept:
                if outputs_out is None:
                    outputs_out = np.zeros((kept[0].shape[0], *job.spatial), np.float32)
                outputs_out[(slice(None), *index)] = kept[0]
            if probs_out is not None:
                probs_out[(slice(None), *index)] = expand_probabilities(probs)
            del probs
    except Stopped:
        stopped = True
    if not spec.semantic:
        kind = spec.family_entry.kind  # Mask R-CNN's instances or a box detector's boxes
    else:
        kind = Kind.INSTANCES if is_instance_mode(model.label_mode) or split_instances else Kind.SEMANTIC
    return Prediction(labels=labels, probabilities=probs_out, boxes=boxes, kind=kind, stopped=stopped,
                      head_outputs=outputs_out)


def _tag_plane(event, plane: int, planes: int):
    """A plane-level TileDone with the plane's place in the image; other events as they are."""
    return replace(event, plane=plane, planes=planes) if isinstance(event, TileDone) else event


#: the generator under its historical name: the fronts (widgets, CLI, training previews) drive it
