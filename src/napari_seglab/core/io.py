"""TIFF reading and writing, axes normalisation, atomic files, folder scans.

Image arrays in the core use one axis order, a subset of ``T Z Y X C``
(channels last, as napari's RGB images), described by an ``axes`` string:
``"YX"``, ``"YXC"``, ``"ZYX"``, ``"TZYXC"``... Singleton axes other than Y and
X are dropped on reading.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import os
import uuid
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

CANONICAL = "TZYXC"
TIFF_SUFFIXES = (".tif", ".tiff")


@dataclass
class ImageData:
    """An image read from disk: ``data`` in canonical axis order, ``axes`` naming them."""

    data: np.ndarray
    axes: str
    path: str | None = None

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


def normalize_axes(data: np.ndarray, axes: str) -> tuple[np.ndarray, str]:
    """Reorder ``data`` with tifffile-style ``axes`` into canonical ``TZYXC`` order.

    ``S`` (samples, RGB) becomes ``C``; unknown stacking axes (``I``, ``Q``)
    become ``Z`` (or ``T`` when a Z is present). Singleton axes other than Y and
    X are dropped. More than one axis of a kind is an error.
    """
    axes = axes.upper()
    if len(axes) != data.ndim:
        raise InputError(f"axes {axes!r} do not match an array of {data.ndim} dimensions")
    mapped = []
    for a in axes:
        if a == "S":
            a = "C"
        elif a not in CANONICAL:
            a = "Z" if "Z" not in axes and "Z" not in mapped else "T"
        mapped.append(a)
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
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a TIFF file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: permission denied (file is not readable)")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty (0 bytes)")


def read_tiff(path: str | os.PathLike) -> tuple[np.ndarray, str]:
    """Read the first series of a TIFF as (array, tifffile axes); errors become InputError."""
    import tifffile

    path = Path(path)
    _check_readable(path)
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise InputError(f"{path}: TIFF contains no image data")
            series = tif.series[0]
            axes = series.axes
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                data = series.asarray()
    except InputError:
        raise
    except tifffile.TiffFileError as exc:
        raise InputError(f"{path}: not a valid TIFF file ({exc})") from exc
    except (ValueError, OSError, EOFError, IndexError, KeyError) as exc:
        raise InputError(f"{path}: corrupt or truncated TIFF ({type(exc).__name__}: {exc})") from exc
    if data is None or data.size == 0:
        raise InputError(f"{path}: TIFF contains no image data (header only?)")
    return data, axes


def read_image(path: str | os.PathLike) -> ImageData:
    """Read a TIFF image into canonical axis order (see module docstring)."""
    data, axes = read_tiff(path)
    data, axes = normalize_axes(data, axes)
    if data.ndim > 5:
        raise InputError(f"{path}: images with more than 5 dimensions are not supported")
    return ImageData(data=data, axes=axes, path=str(path))


def read_labels(path: str | os.PathLike, spatial_like: ImageData | None = None) -> np.ndarray:
    """Read a label TIFF: an integer array without a channel axis.

    When ``spatial_like`` is given, the labels must have the image's shape
    without its channel axis.
    """
    data, axes = read_tiff(path)
    data, axes = normalize_axes(data, axes)
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


# ----------------------------------------------------------------------------- atomic files


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success it replaces ``final`` atomically.

    On any exception (or a cancelled generator) the temporary file is removed
    and ``final`` keeps its previous content. A process killed mid-write leaves
    only a hidden ``.name.tmp-*`` file, never a partial file under ``final``.
    """
    final = Path(final)
    parent = final.parent if str(final.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{parent}: output folder does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{parent}: output folder is not writable")
    tmp = parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{final.suffix}"
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise InputError(f"{final}: no space left on the device; nothing was written") from exc
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when two paths name the same file (existing or not)."""
    a, b = Path(a), Path(b)
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def ensure_not_input(output: str | os.PathLike, inputs: Iterable[str | os.PathLike]) -> None:
    """Refuse an output path that names one of the input files."""
    for inp in inputs:
        if inp is not None and same_file(output, inp):
            raise InputError(f"{output}: output would overwrite the input file; choose another name")


def write_tiff(path: str | os.PathLike, data: np.ndarray, *, axes: str | None = None,
               compression: str | None = "zlib", protect: Iterable[str | os.PathLike] = ()) -> Path:
    """Write ``data`` to ``path`` atomically as a TIFF (never over a file in ``protect``)."""
    import tifffile

    path = Path(path)
    ensure_not_input(path, protect)
    metadata = {"axes": axes} if axes else None
    with atomic_path(path) as tmp:
        try:
            tifffile.imwrite(tmp, data, compression=compression, metadata=metadata,
                             photometric="minisblack")
        except OSError:
            raise
    return path


def write_csv(path: str | os.PathLike, rows: Sequence[dict], columns: Sequence[str] | None = None,
              protect: Iterable[str | os.PathLike] = ()) -> Path:
    """Write dict rows to a CSV atomically; columns default to the union in first-seen order."""
    path = Path(path)
    ensure_not_input(path, protect)
    if columns is None:
        seen: dict[str, None] = {}
        for row in rows:
            for key in row:
                seen.setdefault(key, None)
        columns = list(seen)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def safe_child(folder: str | os.PathLike, relative: str | os.PathLike) -> Path:
    """``folder / relative``, refusing names that would escape ``folder`` (``..``, absolute)."""
    folder = Path(folder).resolve()
    candidate = (folder / relative).resolve()
    if candidate != folder and folder not in candidate.parents:
        raise InputError(f"{relative}: output name would escape the output folder {folder}")
    return candidate


def scan_folder(folder: str | os.PathLike, pattern: str = "*.tif", recursive: bool = False) -> list[Path]:
    """Files in ``folder`` matching the glob ``pattern`` (sorted; hidden files skipped)."""
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise InputError(f"{folder}: is not a folder")
    found = folder.rglob(pattern) if recursive else folder.glob(pattern)
    return sorted(p for p in found if p.is_file() and not p.name.startswith("."))
