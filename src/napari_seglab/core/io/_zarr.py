"""Images larger than memory: lazy 2D input from OME-Zarr or TIFF, OME-Zarr output written atomically.

:func:`open_lazy` opens an OME-Zarr (NGFF 0.4 or 0.5; the full-resolution level) or a TIFF (through
tifffile's zarr store: tiled, striped or pyramidal, nothing decoded until read) as a
:class:`LazyImage`, whose :meth:`LazyImage.read` gives any (y, x[, c]) window channels-last.
:class:`OmeZarrWriter` writes a (Y, X) label image or (C, Y, X) probabilities into a hidden folder
beside the final one, adds downsampled levels (every second pixel, so label ids survive) and the
NGFF 0.5 ``multiscales`` metadata (axes, scale in µm when known), and only then renames it into
place: a stopped or failed run leaves no half-written output.
"""

from __future__ import annotations

import math
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ._paths import ensure_not_input

#: NGFF version written (zarr format 3); 0.4 (zarr format 2) is read too
NGFF_VERSION = "0.5"


def is_zarr_path(path: str | os.PathLike) -> bool:
    """True for a path that names a zarr store (a folder, or a name ending in .zarr)."""
    p = Path(path)
    if p.name.lower().endswith(".zarr"):
        return True
    try:
        return p.is_dir() and any((p / f).exists() for f in ("zarr.json", ".zgroup", ".zarray"))
    except OSError:  # a name too long, a loop of links: not a store (the caller's own checks say why)
        return False


@dataclass
class LazyImage:
    """A 2D image read window by window: ``array`` as stored (axes ``stored``), seen as ``axes`` (YX or YXC)."""

    array: object
    stored: str
    pixel_size: tuple[float, float] | None = None
    source: str = ""

    @property
    def axes(self) -> str:
        return "YXC" if "C" in self.stored else "YX"

    @property
    def shape(self) -> tuple[int, ...]:
        sizes = dict(zip(self.stored, self.array.shape, strict=True))
        return tuple(sizes[a] for a in self.axes)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def read(self, ys: slice, xs: slice) -> np.ndarray:
        """The (y, x[, c]) pixels of a window, channels last."""
        index = tuple(ys if a == "Y" else xs if a == "X" else slice(None) for a in self.stored)
        part = np.asarray(self.array[index])
        order = [self.stored.index(a) for a in self.axes]
        return np.transpose(part, order) if order != sorted(order) else part

    def load(self) -> np.ndarray:
        """The whole image in memory (Y, X[, C])."""
        return self.read(slice(None), slice(None))


def _squeeze(array, axes: str, what: str):
    """Drop singleton non-spatial axes; only Y, X and C may stay (InputError otherwise)."""
    axes = axes.upper().replace("S", "C")
    keep = [i for i, a in enumerate(axes) if a in "YX" or array.shape[i] != 1]
    extra = [a for i, a in enumerate(axes) if i in keep and a not in "YXC"]
    if extra or "Y" not in axes or "X" not in axes:
        raise InputError(f"{what}: block-wise prediction takes one 2D image (Y, X and channels); this one has "
                         f"axes {axes} and shape {tuple(array.shape)}")
    if len(keep) != len(axes):
        index = tuple(slice(None) if i in keep else 0 for i in range(len(axes)))
        array = _Indexed(array, index)
    return array, "".join(axes[i] for i in keep)


class _Indexed:
    """A lazy view of ``array`` with some axes fixed at an index (singleton axes dropped)."""

    def __init__(self, array, fixed: tuple):
        self.array, self.fixed = array, fixed
        self.shape = tuple(n for n, f in zip(array.shape, fixed, strict=True) if isinstance(f, slice))
        self.dtype = array.dtype

    def __getitem__(self, index):
        it = iter(index)
        full = tuple(next(it) if isinstance(f, slice) else f for f in self.fixed)
        return self.array[full]


def _ngff_meta(attrs: dict) -> dict:
    ome = attrs.get("ome", attrs)
    ms = ome.get("multiscales")
    if not ms:
        raise InputError("no OME-Zarr 'multiscales' metadata in this zarr store")
    return ms[0]


