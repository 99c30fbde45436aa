"""TIFF reading, axes normalisation and the checks an untrusted file passes before it is decoded.

Image arrays in the core use one axis order, a subset of ``T Z Y X C``
(channels last, as napari's RGB images), described by an ``axes`` string:
``"YX"``, ``"YXC"``, ``"ZYX"``, ``"TZYXC"``... Singleton axes other than Y and
X are dropped on reading.

Writing (atomic files, TIFF and CSV writers) lives in :mod:`napari_seglab.core.io._atomic` and paths
(resolved folders, safe output names, folder scans) in :mod:`napari_seglab.core.io._paths`; both are
re-exported here, so ``from napari_seglab.core.io import write_tiff`` keeps working.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ._paths import (
    check_regular_file,
)

CANONICAL = "TZYXC"
TIFF_SUFFIXES = (".tif", ".tiff")


@dataclass
class ImageData:
    """An image read from disk: ``data`` in canonical axis order, ``axes`` naming them."""

    data: np.ndarray
    axes: str
    path: str | None = None
    #: canonical axes of the file including the singleton axes that ``axes`` drops
    #: (``"ZYX"`` for a (1, Y, X) stack); outputs keep them (:func:`restore_singletons`)
    file_axes: str | None = None
    #: physical size of a pixel in µm along each spatial axis of ``axes``, in order (``(z, y, x)``
    #: for a stack, ``(y, x)`` for a plane), from the file's metadata; None where the file says nothing
    pixel_size: tuple[float, ...] | None = None

    @property
    def spatial_shape(self) -> tuple[int, int]:
        return (self.data.shape[self.axes.index("Y")], self.data.shape[self.axes.index("X")])


def guess_axes(shape: Sequence[int], rgb: bool | None = None) -> str:
    """Axes for a bare array: (Y,X), (Z,Y,X), (Y,X,C<=4), (Z,Y,X,C<=4), (T,Z,Y,X[,C])."""
    ndim = len(shape)
    if ndim < 2:
        raise InputError(f"an image needs at least 2 dimensions (Y, X); got shape {tuple(shape)}")
    if ndim > 5:
        raise InputError(f"images with more than 5 dimensions are not supported; got shape {tuple(shape)}")
    channels_last = rgb if rgb is not None else (ndim >= 3 and shape[-1] in (2, 3, 4) and shape[-2] > 4)
    if channels_last:
        return {3: "YXC", 4: "ZYXC", 5: "TZYXC"}[ndim] if ndim >= 3 else "YX"
    return {2: "YX", 3: "ZYX", 4: "TZYX", 5: "TZYXC"}[ndim]


def _map_axes(axes: str) -> list[str]:
    """tifffile axis letters -> canonical letters (S -> C; I, Q... -> Z, or T when a Z exists)."""
    mapped: list[str] = []
    for a in axes:
        if a == "S":
            a = "C"
        elif a not in CANONICAL:
            a = "Z" if "Z" not in axes and "Z" not in mapped else "T"
        mapped.append(a)
    return mapped


def file_axes(shape: Sequence[int], axes: str) -> str:
    """Canonical axes of a file with tifffile ``axes``, singleton axes kept (once per letter)."""
    mapped = _map_axes(axes.upper())
    kept = {a for a, n in zip(mapped, shape, strict=False) if a in "YX" or n != 1}
    letters = set(kept)
    for a, n in zip(mapped, shape, strict=False):
        if n == 1 and a not in letters:
            letters.add(a)
    return "".join(a for a in CANONICAL if a in letters)


def restore_singletons(labels: np.ndarray, axes: str, wanted: str | None) -> tuple[np.ndarray, str]:
    """Give ``labels`` (canonical ``axes``, no C) back the singleton axes of ``wanted`` (no C).

    A (1, Y, X) stack read as (Y, X) is written back as (1, Y, X): outputs keep
    the image's axes. Returns (array, axes).
    """
    if not wanted:
        return labels, axes
    wanted = wanted.replace("C", "")
    if set(axes) - set(wanted) or len(axes) + sum(a not in axes for a in wanted) != len(wanted):
        return labels, axes
    for i, a in enumerate(wanted):
        if a not in axes:
            labels = np.expand_dims(labels, i)
    return labels, wanted


def normalize_axes(data: np.ndarray, axes: str) -> tuple[np.ndarray, str]:
    """Reorder ``data`` with tifffile-style ``axes`` into canonical ``TZYXC`` order.

    ``S`` (samples, RGB) becomes ``C``; unknown stacking axes (``I``, ``Q``)
    become ``Z`` (or ``T`` when a Z is present). Singleton axes other than Y and
    X are dropped. More than one axis of a kind is an error.
    """
    axes = axes.upper()
    if len(axes) != data.ndim:
        raise InputError(f"axes {axes!r} do not match an array of {data.ndim} dimensions")
    mapped = _map_axes(axes)
    if "Y" not in mapped or "X" not in mapped:
        raise InputError(f"the image has no Y and X axes (axes {axes!r})")
    # drop singleton non-spatial axes
    keep = [i for i, a in enumerate(mapped) if a in "YX" or data.shape[i] != 1]
    data = data.reshape([data.shape[i] for i in keep]) if len(keep) != data.ndim else data
    mapped = [mapped[i] for i in keep]
    if len(set(mapped)) != len(mapped):
        raise InputError(f"the image has repeated axes {''.join(mapped)!r} (from {axes!r}); more than 5 dimensions?")
    order = sorted(range(len(mapped)), key=lambda i: CANONICAL.index(mapped[i]))
    data = np.transpose(data, order)
    return data, "".join(mapped[i] for i in order)


def _check_readable(path: Path) -> None:
    check_regular_file(path)


def memory_headroom() -> int:
    """Bytes this process may still allocate: available RAM, capped by an address-space limit."""
    try:
        import psutil

        free = int(psutil.virtual_memory().available)
    except ImportError:  # psutil is optional here
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            free = 8 * 2**30
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/statm") as fh:
                used = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            free = min(free, soft - used)
    except (ImportError, OSError, ValueError, IndexError):
        pass
    return max(0, free)


#: bytes of working memory per pixel beyond the decoded image itself: labels (int32) and a
#: float32 working copy, the least any use of an image needs
WORK_BYTES_PER_PIXEL = 8


def _human(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def check_declared_size(path, shape: Sequence[int], dtype, headroom: int | None = None) -> None:
    """Refuse an image whose declared size does not fit in memory, before anything is decoded.

    A small compressed file can declare a huge image (a decompression bomb);
    reading it would exhaust memory. Needs the decoded bytes plus
    :data:`WORK_BYTES_PER_PIXEL` per pixel.
    """
    pixels = 1
    for n in shape:
        pixels *= int(n)
    itemsize = np.dtype(dtype).itemsize if dtype is not None else 8
    need = pixels * (itemsize + WORK_BYTES_PER_PIXEL)
    headroom = memory_headroom() if headroom is None else headroom
    if need > headroom:
        dims = "x".join(str(int(n)) for n in shape)
        raise InputError(f"{path}: the TIFF declares a {dims} {np.dtype(dtype).name if dtype is not None else ''} "
                         f"image ({_human(pixels * itemsize)} decoded, {_human(need)} to work on), more than "
                         f"the {_human(headroom)} of memory free; crop or split it, or use a larger machine")


@contextlib.contextmanager
def _quiet_tifffile() -> Iterator[None]:
    """Silence tifffile's warnings and log lines: a bad file becomes one InputError, not stderr noise."""
    import logging

    log = logging.getLogger("tifffile")
    level = log.level
    log.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def _codec_hint(exc: BaseException) -> str | None:
    text = str(exc)
    if "imagecodecs" in text:
        return ("the TIFF is compressed with a codec that needs the imagecodecs package "
                f"(pip install imagecodecs): {text.splitlines()[0][:200]}")
    return None


