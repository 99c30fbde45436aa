"""Microscope files: one :func:`read_image` for TIFF / OME-TIFF, Nikon ND2, Leica LIF and Zeiss CZI.

Each format is read by its maintained, BSD-licensed reader (``tifffile``; ``nd2``, ``liffile`` and
``czifile`` from the ``formats`` extra), imported only when a file of its kind is opened. Every
reader gives the same thing: the array of one scene in the canonical axes of
:mod:`napari_seglab.core.io._tiff` (a subset of ``TZYXC``) and the pixel size its metadata declares.

- ``scene``: which image of a file holding several (an OME-TIFF series, an ND2 position, a LIF
  image, a CZI scene), by index from 0 (a LIF image also by name); None = the first.
- ``channel``: keep one channel (index from 0); None = all.

A pyramidal OME-TIFF is read at its full-resolution level. Any failure to parse a file becomes one
:class:`~napari_seglab.core.errors.InputError` line naming the file.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ._paths import check_regular_file
from ._tiff import (
    ImageData,
    _codec_hint,
    _in_um,
    _ome_sizes,
    _quiet_tifffile,
    check_declared_size,
    file_axes,
    file_pixel_sizes,
    normalize_axes,
    spatial_pixel_size,
)
from ._tiff import read_image as read_tiff_image

#: the file kinds :func:`read_image` reads, by suffix (lower case), and the package that reads each
FORMATS = {".tif": "tiff", ".tiff": "tiff", ".nd2": "nd2", ".lif": "lif", ".czi": "czi"}
READERS = {"tiff": "tifffile", "nd2": "nd2", "lif": "liffile", "czi": "czifile"}
#: the glob patterns of every image file :func:`read_image` reads (``seglab batch --pattern images``)
IMAGE_PATTERNS = tuple(f"*{s}" for s in FORMATS)


def image_format(path: str | os.PathLike) -> str:
    """The format of ``path`` by its suffix ("tiff", "nd2", "lif", "czi"); InputError for any other."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        known = ", ".join(FORMATS)
        raise InputError(f"{path}: {suffix or 'no suffix'} is not an image format SegLab reads ({known}; "
                         "OME-TIFF is .ome.tif)")
    return FORMATS[suffix]


@dataclass
class _Scene:
    """What a format reader hands back: the array of one scene, its axis letters and sizes (µm by letter)."""

    data: np.ndarray
    axes: str
    sizes: dict[str, float]


def read_image(path: str | os.PathLike, *, scene: int | str | None = None, channel: int | None = None,
               axes: str | None = None) -> ImageData:
    """Read one scene of an image file into canonical axes, with its pixel size (see the module docstring).

    ``path``: a TIFF / OME-TIFF, ND2, LIF or CZI file (by suffix). ``axes``: what the scene's axes are,
    in the file's order (``"CYX"`` for a 3-plane TIFF whose planes are channels), replacing what the
    file says. Returns an :class:`~napari_seglab.core.io._tiff.ImageData`; InputError (one line) for a
    bad file, an unknown suffix, a missing reader package, a scene, channel or axes the file does not have.
    """
    check_regular_file(Path(path))
    suffix = Path(path).suffix.lower()
    kind = FORMATS.get(suffix, "tiff")  # any other suffix is tried as a TIFF (tifffile reads by content)
    scene = _scene_index(scene)
    if kind == "tiff" and scene is None and axes is None:  # the plain TIFF path: every check the TIFF reader runs
        try:
            image = read_tiff_image(path)
        except InputError as exc:
            if suffix in FORMATS or "not a valid TIFF" not in str(exc):
                raise
            raise InputError(f"{path}: not a TIFF, and {suffix or 'no suffix'} is no other format SegLab reads "
                             f"({', '.join(FORMATS)})") from None
    else:
        reader = {"tiff": _read_tiff, "nd2": _read_nd2, "lif": _read_lif, "czi": _read_czi}[kind]
        with _file_errors(path, kind):
            found = reader(Path(path), scene)
        if axes is not None:
            found.axes = _given_axes(axes, found, path)
        image = _canonical(found, path)
    return _pick_channel(image, channel) if channel is not None else image