def _open_ome_zarr(path: Path) -> LazyImage:
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # zarr raises several kinds for a folder that is not a store
        raise InputError(f"{path}: not a readable zarr store ({exc})") from None
    if isinstance(node, zarr.Array):
        return LazyImage(*_squeeze(node, "YX" if node.ndim == 2 else "YXC", str(path)), source=str(path))
    meta = _ngff_meta(dict(node.attrs))
    axes = "".join(a["name"] if isinstance(a, dict) else a for a in meta.get("axes", [])).upper()
    first = meta["datasets"][0]
    array = node[first["path"]]
    if not axes:
        axes = "CYX"[-array.ndim:] if array.ndim <= 3 else "TCZYX"[-array.ndim:]
    scale = None
    for t in first.get("coordinateTransformations", []) + meta.get("coordinateTransformations", []):
        if t.get("type") == "scale":
            scale = dict(zip(axes, t["scale"], strict=False))
    units = {a["name"].upper(): a.get("unit") for a in meta.get("axes", []) if isinstance(a, dict)}
    size = None
    if scale and units.get("Y") in ("micrometer", None) and "Y" in scale and "X" in scale:
        size = (float(scale["Y"]), float(scale["X"]))
    array, stored = _squeeze(array, axes, str(path))
    return LazyImage(array, stored, size, str(path))


def _open_tiff(path: Path) -> LazyImage:
    import tifffile
    import zarr

    from ._tiff import read_pixel_sizes, spatial_pixel_size

    try:
        with tifffile.TiffFile(path) as tif:
            axes = tif.series[0].axes
        store = tifffile.imread(path, aszarr=True, level=0)
        array = zarr.open(store, mode="r")
    except (tifffile.TiffFileError, ValueError, OSError) as exc:
        raise InputError(f"{path}: cannot read this TIFF lazily ({exc})") from None
    if isinstance(array, zarr.Group):  # a pyramid: its first level is the full resolution
        array = array[sorted(array.array_keys())[0]]
    array, stored = _squeeze(array, axes, str(path))
    size = spatial_pixel_size(read_pixel_sizes(path), "YX")
    return LazyImage(array, stored, tuple(size) if size else None, str(path))