def _checked_series(tif, path: Path):
    """The first series of an open TiffFile, its declared size checked before a byte is decoded."""
    if not tif.series:
        raise InputError(f"{path}: TIFF contains no image data")
    series = tif.series[0]
    check_declared_size(path, series.shape, series.dtype)
    return series


#: the length units microscope metadata writes, in µm
_UNITS_UM = {"um": 1.0, "µm": 1.0, "\u03bcm": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
             "nm": 1e-3, "nanometer": 1e-3, "mm": 1e3, "millimeter": 1e3, "cm": 1e4, "m": 1e6}
#: the range of pixel sizes (µm) accepted from a file: below is a unit mistake, above a slide overview
PIXEL_SIZE_RANGE = (1e-4, 1e4)


def _in_um(value, unit) -> float | None:
    """``value`` in ``unit`` as µm, or None when either is missing, unknown or out of range."""
    factor = _UNITS_UM.get(str(unit or "").strip().replace("\\u00B5", "µ").lower())
    try:
        size = float(value) * factor if factor is not None else None
    except (TypeError, ValueError):
        return None
    if size is None or not PIXEL_SIZE_RANGE[0] <= size <= PIXEL_SIZE_RANGE[1]:
        return None
    return size


def _ome_sizes(xml: str, index: int = 0) -> dict[str, float]:
    """{"X": µm, "Y": µm, "Z": µm} that the ``index``-th Image of OME-XML declares; {} when it says nothing."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}
    images = [el for el in root if el.tag.rsplit("}", 1)[-1] == "Image"]
    if index >= len(images):
        return {}
    pixels = next((el for el in images[index] if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return {}
    sizes = {}
    for axis in "XYZ":
        size = _in_um(pixels.get(f"PhysicalSize{axis}"), pixels.get(f"PhysicalSize{axis}Unit", "µm"))
        if size is not None:
            sizes[axis] = size
    return sizes


def _imagej_sizes(tif) -> dict[str, float]:
    """{"X": µm, "Y": µm, "Z": µm} of an ImageJ TIFF: the resolution tags in its ``unit``, ``spacing`` for Z."""
    meta = tif.imagej_metadata or {}
    unit = meta.get("unit")
    if not unit:
        return {}
    sizes = {}
    tags = tif.pages[0].tags
    for axis, tag in (("X", "XResolution"), ("Y", "YResolution")):
        value = tags[tag].value if tag in tags else None
        if isinstance(value, tuple) and len(value) == 2 and value[0]:
            size = _in_um(value[1] / value[0], unit)
            if size is not None:
                sizes[axis] = size
    if "spacing" in meta:
        size = _in_um(meta["spacing"], unit)
        if size is not None:
            sizes["Z"] = size
    return sizes


def file_pixel_sizes(tif) -> dict[str, float]:
    """Physical pixel sizes (µm) an open TIFF declares, by axis letter; OME-XML first, then ImageJ.

    Plain TIFF resolution tags (a scanner's or a screen's dots per inch) are not read as microscope
    pixel sizes.
    """
    try:
        if tif.is_ome and tif.ome_metadata:
            sizes = _ome_sizes(tif.ome_metadata)
            if sizes:
                return sizes
        if tif.is_imagej:
            return _imagej_sizes(tif)
    except Exception:  # noqa: BLE001 - metadata is advisory: a damaged block is no size, not an error
        return {}
    return {}


def spatial_pixel_size(sizes: dict[str, float], axes: str) -> tuple[float, ...] | None:
    """The ``ImageData.pixel_size`` of canonical ``axes`` from per-letter sizes; None unless Y and X are known.

    A Z axis without a declared step makes the whole size unknown (a stack's anisotropy is not guessed).
    """
    letters = [a for a in "ZYX" if a in axes]
    if any(a not in sizes for a in letters):
        return None
    return tuple(float(sizes[a]) for a in letters)


def read_tiff(path: str | os.PathLike) -> tuple[np.ndarray, str]:
    """Read the first series of a TIFF as (array, tifffile axes); errors become InputError."""
    import tifffile

    path = Path(path)
    _check_readable(path)
    try:
        with _quiet_tifffile(), tifffile.TiffFile(path) as tif:
            series = _checked_series(tif, path)
            axes = series.axes
            data = series.asarray()
    except InputError:
        raise
    except tifffile.TiffFileError as exc:
        raise InputError(f"{path}: not a valid TIFF file ({exc})") from exc
    except MemoryError as exc:
        raise InputError(f"{path}: the image does not fit in memory; crop or split it") from exc
    except RecursionError as exc:
        raise InputError(f"{path}: not a valid TIFF file (nested too deeply)") from exc
    except Exception as exc:  # noqa: BLE001 - any failure to parse an untrusted file is the file's fault
        hint = _codec_hint(exc)
        if hint:
            raise InputError(f"{path}: {hint}") from exc
        first = (str(exc).splitlines() or [""])[0][:200]
        raise InputError(f"{path}: corrupt or truncated TIFF ({type(exc).__name__}: {first})") from exc
    if data is None or data.size == 0:
        raise InputError(f"{path}: TIFF contains no image data (header only?)")
    return data, axes


def probe_tiff(path: str | os.PathLike) -> tuple[tuple[int, ...], str]:
    """(shape, tifffile axes) of a TIFF's first series, read from its header only.

    Runs every check :func:`read_tiff` runs before decoding (a regular,
    readable file; a valid header; a declared size that fits in memory), so a
    command can refuse a bad input before it loads a model.
    """
    import tifffile

    path = Path(path)
    _check_readable(path)
    try:
        with _quiet_tifffile(), tifffile.TiffFile(path) as tif:
            series = _checked_series(tif, path)
            return tuple(int(n) for n in series.shape), series.axes
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to parse an untrusted file is the file's fault
        first = (str(exc).splitlines() or [""])[0][:200]
        raise InputError(f"{path}: not a valid TIFF file ({type(exc).__name__}: {first})") from exc


def _file_axes_normalized(data: np.ndarray, axes: str, path) -> tuple[np.ndarray, str]:
    """:func:`normalize_axes` of what a file holds; a refusal names the file (the CLI prints one line)."""
    try:
        return normalize_axes(data, axes)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None


def read_pixel_sizes(path: str | os.PathLike) -> dict[str, float]:
    """The physical pixel sizes (µm, by axis letter) a TIFF declares; {} for none or an unreadable header."""
    import tifffile

    try:
        with _quiet_tifffile(), tifffile.TiffFile(path) as tif:
            return file_pixel_sizes(tif)
    except Exception:  # noqa: BLE001 - advisory metadata; read_tiff reports a bad file
        return {}


def read_image(path: str | os.PathLike) -> ImageData:
    """Read a TIFF image into canonical axis order (see module docstring), with its pixel size."""
    data, axes = read_tiff(path)
    shape, raw_axes = data.shape, axes
    data, axes = _file_axes_normalized(data, axes, path)
    if data.ndim > 5:
        raise InputError(f"{path}: images with more than 5 dimensions are not supported")
    return ImageData(data=data, axes=axes, path=str(path), file_axes=file_axes(shape, raw_axes),
                     pixel_size=spatial_pixel_size(read_pixel_sizes(path), axes))


def read_labels(path: str | os.PathLike, spatial_like: ImageData | None = None) -> np.ndarray:
    """Read a label TIFF: an integer array without a channel axis.

    When ``spatial_like`` is given, the labels must have the image's shape
    without its channel axis.
    """
    data, axes = read_tiff(path)
    data, axes = _file_axes_normalized(data, axes, path)
    if "C" in axes:
        if data.shape[-1] in (3, 4) and spatial_like is not None and "C" not in spatial_like.axes:
            raise InputError(f"{path}: labels are an RGB image; save them as a single-channel integer TIFF")
        data = data[..., 0] if data.shape[-1] == 1 else data
    return data


def check_image_values(data: np.ndarray, what: str = "image") -> np.ndarray:
    """Refuse NaN/Inf and convert bool to uint8; returns the (maybe converted) array."""
    if data.dtype == bool:
        return data.astype(np.uint8)
    if data.dtype.kind not in "uif":
        raise InputError(f"the {what} has dtype {data.dtype}, expected integers or floats")
    if data.dtype.kind == "f":
        finite = np.isfinite(data)
        if not finite.all():
            n = int((~finite).sum())
            raise InputError(f"the {what} contains {n} NaN or Inf values; replace them before segmenting")
    return data
