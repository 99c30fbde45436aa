"""Large and lazy image layers: which layers the docks read window by window, and how.

A layer goes block by block (Predict) or by its painted crop (Train) when it is multiscale, when its
data is not a numpy array (dask, zarr, a tifffile store...) or when one plane is larger than
:data:`LARGE_PIXELS`. Such a layer is never converted whole: :func:`lazy_image` wraps its
full-resolution level in a :class:`~napari_seglab.core.io.LazyImage`, which reads only the windows
asked for.
"""

from __future__ import annotations

import atexit
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..core.errors import InputError
from ..core.io import LazyImage, ensure_not_input
from ..core.predict import AUTO_BLOCK_PIXELS

#: a numpy layer with a plane above this many pixels also goes block by block (the CLI's rule)
LARGE_PIXELS = AUTO_BLOCK_PIXELS


def level0(data):
    """The full-resolution level of a layer's data (the data itself when it is not multiscale)."""
    if isinstance(data, (list, tuple)) or type(data).__name__ == "MultiScaleData":
        return data[0]
    return data


def _plane_axes(layer, channels: int | None) -> str:
    """The axes of the layer's level 0 as stored: leading stack axes as "S", then YX, C where it has one."""
    data = level0(layer.data)
    if getattr(layer, "rgb", False):
        return "S" * (data.ndim - 3) + "YXC"
    if channels and channels > 1 and data.ndim == 3 and data.shape[0] == channels:
        return "CYX"
    return "S" * (data.ndim - 2) + "YX"


def plane_pixels(layer) -> int:
    """Pixels of one (Y, X) plane of the layer's full-resolution level."""
    shape = level0(layer.data).shape
    axes = _plane_axes(layer, None)
    return int(shape[axes.index("Y")]) * int(shape[axes.index("X")])


def is_lazy(layer) -> bool:
    """True for a multiscale layer or one whose data is not a numpy array (dask, zarr...)."""
    return bool(getattr(layer, "multiscale", False)) or not isinstance(layer.data, np.ndarray)


def wants_blocks(layer) -> bool:
    """True when the docks should read this layer window by window instead of whole."""
    return is_lazy(layer) or plane_pixels(layer) > LARGE_PIXELS


def fits_whole(layer) -> bool:
    """True for a layer small enough to load whole (no plane above :data:`LARGE_PIXELS`; not multiscale)."""
    return not getattr(layer, "multiscale", False) and plane_pixels(layer) <= LARGE_PIXELS


class _Fixed:
    """A view of ``array`` with its leading singleton axes dropped (indexing passes 0 for them)."""

    def __init__(self, array, lead: int):
        self.array, self.lead = array, lead
        self.shape = tuple(array.shape[lead:])
        self.dtype = array.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, index):
        return self.array[(0,) * self.lead + tuple(index)]


def layer_pixel_size(layer) -> tuple[float, float] | None:
    """(y, x) µm from the layer's scale, None when it is napari's default (1, 1)."""
    scale = tuple(float(s) for s in np.asarray(layer.scale, float)[-2:])
    return None if len(scale) != 2 or all(s == 1.0 for s in scale) or min(scale) <= 0 else scale


def lazy_image(layer, channels: int | None = None) -> LazyImage | None:
    """The layer's full-resolution level as a 2D :class:`LazyImage` (Y, X[, C]), or None for a stack.

    Leading singleton axes are dropped; a layer with a T or Z axis of more than one plane gives None.
    """
    data = level0(layer.data)
    axes = _plane_axes(layer, channels)
    lead = axes.count("S")
    if any(n != 1 for n in data.shape[:lead]):
        return None
    source = getattr(getattr(layer, "source", None), "path", None) or ""
    return LazyImage(_Fixed(data, lead) if lead else data, axes.replace("S", ""),
                     layer_pixel_size(layer), str(source) or layer.name)


def source_paths(layer) -> list[str]:
    """Files the layer came from (never written over)."""
    path = getattr(getattr(layer, "source", None), "path", None)
    return [str(path)] if path else []


def output_path(chosen: Path | None, layer_name: str, scratch: list, protect: list[str] = ()) -> Path:
    """Where the labels OME-Zarr goes: the chosen path (``.zarr`` added), else a temporary folder.

    ``scratch``: a one-item list holding this dock's temporary folder once made (reused by later runs,
    removed when Python exits: choose an output to keep the labels);
    ``protect``: the files the image came from. InputError for a path that cannot take the store.
    """
    if chosen is not None:
        chosen = Path(chosen).expanduser()
        if not chosen.name.lower().endswith(".zarr"):
            chosen = chosen.with_name(chosen.name + ".ome.zarr")
        if not chosen.parent.is_dir():
            raise InputError(f"output {chosen}: folder {chosen.parent} does not exist")
        if chosen.exists() and not (chosen / "zarr.json").is_file():  # the CLI's rule: only a store it wrote
            raise InputError(f"output {chosen}: exists and is not a zarr store written here; choose another name")
        ensure_not_input(chosen, protect)
        return chosen.absolute()
    if not scratch:
        scratch.append(Path(tempfile.mkdtemp(prefix="seglab-")))
        # the lazy layers read it while napari runs; nothing is left in the temp folder after
        atexit.register(shutil.rmtree, scratch[0], ignore_errors=True)
    safe = re.sub(r"[^\w.-]+", "_", layer_name).strip("._") or "image"
    return scratch[0] / f"{safe}_labels.ome.zarr"