def _given_axes(axes, found: _Scene, path) -> str:
    """The user's axes for a scene: one letter of T, Z, C, Y, X per dimension, each once, Y and X among them."""
    text = str(axes).strip().upper()
    if len(text) != found.data.ndim or set(text) - set("TZCYX") or len(set(text)) != len(text) \
            or not {"Y", "X"} <= set(text):
        shape = "x".join(map(str, found.data.shape))
        raise InputError(f"{path}: axes {axes!r} do not describe its {shape} image (read as {found.axes!r}); give one "
                         f"letter of T, Z, C, Y, X per dimension, Y and X included")
    return text


def _scene_index(scene) -> int | str | None:
    """A scene given as text (the command line) becomes an index when it is a number."""
    if isinstance(scene, str) and scene.strip().isdigit():
        return int(scene)
    if isinstance(scene, bool) or (scene is not None and not isinstance(scene, (int, str))):
        raise InputError(f"scene must be an index from 0 or a name; got {scene!r}")
    if isinstance(scene, int) and scene < 0:
        raise InputError(f"scene must be an index from 0; got {scene}")
    return scene


@contextlib.contextmanager
def _file_errors(path, kind: str) -> Iterator[None]:
    """Any failure of a format reader on an untrusted file becomes one InputError naming the file."""
    try:
        yield
    except InputError:
        raise
    except ImportError as exc:
        raise InputError(f"{path}: reading {kind.upper()} files needs the {READERS[kind]} package "
                         f"(pip install 'napari-seglab[formats]'): {exc}") from exc
    except MemoryError as exc:
        raise InputError(f"{path}: the image does not fit in memory; crop or split it") from exc
    except Exception as exc:  # noqa: BLE001 - any failure to parse an untrusted file is the file's fault
        hint = _codec_hint(exc)
        first = hint or f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
        raise InputError(f"{path}: not a readable {kind.upper()} file ({first})") from exc


def _choose(count: int, scene: int | str | None, path, what: str, names: list[str] | None = None) -> int:
    """The index of the scene asked for among ``count`` (by index, or by name among ``names``)."""
    whats = what if what.endswith("s") else f"{what}s"
    if count == 0:
        raise InputError(f"{path}: the file holds no image")
    if scene is None:
        return 0
    if isinstance(scene, str):
        if names and scene in names:
            return names.index(scene)
        shown = f"; its {whats}: {', '.join(names[:10])}" if names else ""
        raise InputError(f"{path}: no {what} named {scene!r}{shown}")
    if scene >= count:
        raise InputError(f"{path}: {what} {scene} asked for, but the file holds {count} "
                         f"({whats} 0..{count - 1})")
    return scene


# ----------------------------------------------------------------------------- OME-TIFF


def _read_tiff(path: Path, scene: int | str | None) -> _Scene:
    """One series of a (multi-series, maybe pyramidal) TIFF: its full-resolution level."""
    import tifffile

    with _quiet_tifffile(), tifffile.TiffFile(path) as tif:
        names = [s.name or "" for s in tif.series]
        index = _choose(len(tif.series), scene, path, "series", names)
        series = tif.series[index]
        level = series.levels[0] if getattr(series, "levels", None) else series  # a pyramid's full resolution
        check_declared_size(path, level.shape, level.dtype)
        data = level.asarray()
        if tif.is_ome and tif.ome_metadata:
            sizes = _ome_sizes(tif.ome_metadata, index)
        else:
            sizes = file_pixel_sizes(tif)
        return _Scene(data, level.axes, sizes)


# ----------------------------------------------------------------------------- ND2


