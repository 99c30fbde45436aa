"""Physical pixel sizes: which size an image has, and the resampling that brings it to a model's.

A pixel size is µm per pixel along each spatial axis, in axis order (``(y, x)``, or ``(z, y, x)``
for a stack), as :class:`~napari_seglab.core.io._tiff.ImageData` carries it. Only the in-plane
(Y, X) sizes decide resampling here: planes are predicted one by one, and a stack's z step is the
3D code's business.

A checkpoint records the pixel size its training images had (``CheckpointMeta.pixel_size``); its
object ``scale`` is relative to those pixels. An image whose pixels are ``r`` times the model's
(``r = image µm / model µm``) is therefore resampled by ``scale * r`` before the network sees it:
objects then reach the network at the size it learnt them at.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import InputError

#: the pixel sizes (µm) a user may give: 0.1 nm .. 1 cm (the range a file's metadata is read in)
MIN_PIXEL_UM, MAX_PIXEL_UM = 1e-4, 1e4
#: pixel sizes within this relative difference are the same size (rounding in metadata, not a change)
SAME_SIZE = 0.01
#: the combined resampling (object scale x pixel ratio) prediction accepts: beyond it an image is
#: either blown up past any memory budget or shrunk until objects are a few pixels
MIN_FACTOR, MAX_FACTOR = 1 / 16, 16.0


def check_pixel_size(value, what: str = "pixel size") -> float:
    """A user-given pixel size in µm, as a float; InputError outside MIN_PIXEL_UM..MAX_PIXEL_UM."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not math.isfinite(value) \
            or not MIN_PIXEL_UM <= value <= MAX_PIXEL_UM:
        raise InputError(f"{what} must be a number of µm per pixel from {MIN_PIXEL_UM:g} to {MAX_PIXEL_UM:g}; "
                         f"got {value!r}")
    return float(value)


def yx_size(pixel_size: Sequence[float] | None) -> tuple[float, float] | None:
    """The in-plane ``(y, x)`` µm of a pixel size (its last two entries), or None when unknown."""
    if pixel_size is None or len(pixel_size) < 2:
        return None
    y, x = (float(v) for v in pixel_size[-2:])
    return (y, x) if y > 0 and x > 0 else None


def pixel_size_or(pixel_size: Sequence[float] | None, fallback: float | None) -> tuple[float, ...] | None:
    """The file's pixel size, else ``(fallback, fallback)`` (a user's ``--pixel-size``), else None."""
    if pixel_size is not None:
        return tuple(float(v) for v in pixel_size)
    if fallback is None:
        return None
    size = check_pixel_size(fallback)
    return (size, size)


def pixel_ratio(image: Sequence[float] | None, model: Sequence[float] | None) -> float | None:
    """How many model pixels one image pixel spans (image µm / model µm, geometric mean of Y and X).

    None when either size is unknown or the two are the same size (within :data:`SAME_SIZE`).
    """
    a, b = yx_size(image), yx_size(model)
    if a is None or b is None:
        return None
    ratio = math.sqrt((a[0] / b[0]) * (a[1] / b[1]))
    return None if abs(ratio - 1.0) <= SAME_SIZE else ratio


def format_size(pixel_size: Sequence[float] | None) -> str:
    """``"0.325 µm"`` (Y and X equal) or ``"0.3 x 0.325 µm"`` (y x x); ``"unknown"`` for None."""
    yx = yx_size(pixel_size)
    if yx is None:
        return "unknown"
    return f"{yx[1]:.4g} µm" if abs(yx[0] - yx[1]) <= SAME_SIZE * yx[1] else f"{yx[0]:.4g} x {yx[1]:.4g} µm"


