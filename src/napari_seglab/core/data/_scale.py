"""How big the painted objects are, when the painting says nothing about their outline.

Whole objects (``instances`` and ``objects`` labels) give their size directly
(:func:`~napari_seglab.core.data._samples.median_diameter`). Scribbles do not: a stroke inside a nucleus
is a line, not its outline. :func:`stroke_diameter` reads the size from the
image instead, at the foreground strokes: a bright (or dark) blob of diameter
``d`` answers a scale-normalised Laplacian of Gaussian most strongly at
``sigma = d / (2 sqrt 2)``, so the sigma that answers most strongly on average
along the strokes gives the objects' typical diameter. On the sample nuclei
(median diameter 21 px) it reads 19 px, 10 px at half size and 44 px at double;
on a real DSB2018 nuclei image (23.6 px) it reads 23.5 px.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from ..labels import IGNORE, get_mode, object_instances
from ._samples import TARGET_DIAMETER, median_diameter, scale_for

#: the object diameter (pixels) a network trained on scribbles resolves best: larger than for whole
#: objects (:data:`~napari_seglab.core.data._samples.TARGET_DIAMETER`), because strokes never show the thin background between
#: touching objects, and the network only learns to part them where that gap is a few pixels wide.
#: 700 steps of the fast preset, split_instances, AP@0.5 (seeds 0-1 or 0-2): see docs/training-cpu.md
STROKE_TARGET_DIAMETER = 36.0
#: the diameters tried, in pixels: 2.8 .. 91 (sigma 1 .. 32), geometric steps
SIGMAS = tuple(np.geomspace(1.0, 32.0, 18))
#: strokes with fewer pixels say too little to estimate from
MIN_STROKE_PIXELS = 20
#: a plane larger than this is estimated on block means (objects smaller than a block are not seen)
_MAX_PIXELS = 1 << 20


def stroke_diameter(planes: Sequence[tuple[np.ndarray, np.ndarray]], background: int = 0) -> float | None:
    """Typical object diameter (pixels) from images and their scribble targets, or None when unknown.

    ``planes``: (image (C, Y, X) float, target (Y, X) int64: class index,
    ``IGNORE`` where unpainted). Class ``background`` is the background; every
    other class is foreground. The image's channels are averaged; objects may
    be brighter or darker than the background (the sign is read from the
    painted pixels).
    """
    responses, total = np.zeros(len(SIGMAS)), 0
    for chw, target in planes:
        image = np.asarray(chw, np.float64).mean(axis=0)
        target = np.asarray(target)
        stride = max(1, int(np.ceil(np.sqrt(image.size / _MAX_PIXELS))))
        if stride > 1:  # block means: a strided view would alias fine texture into small "objects"
            h, w = (image.shape[0] // stride) * stride, (image.shape[1] // stride) * stride
            image = image[:h, :w].reshape(h // stride, stride, w // stride, stride).mean(axis=(1, 3))
            target = target[:h:stride, :w:stride]
        fg = (target != IGNORE) & (target != background)
        bg = target == background
        if np.count_nonzero(fg) < MIN_STROKE_PIXELS // stride:
            continue
        if bg.any() and image[fg].mean() < image[bg].mean():
            image = -image  # dark objects on a bright background
        for i, sigma in enumerate(SIGMAS):
            if sigma < stride:
                continue  # finer than the block means resolve
            response = -(sigma / stride) ** 2 * ndi.gaussian_laplace(image, sigma / stride)
            responses[i] += response[fg].sum() * stride ** 2
        total += np.count_nonzero(fg) * stride ** 2
    if total == 0 or not np.any(responses > 0):
        return None
    return float(2.0 * np.sqrt(2.0) * SIGMAS[int(np.argmax(responses))])


def target_diameter(mode: str) -> float:
    """The diameter objects are resampled to for ``mode``'s labels (scribbles: :data:`STROKE_TARGET_DIAMETER`)."""
    return STROKE_TARGET_DIAMETER if get_mode(mode).painted == "strokes" else TARGET_DIAMETER


def estimate_scale(planes: Sequence[tuple[np.ndarray, np.ndarray]], mode: str) -> tuple[float, float | None]:
    """(resampling factor, measured diameter or None) for training planes ((C, Y, X) image, label plane).

    Whole objects are measured directly (median diameter); scribbles through
    the image at their foreground strokes (:func:`stroke_diameter`); other
    labels give no size (factor 1).
    """
    label_mode = get_mode(mode)
    if label_mode.painted == "strokes":
        diameter = stroke_diameter([(chw, label_mode.targets(lab)) for chw, lab in planes])
    else:
        objects = [object_instances(lab, mode) for _, lab in planes]
        diameter = median_diameter([o for o in objects if o is not None])
    return scale_for(diameter, target_diameter(mode)), diameter