def _read_nd2(path: Path, scene: int | str | None) -> _Scene:
    """One position (the ``P`` axis) of a Nikon ND2 file, with its voxel size."""
    import nd2

    with nd2.ND2File(path) as f:
        sizes = dict(f.sizes)
        axes = "".join(sizes)
        index = _choose(sizes.get("P", 1), scene, path, "position")
        shape = [n for a, n in sizes.items() if a != "P"]
        check_declared_size(path, shape, f.dtype)
        data = f.to_dask()
        if "P" in sizes:
            data = data[(slice(None),) * axes.index("P") + (index,)]
            axes = axes.replace("P", "")
        data = np.asarray(data)
        voxel = f.voxel_size()
        um = {a: float(v) for a, v in zip("XYZ", (voxel.x, voxel.y, voxel.z), strict=True) if v and v > 0}
        if not _nd2_calibrated(f):  # nd2 reports 1 µm for a size the file does not record
            um = {}
    return _Scene(data, axes, um)


def _nd2_calibrated(f) -> bool:
    """Whether an open ND2 file records its in-plane pixel calibration."""
    try:
        channels = f.metadata.channels or []
        return any(bool(c.volume.axesCalibrated[0]) and bool(c.volume.axesCalibrated[1]) for c in channels)
    except Exception:  # noqa: BLE001 - a legacy file without this block: trust a size other than nd2's 1 µm
        voxel = f.voxel_size()
        return (voxel.x, voxel.y) != (1.0, 1.0)


# ----------------------------------------------------------------------------- LIF

#: Leica dimension lengths are in the unit of their ``Unit`` attribute, by default metres
_LIF_UNITS = {"m": 1e6, "um": 1.0, "µm": 1.0, "mm": 1e3, "nm": 1e-3, "": 1e6}


def _lif_sizes(element) -> dict[str, float]:
    """{"X", "Y", "Z": µm} of a LIF image's XML element: each dimension's Length over its steps."""
    letters = {"1": "X", "2": "Y", "3": "Z"}
    sizes = {}
    for dim in element.findall("./Data/Image/ImageDescription/Dimensions/DimensionDescription"):
        letter = letters.get(dim.get("DimID", ""))
        try:
            n, length = int(dim.get("NumberOfElements", "0")), float(dim.get("Length", "0"))
        except ValueError:
            continue
        factor = _LIF_UNITS.get(dim.get("Unit", "").strip())
        if letter and n > 1 and length > 0 and factor is not None:
            size = _in_um(length / (n - 1) * factor, "µm")
            if size is not None:
                sizes[letter] = size
    return sizes


def _read_lif(path: Path, scene: int | str | None) -> _Scene:
    """One image of a Leica LIF file (by index or name), with its pixel size."""
    import liffile

    with liffile.LifFile(path) as lif:
        images = lif.images
        names = [im.name for im in images]
        image = images[_choose(len(images), scene, path, "image", names)]
        check_declared_size(path, image.shape, image.dtype)
        return _Scene(np.asarray(image.asarray()), "".join(image.dims), _lif_sizes(image.xml_element))


# ----------------------------------------------------------------------------- CZI