def prediction_factor(scale: float, image: Sequence[float] | None, model: Sequence[float] | None
                      ) -> tuple[float, str | None]:
    """(resampling factor, one-line note or None) for an image of pixel size ``image`` through a model
    trained at ``model`` with object ``scale``.

    The factor is ``scale * image / model``; the note says why it differs from the model's own scale.
    InputError when it leaves :data:`MIN_FACTOR`..:data:`MAX_FACTOR`.
    """
    ratio = pixel_ratio(image, model)
    if ratio is None:
        return scale, None
    factor = scale * ratio
    if not MIN_FACTOR <= factor <= MAX_FACTOR:
        raise InputError(f"the image's pixel size ({format_size(image)}) is {ratio:.3g}x the model's "
                         f"({format_size(model)}): resampling by {factor:.3g} is outside "
                         f"{MIN_FACTOR:g}..{MAX_FACTOR:g}; check the pixel size, or train at this one")
    return factor, (f"pixel size {format_size(image)}, the model's {format_size(model)}: "
                    f"resampling the image by {factor:.3g}")


def _zoom_yx(array: np.ndarray, axes: str, factor: tuple[float, float], order: int) -> np.ndarray:
    """``array`` (canonical ``axes``) resampled along Y and X by ``factor`` (other axes kept)."""
    from scipy import ndimage as ndi

    zoom = [1.0] * array.ndim
    zoom[axes.index("Y")], zoom[axes.index("X")] = factor
    return ndi.zoom(array, zoom, order=order, mode="nearest", grid_mode=True)


def match_pixel_sizes(images: Sequence[np.ndarray], labels: Sequence[np.ndarray | None] | None,
                      axes: Sequence[str], sizes: Sequence[Sequence[float] | None],
                      reference: Sequence[float] | None = None, reference_name: str = "the model") -> tuple[list[np.ndarray], list[np.ndarray | None] | None, tuple[float, ...] | None,
                                 list[str]]:
    """Bring training images of different pixel sizes to the first known one's.

    ``images`` / ``labels``: arrays in canonical ``axes`` (labels without C); ``sizes``: each image's
    pixel size or None; ``reference``: the size to bring them to (a checkpoint being fine-tuned, named
    ``reference_name``), else the first known one. Returns (images, labels, the reference pixel size or None, notes). An image
    of another size is resampled in Y and X (linear for the image, nearest for its labels) and a
    note says so; an image of unknown size is taken to be at the reference size, with a note.
    """
    known = [(i, s) for i, s in enumerate(sizes) if yx_size(s) is not None]
    images, labels = list(images), None if labels is None else list(labels)
    if yx_size(reference) is not None:
        reference, name = tuple(float(v) for v in reference), reference_name
    elif known:
        reference, name = tuple(float(v) for v in known[0][1]), f"image {known[0][0] + 1}"
    else:
        return images, labels, None, []
    notes = []
    unknown = [i for i, s in enumerate(sizes) if yx_size(s) is None]
    if unknown and known:
        notes.append(f"image(s) {', '.join(str(i + 1) for i in unknown)} have no pixel size: taken to be "
                     f"{format_size(reference)}, as {name}")
    ref_yx = yx_size(reference)
    for i, size in known:
        yx = yx_size(size)
        if all(abs(a / b - 1.0) <= SAME_SIZE for a, b in zip(yx, ref_yx, strict=True)):
            continue
        factor = (yx[0] / ref_yx[0], yx[1] / ref_yx[1])
        if not all(MIN_FACTOR <= f <= MAX_FACTOR for f in factor):
            raise InputError(f"image {i + 1} has pixel size {format_size(size)}, {name} "
                             f"{format_size(reference)}: too different to train one model on")
        images[i] = _zoom_yx(np.asarray(images[i]), axes[i], factor, order=1)
        if labels is not None and labels[i] is not None:
            labels[i] = _zoom_yx(np.asarray(labels[i]), axes[i].replace("C", ""), factor, order=0)
        notes.append(f"image {i + 1} has pixel size {format_size(size)}: resampled by "
                     f"{math.sqrt(factor[0] * factor[1]):.3g} to {name}'s {format_size(reference)}")
    return images, labels, reference, notes
