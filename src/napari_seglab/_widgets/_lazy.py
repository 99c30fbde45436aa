"""Large and lazy image layers: which layers the docks read window by window, and how.

A layer goes block by block (Predict) or by its painted crop (Train) when it is multiscale, when its
data is not a numpy array (dask, zarr, a tifffile store...) or when one plane is larger than
:data:`LARGE_PIXELS`. Such a layer is never converted whole: :func:`lazy_image` wraps its
full-resolution level in a :class:`~napari_seglab.core.io.LazyImage`, which reads only the windows
asked for.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np

from ..cli.predict_blocks import AUTO_BLOCK_PIXELS
from ..core.errors import InputError
from ..core.io import LazyImage

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


def output_path(chosen: Path | None, layer_name: str, scratch: list) -> Path:
    """Where the labels OME-Zarr goes: the chosen path (``.zarr`` added), else a temporary folder.

    ``scratch``: a one-item list holding this dock's temporary folder once made (reused by later runs).
    """
    if chosen is not None:
        chosen = Path(chosen).expanduser()
        if not chosen.name.lower().endswith(".zarr"):
            chosen = chosen.with_name(chosen.name + ".ome.zarr")
        if not chosen.parent.is_dir():
            raise InputError(f"output {chosen}: folder {chosen.parent} does not exist")
        return chosen.absolute()
    if not scratch:
        scratch.append(Path(tempfile.mkdtemp(prefix="seglab-")))
    safe = re.sub(r"[^\w.-]+", "_", layer_name).strip("._") or "image"
    return scratch[0] / f"{safe}_labels.ome.zarr"


def probabilities_path(labels: Path) -> Path:
    """The probabilities store beside a labels store: ``x_labels.ome.zarr`` -> ``x_labels_probabilities.ome.zarr``."""
    stem = labels.name.removesuffix(".zarr").removesuffix(".ome")
    return labels.with_name(f"{stem}_probabilities.ome.zarr")
