"""Edge-aware refinement of a foreground probability before it is split into objects.

A network trained on sparse scribbles is never told where an object ends:
its strokes lie inside objects and in the open background, so its
foreground spreads over the gaps between touching objects and the objects
merge. The image itself still shows those gaps. A guided filter (He, Sun and
Tang, "Guided image filtering", ECCV 2010) makes the probability locally a
linear function of the image intensity, so its transitions move onto the
image's edges and the dark seams between touching nuclei come back.

Measured on the bundled sample (networks trained 160 steps on the sample
scribbles, 3 seeds, probabilities saved and split both ways): AP@0.5 rose from
0.37 to 0.47 on the unseen right half and from 0.39 to 0.57 on the unseen test
image, AP@0.75 by 1.8x, Dice by 0.01-0.02. The forest baseline of
``benchmarks/quality_vs_time.py`` gains from it too (its "RF+snap" column).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..errors import InputError

#: window radius (pixels at the network's scale) and regulariser (squared intensity, for an
#: image normalised to [0, 1]). Radius 2-6 and eps 1e-4-1e-2 tried: radius 3-4 with eps 1e-3 scored
#: best (3 about 0.02 higher on AP@0.5, 4 about 0.02 higher on AP@0.75); eps 1e-2 leaves seams merged
RADIUS, EPS = 4, 1e-3
#: the refined foreground is split into objects above this value (0.5 leaves the seams merged)
SPLIT_THRESHOLD = 0.7


def _box(arr: np.ndarray, radius: int) -> np.ndarray:
    return ndi.uniform_filter(arr, size=2 * radius + 1, mode="reflect")


def snap_to_edges(prob: np.ndarray, guide: np.ndarray, *, radius: int = RADIUS, eps: float = EPS) -> np.ndarray:
    """Guided filter of a foreground probability by the image.

    Parameters
    ----------
    prob : (Y, X) float
        Foreground probability.
    guide : (Y, X) or (C, Y, X) float
        The normalised image the probability was predicted from (channels
        are averaged).
    radius : int
        Half-width of the square window, in pixels.
    eps : float
        Regulariser: intensity variations below about sqrt(eps) count as
        noise, not edges.

    Returns
    -------
    (Y, X) float32
        The refined foreground; it may leave [0, 1] slightly.
    """
    p = np.asarray(prob, np.float32)
    g = np.asarray(guide, np.float32)
    if g.ndim == p.ndim + 1:
        g = g.mean(axis=0)
    if p.ndim != 2 or g.shape != p.shape:
        raise InputError(f"guide of shape {np.shape(guide)} does not match a probability of shape {p.shape}")
    if radius < 1 or not eps > 0:
        raise InputError(f"radius must be >= 1 and eps > 0; got {radius}, {eps}")
    mean_g, mean_p = _box(g, radius), _box(p, radius)
    var_g = _box(g * g, radius) - mean_g * mean_g
    cov = _box(g * p, radius) - mean_g * mean_p
    a = cov / (np.maximum(var_g, 0) + eps)
    b = mean_p - a * mean_g
    return (_box(a, radius) * g + _box(b, radius)).astype(np.float32)