def open_lazy(path: str | os.PathLike) -> LazyImage:
    """A 2D image (Y, X[, C]) from an OME-Zarr or a TIFF, read window by window (:class:`LazyImage`)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{path}: no such file or folder")
    return _open_ome_zarr(p) if is_zarr_path(p) else _open_tiff(p)


def pyramid_shapes(shape: Sequence[int], smallest: int = 512, most: int = 4) -> list[tuple[int, ...]]:
    """Shapes of the levels: the full (…, Y, X), then halved until the larger side is at most ``smallest``."""
    shapes = [tuple(int(n) for n in shape)]
    while len(shapes) <= most and max(shapes[-1][-2:]) > smallest:
        last = shapes[-1]
        shapes.append((*last[:-2], math.ceil(last[-2] / 2), math.ceil(last[-1] / 2)))
    return shapes


class OmeZarrWriter:
    """An OME-Zarr (NGFF 0.5) being written: :attr:`array` (level 0) takes the data, :meth:`finish` publishes it.

    ``shape``: (Y, X) labels or (C, Y, X) probabilities (``axes`` "yx" or "cyx"); ``chunk``: the
    spatial chunk side (a block of the prediction should hold whole chunks: one writer per chunk);
    ``pixel_size``: (y, x) µm, written as the level-0 scale. Use as a context manager: leaving it
    by an exception (or Ctrl-C) removes the hidden folder and leaves any earlier output as it was.
    """

    def __init__(self, path: str | os.PathLike, shape: Sequence[int], dtype, *, chunk: int = 1024,
                 pixel_size: Sequence[float] | None = None, protect: Sequence = (), name: str = "labels"):
        import zarr

        self.final = Path(path).absolute()
        ensure_not_input(self.final, protect)
        if not self.final.parent.is_dir():
            raise InputError(f"{path}: folder {self.final.parent} does not exist")
        if self.final.exists() and not is_zarr_path(self.final):
            raise InputError(f"{path}: exists and is not a zarr store; choose another name")
        self.shape, self.name = tuple(int(n) for n in shape), name
        self.axes = "cyx" if len(self.shape) == 3 else "yx"
        self.pixel_size = tuple(float(v) for v in pixel_size) if pixel_size else None
        self.tmp = self.final.parent / f".{self.final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.chunks = (*self.shape[:-2], min(chunk, self.shape[-2]), min(chunk, self.shape[-1]))
        self.group = zarr.open_group(str(self.tmp), mode="w", zarr_format=3)
        self.array = self.group.create_array("0", shape=self.shape, chunks=self.chunks, dtype=dtype, fill_value=0)
        self.done = False

    def __enter__(self) -> OmeZarrWriter:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if not self.done:
            self.abort()

    def abort(self) -> None:
        """Remove the hidden folder (nothing was published)."""
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _levels(self) -> list:
        arrays = [self.array]
        step = max(self.chunks[-2], 256) * 2
        for shape in pyramid_shapes(self.shape)[1:]:
            prev = arrays[-1]
            chunks = (*shape[:-2], min(self.chunks[-2], shape[-2]), min(self.chunks[-1], shape[-1]))
            arr = self.group.create_array(str(len(arrays)), shape=shape, chunks=chunks, dtype=self.array.dtype,
                                          fill_value=0)
            for y in range(0, prev.shape[-2], step):
                for x in range(0, prev.shape[-1], step):
                    part = np.asarray(prev[..., y:y + step, x:x + step])[..., ::2, ::2]
                    arr[..., y // 2:y // 2 + part.shape[-2], x // 2:x // 2 + part.shape[-1]] = part
            arrays.append(arr)
        return arrays

    def _metadata(self, n_levels: int) -> dict:
        unit = {"unit": "micrometer"} if self.pixel_size else {}
        axes = [{"name": a, "type": "channel" if a == "c" else "space", **({} if a == "c" else unit)}
                for a in self.axes]
        base = self.pixel_size or (1.0, 1.0)
        datasets = []
        for k in range(n_levels):
            scale = [base[0] * 2**k, base[1] * 2**k]
            datasets.append({"path": str(k), "coordinateTransformations": [
                {"type": "scale", "scale": ([1.0] if self.axes == "cyx" else []) + scale}]})
        return {"version": NGFF_VERSION, "multiscales": [{"name": self.name, "axes": axes, "datasets": datasets}]}

    def finish(self, attributes: dict | None = None) -> Path:
        """Add the levels and metadata, then move the store into place (replacing an earlier zarr output)."""
        levels = self._levels()
        attrs = {"ome": self._metadata(len(levels))}
        if attributes:
            attrs["seglab"] = attributes
        self.group.attrs.update(attrs)
        old = None
        if self.final.exists():
            old = self.final.parent / f".{self.final.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(self.final, old)
        os.replace(self.tmp, self.final)
        self.done = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.final


def write_tiff_tiled(path: str | os.PathLike, array, dtype, *, tile: int = 256, band: int = 1024,
                     protect: Sequence = (), compression: str | None = "zlib") -> Path:
    """Write a (Y, X) or (C, Y, X) array-like (a zarr array) as a tiled TIFF, band by band, atomically.

    Memory holds one band of ``band`` rows; values are cast to ``dtype`` (the caller checks they fit).
    """
    import tifffile

    from ._atomic import atomic_path

    path = Path(path)
    ensure_not_input(path, protect)
    shape = tuple(int(n) for n in array.shape)
    lead, (h, w) = shape[:-2], shape[-2:]
    band = max(tile, band // tile * tile)

    def tiles():
        for index in np.ndindex(*lead):
            for y in range(0, h, band):
                rows = np.asarray(array[(*index, slice(y, min(h, y + band)), slice(None))]).astype(dtype)
                for ty in range(0, rows.shape[0], tile):
                    for tx in range(0, w, tile):
                        part = rows[ty:ty + tile, tx:tx + tile]
                        if part.shape != (tile, tile):
                            part = np.pad(part, ((0, tile - part.shape[0]), (0, tile - part.shape[1])))
                        yield part

    axes = "CYX"[-len(shape):] if len(shape) <= 3 else None
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, tiles(), shape=shape, dtype=dtype, tile=(tile, tile), compression=compression,
                         metadata={"axes": axes} if axes else None, photometric="minisblack")
    return path
