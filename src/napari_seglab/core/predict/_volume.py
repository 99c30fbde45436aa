"""3D objects from a 2D instance network: a z-stack decoded as one volume, anisotropy respected.

:func:`iter_predict_volume` is a generator (progress events, then a
:class:`~napari_seglab.core.predict._image.Prediction`) over every Z stack of an image
(each T point on its own, so time is never taken for depth). Two methods ("auto" picks by head and
training: :func:`auto_method`):

- ``"orthogonal"`` (the default; Cellpose's idea): the stack is resampled to isotropic
  voxels (z by the anisotropy, all axes by the checkpoint's object scale), the 2D network
  runs on every YX, ZX and ZY plane, and its outputs are combined into one 3D field (the
  foreground logit averaged over the three views, each flow component over the two views
  that contain its axis; distances and class probabilities averaged), which
  :func:`~napari_seglab.core.objects._volume.decode_volume` decodes in 3D; the labels are
  resampled back to the stack's voxels.
- ``"linked"``: every plane decoded in 2D (:func:`~napari_seglab.core.predict._image.iter_predict_image`)
  and its objects linked across planes by overlap (:func:`~napari_seglab.core.objects._volume.link_planes`).

Memory: a large volume is cut into overlapping 3D blocks, each predicted (its three views) and
decoded on its own, objects kept by the block holding their first voxel
(:mod:`~napari_seglab.core.predict._volume_blocks`); a small one is one block.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Generator, Sequence

import numpy as np

from ..data import anisotropy_from_pixel_size, check_scale
from ..errors import InputError
from ..events import Message, Stopped, TileDone
from ..io import check_image_values
from ..labels import is_instance_mode
from ..models import Kind
from ..tiling import ALIGN, check_overlap
from ._image import (
    LoadedModel,
    Prediction,
    auto_tile,
    device_memory_budget,
    image_axes,
    iter_predict_image,
)
from ._options import check_volume_blocks

METHODS = ("auto", "orthogonal", "linked")
#: the method :func:`iter_predict_volume` uses unless told: "auto" picks by head (:data:`AUTO_METHOD`)
DEFAULT_METHOD = "auto"
#: "auto", by instance head. benchmarks/quality_3d.py, 150 steps, AP@0.5 orthogonal vs linked: flows 0.746 vs
#: 0.230 (synthetic) and 0.500 vs 0.068 (real StarDist stack); distance 0.455 vs 0.195 and 0.065 vs 0.033;
#: the boundary classes merge touching nuclei in 3D (26 objects for 175; 1 for 31): their planes are linked
AUTO_METHOD = {"flows": "orthogonal", "distance": "orthogonal", "boundary": "linked"}


def auto_method(model: LoadedModel, head: str) -> str:
    """The method "auto" picks: by head (:data:`AUTO_METHOD`), and orthogonal for every head of a model that
    learnt ZX/ZY planes (its checkpoint records their z step). The boundary classes lost in 3D only from a
    network that never saw a section: the StarDist wheel's real stack, 400 steps, the boundary head with
    ZX/ZY planes, AP@0.5 orthogonal against linked: dense labels 0.667 against 0.306; `objects` labels
    (40 % of the nuclei painted through their planes, seeds 0-2) 0.871 / 0.871 / 0.636 against 0.179 / 0.270 /
    0.150."""
    if getattr(model.info, "anisotropy", None):
        return "orthogonal"
    return AUTO_METHOD[head]


def check_anisotropy(value) -> float:
    """A z step over the pixel size, from 0.1 to 50 (InputError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0.1 <= value <= 50:
        raise InputError(f"anisotropy (z step / pixel size) must be a number from 0.1 to 50; got {value!r}")
    return float(value)


def volume_head(model: LoadedModel) -> str:
    """The 3D decoder a model's outputs need ("flows", "distance", "boundary"); InputError when it has none."""
    spec = model.spec
    if not spec.semantic or not is_instance_mode(model.label_mode):
        raise InputError("3D objects need an instance model (label mode 'instances' or 'objects', a U-Net "
                         "instance head); this model predicts "
                         f"{'classes' if spec.semantic else spec.family} ({model.label_mode})")
    if spec.has_regression_head:
        return spec.head
    if spec.n_classes != 3:
        raise InputError(f"3D objects need the background/interior/boundary classes; this model has "
                         f"{spec.n_classes}")
    return "boundary"


#: steps along the flows at the network's scale (as in 2D); fewer on a coarser decoding grid
FLOW_STEPS = 200


def _min_voxels(model: LoadedModel) -> int:
    """Objects smaller than this (isotropic voxels at the network's scale) are fragments."""
    from ..objects import FRAGMENT_FRACTION

    area = model.info.object_area
    if not area:
        return 30
    radius = math.sqrt(area / math.pi)
    return max(30, int(FRAGMENT_FRACTION * 4.0 / 3.0 * math.pi * radius ** 3))


def _iter_orthogonal(model: LoadedModel, vol: np.ndarray, head: str, anisotropy: float, tile: int | None,
                     overlap: float, memory_budget: float | None, stop: threading.Event | None,
                     pixel_size: Sequence[float] | None = None, block: int | None = None, halo: int | None = None,
                     out: np.ndarray | None = None):
    """One (C, Z, Y, X) raw stack -> (labels (Z, Y, X) int32, model): the three views combined and decoded.

    ``block``: the 3D blocks' core side in decoding-grid voxels (None: blocks of
    :data:`~napari_seglab.core.predict._volume_blocks.DEFAULT_BLOCK` when the grid holds more than
    :data:`~napari_seglab.core.predict._volume_blocks.WHOLE_VOXELS`, else the whole volume; 0: the whole
    volume); ``halo`` None: from the model's typical object (:func:`default_halo`).
    """
    from ..data import prediction_factor
    from ._volume_blocks import DEFAULT_BLOCK, WHOLE_VOXELS, default_halo, iter_orthogonal

    lohi = model.input_scaling(vol)
    scale, note = prediction_factor(check_scale(model.info.scale), pixel_size, model.info.pixel_size)
    if note:
        yield Message(note)
    iso = (max(1, round(vol.shape[1] * anisotropy * scale)), max(1, round(vol.shape[2] * scale)),
           max(1, round(vol.shape[3] * scale)))
    if not tile:
        budget = memory_budget if memory_budget is not None else device_memory_budget(model.device)
        largest = sorted(iso)[-2:]
        tile = auto_tile(largest, model.spec.family, budget, vol.shape[0], model.spec.out_channels)
    tile = max(ALIGN, int(tile))
    grid, shrink = iso, 1.0
    # flows: decoded at the image's own pixel size (still isotropic) when the network worked upsampled: scale³
    # fewer voxels, shorter paths, the same AP@0.5 on the real stack (0.500). The distance watershed is decoded
    # where the network saw it: at the image's pixel size its AP@0.5 fell from 0.065 to 0.022 (quality_3d.py)
    if scale > 1.0 and head == "flows":
        grid = (max(1, round(vol.shape[1] * anisotropy)), vol.shape[2], vol.shape[3])
        shrink = iso[1] / grid[1]
    if block is None:
        block = DEFAULT_BLOCK if math.prod(grid) > WHOLE_VOXELS else 0
    if halo is None:
        halo = default_halo(model.info.object_area, shrink)
    decoding = {"n_steps": max(60, round(FLOW_STEPS / shrink))} if head == "flows" else {}
    return (yield from iter_orthogonal(model, vol, head, lohi=lohi, iso=iso, grid=grid, tile=tile, overlap=overlap,
                                       block=int(block), halo=int(halo),
                                       min_size=max(8, int(_min_voxels(model) / shrink ** 3)), decoding=decoding,
                                       stop=stop, out=out))


def iter_predict_volume(model: LoadedModel, image: np.ndarray, axes: str | None = None, *,
                        anisotropy: float = 1.0, method: str = DEFAULT_METHOD, tile: int | None = None,
                        overlap: float = 0.25, memory_budget: float | None = None,
                        stop: threading.Event | None = None, pixel_size: Sequence[float] | None = None,
                        block: int | None = None, halo: int | None = None
                        ) -> Generator[TileDone | Message, None, Prediction]:
    """3D objects for every Z stack of ``image`` (each T point on its own): a generator of progress events.

    ``image``: canonical axes with a Z axis (ZYX, ZYXC, TZYX, TZYXC); ``axes``
    defaults to a guess from the shape. ``anisotropy``: the z step over the
    pixel size (from the file's pixel size or the user). ``method``: "orthogonal",
    "linked" (see the module) or "auto" (:func:`auto_method`: by the model's head and its training). Returns a :class:`Prediction` whose labels
    (the image's shape without C, int32) number the objects of each stack 1..N,
    one id per object through its planes; ``stopped`` when ``stop`` was set
    (stacks not finished stay 0). ``pixel_size``: the image's µm per pixel ((z, y, x) or (y, x)); an
    image at another lateral pixel size than the model's is resampled to it, as in 2D. ``block`` / ``halo``
    (orthogonal only): 3D blocks, in voxels of the decoding grid, that bound memory (None: blocks for a
    large volume only, 0: the whole volume at once; see :mod:`~napari_seglab.core.predict._volume_blocks`).
    """
    if method not in METHODS:
        raise InputError(f"unknown 3D method {method!r}; choose one of {', '.join(METHODS)}")
    anisotropy = check_anisotropy(anisotropy)
    check_overlap(overlap)
    head = volume_head(model)
    block, halo = check_volume_blocks(block, halo)
    if method == "auto":
        method = auto_method(model, head)
    if method == "linked" and (block or halo is not None):
        raise InputError("3D blocks (block / halo) cut the volume of the orthogonal method; the linked method "
                         "predicts plane by plane (choose the orthogonal method, or leave the blocks out)")
    image = check_image_values(np.asarray(image))
    spec = model.spec
    axes, spatial = image_axes(spec, image, axes)
    if "Z" not in axes:
        raise InputError(f"3D objects need a Z axis; this image's axes are {axes} "
                         "(T is time and stays plane by plane)")
    has_c = "C" in axes
    labels = np.zeros(spatial, np.int32)
    times = [(t,) for t in range(image.shape[0])] if axes.startswith("T") else [()]
    stack_axes = axes[1:] if times != [()] else axes
    current = model
    stopped = False
    try:
        for t in times:
            stack = image[t] if t else image
            if method == "linked":
                pred = yield from iter_predict_image(current, stack, stack_axes, tile=tile, overlap=overlap,
                                                     memory_budget=memory_budget, stop=stop, pixel_size=pixel_size)
                if pred.stopped:
                    raise Stopped
                from ..objects import link_planes

                labels[t] = link_planes(pred.labels)
                continue
            vol = stack[None] if not has_c else np.moveaxis(stack, -1, 0)
            # written into the result's own planes: no second stack-sized array
            _, current = yield from _iter_orthogonal(current, vol, head, anisotropy, tile, overlap, memory_budget,
                                                     stop, pixel_size, block, halo, out=labels[t])
    except Stopped:
        stopped = True
    return Prediction(labels=labels, kind=Kind.INSTANCES, stopped=stopped, anisotropy=anisotropy)


def resolve_anisotropy(anisotropy: float | None, pixel_size: Sequence[float] | None, axes: str,
                       trained: float | None = None) -> tuple[float, str]:
    """(anisotropy, where it came from): the user's value, else the file's pixel size, else the z step of the
    stacks the model learnt ZX/ZY planes from (``trained``, "assumed"), else 1 ("assumed")."""
    if anisotropy is not None:
        return check_anisotropy(anisotropy), "given"
    found = anisotropy_from_pixel_size(pixel_size, axes)
    if found is not None:
        return check_anisotropy(round(found, 4)), "the file's pixel size"
    if trained is not None:
        return check_anisotropy(trained), "assumed: the file gives no z step; the model's training stacks had it"
    return 1.0, "assumed: the file gives no z step"


def iter_predict(model: LoadedModel, image: np.ndarray, axes: str | None = None, *, volume: bool = False,
                 anisotropy: float | None = None, pixel_size: Sequence[float] | None = None,
                 volume_method: str = DEFAULT_METHOD, **options) -> Generator[TileDone | Message, None, Prediction]:
    """One entry for the fronts: :func:`iter_predict_volume` when ``volume``, else plane by plane.

    ``options`` are :func:`~napari_seglab.core.predict._image.iter_predict_image`'s; with ``volume``
    only ``tile``, ``overlap``, ``memory_budget``, ``stop``, ``block`` and ``halo`` apply (probabilities and
    flips are refused). ``anisotropy`` None: from ``pixel_size`` (``ImageData.pixel_size``), else the model's
    (the z step of the stacks it learnt ZX/ZY planes from), else 1, with a warning Message for either. The Prediction's ``anisotropy`` says what was used.
    """
    if not volume:
        if options.get("block") is not None or options.get("halo") is not None:
            raise InputError("block / halo set 3D blocks: pass volume=True as well")
        options = {k: v for k, v in options.items() if k not in ("block", "halo")}
        return (yield from iter_predict_image(model, image, axes, pixel_size=pixel_size, **options))
    # split_instances is moot: 3D needs an instance model (volume_head says so for any other)
    unsupported = [k for k in ("probabilities", "tta", "head_outputs", "planes") if options.get(k)]
    if unsupported:
        raise InputError(f"3D objects: {', '.join(unsupported)} cannot be combined with 3D prediction")
    kept = {k: options[k] for k in ("tile", "overlap", "memory_budget", "stop", "block", "halo") if k in options}
    from ..io import guess_axes

    value, source = resolve_anisotropy(anisotropy, pixel_size, axes or guess_axes(np.shape(image)),
                                       model.info.anisotropy)
    if source.startswith("assumed"):
        yield Message(f"anisotropy {value:g} ({source}); set it if this stack's z step over its pixel size "
                      "differs", "warning")
    return (yield from iter_predict_volume(model, image, axes, anisotropy=value, method=volume_method,
                                           pixel_size=pixel_size, **kept))


def describe_axes(axes: str, volume: bool) -> str:
    """One line saying which axis was treated as what: "Z as depth (3D objects), T plane by plane"."""
    parts = []
    for a in axes:
        if a == "Z":
            parts.append("Z as depth (3D objects)" if volume else "Z plane by plane")
        elif a == "T":
            parts.append("T as time, plane by plane")
        elif a == "C":
            parts.append("C as channels")
    parts.append("YX as the plane")
    return ", ".join(parts)


__all__ = ["AUTO_METHOD", "DEFAULT_METHOD", "auto_method", "METHODS", "anisotropy_from_pixel_size", "check_anisotropy", "describe_axes",
           "iter_predict", "iter_predict_volume", "resolve_anisotropy", "volume_head"]
