"""Human-like scribbles painted from a dense instance mask (for samples, tests and benchmarks).

Three kinds of stroke, painted in this order from one
``numpy.random.default_rng(seed)`` (so a seed gives the same strokes on every
run; the order of the random draws is part of the output and must not change,
as ``sample_data/`` is generated from it):

1. short strokes along the long axis inside some nuclei (value 2);
2. gently turning walks through open background, kept away from nuclei (value 1);
3. thin strokes across the narrow background gaps between nearby nuclei (value 1).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi
from skimage.draw import line as draw_line
from skimage.measure import regionprops
from skimage.morphology import disk, skeletonize

from ..errors import InputError

#: nuclei smaller than this (pixels) get no stroke: a person would not bother
_MIN_OBJECT_AREA = 60
#: a background walk shorter than this (pixels) is drawn again (it left the open background at once)
_MIN_WALK_PIXELS = 15


def _polyline(points: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of a polyline through ``points`` ((K, 2) float yx), clipped to ``shape``."""
    rr_all, cc_all = [], []
    pts = np.rint(points).astype(int)
    for p, q in zip(pts[:-1], pts[1:], strict=True):
        rr, cc = draw_line(int(p[0]), int(p[1]), int(q[0]), int(q[1]))
        rr_all.append(rr)
        cc_all.append(cc)
    rr = np.concatenate(rr_all)
    cc = np.concatenate(cc_all)
    keep = (rr >= 0) & (rr < shape[0]) & (cc >= 0) & (cc < shape[1])
    return rr[keep], cc[keep]


def _brush(centreline: np.ndarray, radius: int, allowed: np.ndarray) -> np.ndarray:
    """Stamp a disc brush of ``radius`` along a boolean centreline, kept inside ``allowed``."""
    if radius <= 0:
        return centreline & allowed
    return ndi.binary_dilation(centreline, disk(radius)) & allowed


def _background_walk(
    rng: np.random.Generator, safe: np.ndarray, ys: np.ndarray, xs: np.ndarray
) -> np.ndarray:
    """Centreline (bool (Y, X)) of a gently turning walk that stays inside ``safe``."""
    shape = safe.shape
    j = int(rng.integers(ys.size))
    pos = np.array([ys[j], xs[j]], float)
    heading = rng.uniform(0, 2 * math.pi)
    pts = [pos.copy()]
    for _seg in range(int(rng.integers(3, 7))):
        heading += rng.normal(0.0, 0.5)
        pos = pos + rng.uniform(6.0, 12.0) * np.array([math.sin(heading), math.cos(heading)])
        pts.append(pos.copy())
    rr, cc = _polyline(np.array(pts), shape)
    centre = np.zeros(shape, bool)
    centre[rr, cc] = True
    # Keep only the part of the path connected to its start.
    centre &= safe
    parts, _n = ndi.label(centre, np.ones((3, 3), bool))
    return parts == parts[ys[j], xs[j]]


def _object_stroke(rng: np.random.Generator, prop, radii: tuple[int, int]) -> np.ndarray | None:
    """A slightly bent stroke (bool, the shape of ``prop``'s bounding box) along one nucleus, or None."""
    obj = prop.image
    radius = int(rng.integers(radii[0], radii[1] + 1))
    inner = ndi.binary_erosion(obj, disk(radius))
    while not inner.any() and radius > 1:
        radius -= 1
        inner = ndi.binary_erosion(obj, disk(radius))
    if not inner.any():
        return None
    y0, x0 = prop.bbox[:2]
    cy, cx = prop.centroid[0] - y0, prop.centroid[1] - x0
    angle = prop.orientation + rng.normal(0.0, 0.25)
    half = 0.5 * prop.axis_major_length * rng.uniform(0.45, 0.8)
    dy, dx = math.cos(angle), math.sin(angle)
    bend = rng.normal(0.0, 0.12) * half
    pts = np.array(
        [
            [cy - dy * half, cx - dx * half],
            [cy + dx * bend, cx - dy * bend],
            [cy + dy * half, cx + dx * half],
        ]
    )
    rr, cc = _polyline(pts, obj.shape)
    centre = np.zeros(obj.shape, bool)
    centre[rr, cc] = True
    return _brush(centre & inner, radius, obj)


