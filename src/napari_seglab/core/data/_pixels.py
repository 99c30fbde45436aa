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


def anisotropy_from_pixel_size(pixel_size: Sequence[float] | None, axes: str) -> float | None:
    """z step over the mean y/x pixel size from ``ImageData.pixel_size`` (spatial axes in order), or None."""
    if not pixel_size or "Z" not in axes:
        return None
    spatial = [a for a in axes if a in "ZYX"]
    if len(pixel_size) != len(spatial):
        return None
    size = dict(zip(spatial, pixel_size, strict=True))
    lateral = (size["Y"] + size["X"]) / 2
    return size["Z"] / lateral if lateral > 0 and size["Z"] > 0 else None


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


def _axis_taps(n_in: int, n_out: int, start: int, stop: int, antialias: bool) -> tuple[np.ndarray, np.ndarray]:
    """(indices, weights), each (stop - start, K), of output pixels ``start..stop`` of one axis resampled
    from ``n_in`` to ``n_out`` pixels the way :func:`~._samples.resample_image` does (torch's bilinear,
    ``align_corners=False``, antialiased when shrinking): a triangle filter on global pixel centres,
    widened by the shrink factor, its taps within the plane renormalised. Unused taps have weight 0.
    """
    scale = n_in / n_out
    wide = antialias and scale >= 1.0
    support = scale if wide else 1.0
    inv = 1.0 / scale if wide else 1.0
    centre = scale * (np.arange(start, stop, dtype=np.float64) + 0.5)
    lo = np.maximum((centre - support + 0.5).astype(np.int64), 0)
    hi = np.minimum((centre + support + 0.5).astype(np.int64), n_in)
    k = int((hi - lo).max()) if hi.size else 1
    idx = lo[:, None] + np.arange(k)[None]
    w = np.clip(1.0 - np.abs((idx - centre[:, None] + 0.5) * inv), 0.0, None)
    w[idx >= hi[:, None]] = 0.0
    total = w.sum(1, keepdims=True)
    w = np.divide(w, total, out=np.zeros_like(w), where=total > 0)
    return np.minimum(idx, n_in - 1), w


def source_window(src: Sequence[int], dst: Sequence[int], region: tuple[slice, slice]) -> tuple[slice, slice]:
    """The (Y, X) window of a plane of ``src`` shape that :func:`resample_region` reads for ``region``
    of its resampling to ``dst``."""
    antialias = dst[0] < src[0] or dst[1] < src[1]
    out = []
    for n_in, n_out, part in zip(src[:2], dst[:2], region, strict=True):
        idx, w = _axis_taps(int(n_in), int(n_out), part.start, part.stop, antialias)
        used = idx[w > 0]
        out.append(slice(int(used.min()), int(used.max()) + 1) if used.size else slice(0, 1))
    return out[0], out[1]


def resample_region(read, src: Sequence[int], dst: Sequence[int], region: tuple[slice, slice]) -> np.ndarray:
    """``region`` (Y, X slices of the ``dst`` grid) of a (C, *src) plane resampled to ``dst``: (C, y, x) float32.

    ``read(ys, xs)`` gives the plane's (C, y, x) pixels of a window (a lazy image): only the window
    the region's taps reach is read (:func:`source_window`). The sample positions and weights are
    those of :func:`~._samples.resample_image` over the whole plane, so the region equals the same
    part of the whole plane's resampling up to float32 rounding (about 1e-7 of the range): the
    block-wise prediction resamples each tile this way.
    """
    antialias = dst[0] < src[0] or dst[1] < src[1]
    (iy, wy), (ix, wx) = (_axis_taps(int(n_in), int(n_out), part.start, part.stop, antialias)
                          for n_in, n_out, part in zip(src[:2], dst[:2], region, strict=True))
    ys, xs = source_window(src, dst, region)
    win = np.asarray(read(ys, xs), np.float32)
    iy, ix = np.clip(iy - ys.start, 0, win.shape[-2] - 1), np.clip(ix - xs.start, 0, win.shape[-1] - 1)
    wy, wx = wy.astype(np.float32), wx.astype(np.float32)
    rows = np.zeros((win.shape[0], iy.shape[0], win.shape[-1]), np.float32)
    for k in range(iy.shape[1]):  # along Y: a weighted sum of K gathered rows
        rows += wy[None, :, k, None] * win[:, iy[:, k], :]
    del win
    out = np.zeros((rows.shape[0], iy.shape[0], ix.shape[0]), np.float32)
    for k in range(ix.shape[1]):
        out += wx[None, None, :, k] * rows[:, :, ix[:, k]]
    return out