def probabilities_path(labels: Path) -> Path:
    """The probabilities store beside a labels store: ``x_labels.ome.zarr`` -> ``x_labels_probabilities.ome.zarr``."""
    stem = labels.name.removesuffix(".zarr").removesuffix(".ome")
    return labels.with_name(f"{stem}_probabilities.ome.zarr")


# ---------------------------------------------------------------------- training from a large layer
#: rows of a labels layer read at once while looking for the painted area
BAND_ROWS = 1024


def _plane_of(data, what: str):
    """``data`` (a 2D labels array, maybe with leading singleton axes) as a 2D array-like."""
    data = level0(data)
    lead = len(data.shape) - 2
    if lead < 0 or any(n != 1 for n in data.shape[:lead]):
        raise InputError(f"{what}: training from a large or lazy layer takes 2D labels; this one has shape "
                         f"{tuple(data.shape)}")
    return _Fixed(data, lead) if lead else data


def painted_box(labels) -> tuple[slice, slice] | None:
    """The (ys, xs) bounding box of the nonzero pixels of a 2D labels array-like, read in bands of rows.

    None when nothing is painted. Memory holds one band (:data:`BAND_ROWS` rows), not the layer.
    """
    h, w = (int(n) for n in labels.shape)
    columns = np.zeros(w, bool)
    first = last = None
    for y in range(0, h, BAND_ROWS):
        band = np.asarray(labels[y:min(h, y + BAND_ROWS)]) != 0
        rows = np.flatnonzero(band.any(axis=1))
        if rows.size:
            first = y + int(rows[0]) if first is None else first
            last = y + int(rows[-1]) + 1
            columns |= band.any(axis=0)
    if first is None:
        return None
    cols = np.flatnonzero(columns)
    return slice(first, last), slice(int(cols[0]), int(cols[-1]) + 1)


def grown(box: tuple[slice, slice], margin: int, shape) -> tuple[slice, slice]:
    """``box`` with ``margin`` pixels more on every side, within a plane of (Y, X) ``shape``."""
    return tuple(slice(max(0, s.start - margin), min(int(n), s.stop + margin))
                 for s, n in zip(box, shape[:2], strict=True))


def training_crop(image_layer, labels_layer, margin: int):
    """Read only the painted area (plus ``margin`` px) of a large or lazy 2D image layer and its labels.

    Returns ``(image (h, w[, C]) as a :class:`WindowRead`, axes, labels (h, w), (ys, xs))``: the labels
    are copied now, the image is read when the worker calls the WindowRead. InputError when the image is a
    stack, the shapes differ, nothing is painted, or the area is larger than :data:`LARGE_PIXELS`.
    """
    image = lazy_image(image_layer)
    if image is None:
        raise InputError(f"layer {image_layer.name!r} is a stack too large to load whole: train from a 2D layer "
                         "(or a smaller stack)")
    labels = _plane_of(labels_layer.data, f"labels {labels_layer.name!r}")
    if tuple(labels.shape) != tuple(image.shape[:2]):
        raise InputError(f"labels {labels_layer.name!r} {tuple(labels.shape)} do not match image "
                         f"{image_layer.name!r} {tuple(image.shape[:2])}")
    box = painted_box(labels)
    if box is None:
        raise InputError(f"nothing painted in {labels_layer.name!r}: paint some labels on the image first")
    ys, xs = grown(box, int(margin), image.shape)
    h, w = ys.stop - ys.start, xs.stop - xs.start
    if h * w > LARGE_PIXELS:
        side = int(LARGE_PIXELS ** 0.5)
        raise InputError(f"the painted area of {labels_layer.name!r} spans {h}x{w} pixels (with a {margin}px "
                         f"margin): paint within one region of at most {side}x{side} pixels of this large image")
    return WindowRead(image, ys, xs), image.axes, np.array(labels[ys, xs]), (ys, xs)


class WindowRead:
    """A window of a lazy image, read when called: by the training worker, not on the GUI thread.

    ``shape`` is the window's (h, w[, C]) without reading it.
    """

    def __init__(self, image: LazyImage, ys: slice, xs: slice):
        self.image, self.window = image, (ys, xs)
        self.shape = (ys.stop - ys.start, xs.stop - xs.start, *image.shape[2:])

    def __call__(self) -> np.ndarray:
        return self.image.read(*self.window)


class Placement:
    """The ``scale`` and ``translate`` of a (ys, xs) crop of a layer: output layers over the crop use them."""

    def __init__(self, layer, crop: tuple[slice, slice]):
        self.scale = np.asarray(layer.scale, float)[-2:]
        origin = np.array([crop[0].start, crop[1].start], float)
        self.translate = np.asarray(layer.translate, float)[-2:] + origin * self.scale

    def apply(self, layer) -> None:
        """Place a 2D output ``layer`` over the crop (a reused layer may sit where an earlier crop was)."""
        if layer is not None and layer.ndim == 2:
            layer.scale, layer.translate = self.scale, self.translate