def _czi_sizes(xml: str) -> dict[str, float]:
    """{"X", "Y", "Z": µm} from CZI metadata: Scaling/Items/Distance[Id]/Value, in metres."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}
    sizes = {}
    for dist in root.findall(".//Scaling/Items/Distance"):
        axis, value = dist.get("Id"), dist.findtext("Value")
        if axis in ("X", "Y", "Z") and value:
            size = _in_um(value, "m")  # CZI stores distances in metres
            if size is not None:
                sizes[axis] = size
    return sizes


def _read_czi(path: Path, scene: int | str | None) -> _Scene:
    """One scene (the ``S`` axis) of a Zeiss CZI file, with its pixel size.

    czifile's axis letters: ``S`` scene, ``0`` the samples of an RGB pixel, ``B``/``V``/``H``... other
    dimensions (refused unless of length 1).
    """
    import czifile

    with czifile.CziFile(path) as czi:
        axes, shape = czi.axes, czi.shape
        count = shape[axes.index("S")] if "S" in axes else 1
        index = _choose(count, scene, path, "scene")
        check_declared_size(path, shape, czi.dtype)  # czifile assembles every scene, then one is kept
        data = czi.asarray()
        try:
            sizes = _czi_sizes(czi.metadata(raw=True))
        except TypeError:  # older czifile: metadata is a property / takes no argument
            sizes = _czi_sizes(czi.metadata())
    if "S" in axes:
        data = np.take(data, index, axis=axes.index("S"))
        axes = axes.replace("S", "")
    return _Scene(data, axes.replace("0", "S"), sizes)  # "0": RGB samples (tifffile's S, a channel axis)


# ----------------------------------------------------------------------------- common


#: axis letters of the readers that are not image axes of a scene; of length 1 they are dropped
_OTHER_AXES = {"B": "block", "V": "view", "H": "phase", "I": "illumination", "R": "rotation", "M": "mosaic tile",
               "A": "angle", "Q": "other", "L": "loop", "N": "slice", "λ": "wavelength", "Λ": "excitation"}


def _canonical(found: _Scene, path) -> ImageData:
    """A reader's scene in canonical axes, singleton extra axes dropped, with its pixel size."""
    data, axes = found.data, found.axes.upper().replace("Λ", "λ")
    if len(axes) != data.ndim:
        raise InputError(f"{path}: the reader gave axes {found.axes!r} for an array of {data.ndim} dimensions")
    keep = []
    for i, a in enumerate(axes):
        if a in "TZCYXS":
            keep.append(i)
        elif data.shape[i] != 1:
            what = _OTHER_AXES.get(a, "unknown")
            raise InputError(f"{path}: the image has a {what} axis ({a!r}) of {data.shape[i]}; SegLab reads "
                             "T, Z, C, Y and X (export the part you want as a TIFF)")
    if len(keep) != data.ndim:
        data = data.reshape([data.shape[i] for i in keep])
        axes = "".join(axes[i] for i in keep)
    if "S" in axes and "C" in axes:  # RGB samples and channels: one of them must be a single value
        s, c = axes.index("S"), axes.index("C")
        if data.shape[c] == 1:
            data, axes = np.squeeze(data, c), axes.replace("C", "")
        elif data.shape[s] == 1:
            data, axes = np.squeeze(data, s), axes.replace("S", "")
        else:
            raise InputError(f"{path}: the image has RGB samples and {data.shape[c]} channels; choose a channel")
    raw_shape, raw_axes = data.shape, axes
    try:
        data, axes = normalize_axes(data, axes)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    if data.size == 0:
        raise InputError(f"{path}: the image is empty")
    return ImageData(data=data, axes=axes, path=str(path), file_axes=file_axes(raw_shape, raw_axes),
                     pixel_size=spatial_pixel_size(found.sizes, axes))


def _pick_channel(image: ImageData, channel: int) -> ImageData:
    """``image`` with only channel ``channel`` (its C axis dropped)."""
    if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)) or channel < 0:
        raise InputError(f"channel must be an index from 0; got {channel!r}")
    count = image.data.shape[-1] if "C" in image.axes else 1
    if channel >= count:
        raise InputError(f"{image.path}: channel {channel} asked for, but the image has {count} "
                         f"(channels 0..{count - 1})")
    if "C" not in image.axes:
        return image
    return ImageData(data=np.ascontiguousarray(image.data[..., channel]), axes=image.axes.replace("C", ""),
                     path=image.path, file_axes=(image.file_axes or image.axes).replace("C", ""),
                     pixel_size=image.pixel_size)


def reading_note(scene: int | str | None, channel: int | None, pixel_size: float | None = None,
                 axes: str | None = None) -> str:
    """The reading choices in a few words, for a batch manifest (``scene=1 channel=0``); "" for none."""
    parts = [f"scene={scene}" if scene is not None else "", f"channel={channel}" if channel is not None else "",
             f"axes={axes}" if axes else "", f"pixel_size={pixel_size:g}" if pixel_size is not None else ""]
    return " ".join(p for p in parts if p)