def _paint_objects(out: np.ndarray, instances: np.ndarray, rng: np.random.Generator, n_objects: int,
                   radii: tuple[int, int]) -> None:
    """Paint value 2 strokes inside ``n_objects`` random nuclei of ``instances`` (in place)."""
    props = [p for p in regionprops(instances) if p.area >= _MIN_OBJECT_AREA]
    chosen = rng.permutation(len(props))[: max(int(n_objects), 0)]
    for k in chosen:
        p = props[int(k)]
        stroke = _object_stroke(rng, p, radii)
        if stroke is not None:
            y0, x0, y1, x1 = p.bbox
            out[y0:y1, x0:x1][stroke] = 2


def _paint_open_background(out: np.ndarray, background: np.ndarray, rng: np.random.Generator,
                           n_background: int, radii: tuple[int, int]) -> None:
    """Paint value 1 walks through open background, keeping a margin from nuclei as people do."""
    for _ in range(max(int(n_background), 0)):
        radius = int(rng.integers(radii[0], radii[1] + 1))
        safe = ndi.binary_erosion(background, disk(radius + 2), border_value=1)
        ys, xs = np.nonzero(safe)
        if ys.size == 0:
            break
        best = None
        # A walk that leaves the open background at once leaves a dot; try again.
        for _try in range(10):
            centre = _background_walk(rng, safe, ys, xs)
            if best is None or centre.sum() > best.sum():
                best = centre
            if best.sum() >= _MIN_WALK_PIXELS:
                break
        out[_brush(best, radius, background) & (out == 0)] = 1


def _paint_gaps(out: np.ndarray, instances: np.ndarray, background: np.ndarray, rng: np.random.Generator,
                n_gaps: int) -> None:
    """Paint thin value 1 lines in background pinched between two nuclei (in place)."""
    big = np.iinfo(np.int64).max
    labels64 = instances.astype(np.int64)
    hi_lab = ndi.maximum_filter(labels64, size=7)
    lo_lab = ndi.minimum_filter(np.where(labels64 > 0, labels64, big), size=7)
    gap = background & (lo_lab != big) & (hi_lab != lo_lab)
    # Only the pinch itself: at most 4 px from the nearest nucleus.
    gap &= ndi.distance_transform_edt(background) <= 4
    ys, xs = np.nonzero(gap)
    if not ys.size:
        return
    yy, xx = np.ogrid[: out.shape[0], : out.shape[1]]
    for _ in range(max(int(n_gaps), 0)):
        j = int(rng.integers(ys.size))
        near = (yy - ys[j]) ** 2 + (xx - xs[j]) ** 2 <= 36
        piece = gap & near
        parts, _n = ndi.label(piece, np.ones((3, 3), bool))
        piece = skeletonize(parts == parts[ys[j], xs[j]])
        out[_brush(piece, 1, background) & (out == 0)] = 1


def make_scribbles(
    instances: np.ndarray,
    seed: int = 0,
    *,
    n_objects: int = 25,
    n_background: int = 8,
    n_gaps: int = 6,
    brush_radius: tuple[int, int] = (2, 3),
) -> np.ndarray:
    """Paint sparse, human-like scribbles from a dense instance mask.

    Short strokes run along the long axis inside ``n_objects`` nuclei (value
    2); curvy strokes wander through open background (value 1), and thin
    strokes mark narrow background gaps between nearby nuclei (value 1).
    Strokes of value 2 stay inside their nucleus and strokes of value 1 stay
    in the background, so the scribbles never contradict ``instances``.

    Parameters
    ----------
    instances : (Y, X) int array
        0 = background, each nucleus its own id.
    seed : int
        Seed of the random generator.
    n_objects, n_background, n_gaps : int
        Number of nucleus strokes, open-background strokes and gap strokes.
    brush_radius : (int, int)
        Inclusive range of the brush radius in pixels.

    Returns
    -------
    (Y, X) uint8
        0 = not annotated, 1 = background, 2 = nucleus (the ``scribbles`` convention).
    """
    instances = np.asarray(instances)
    if instances.ndim != 2:
        raise InputError(
            f"make_scribbles needs a 2D (Y, X) instance mask, got shape {instances.shape}."
        )
    if not np.issubdtype(instances.dtype, np.integer):
        raise InputError(f"instances must be an integer label image, got dtype {instances.dtype}.")
    rng = np.random.default_rng(seed)
    out = np.zeros(instances.shape, np.uint8)
    radii = (int(brush_radius[0]), int(brush_radius[1]))
    background = instances == 0
    # the order of these three calls fixes the order of the random draws, hence the strokes
    _paint_objects(out, instances, rng, n_objects, radii)
    _paint_open_background(out, background, rng, n_background, radii)
    _paint_gaps(out, instances, background, rng, n_gaps)
    return out
