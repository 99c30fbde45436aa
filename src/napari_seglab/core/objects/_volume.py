"""Objects in 3D: 2D objects linked across planes, and 3D decoding of combined instance-head fields.

Two ways to turn the planes of a (Z, Y, X) stack into objects that keep one id through the stack:

- :func:`link_planes`: the floor. Each plane is decoded in 2D; an object takes the id of
  the object in the plane above it that it overlaps most (IoU at least ``min_iou``),
  one to one, else a new id.
- :func:`decode_volume`: a 3D field from the 2D network run along the three axes
  (:mod:`napari_seglab.core.predict._volume` combines them) decoded in 3D:
  ``flows`` (K = 4: foreground logit, dz, dy, dx x ``FLOW_SCALE``) by following the
  flows in 3D to their sinks; ``distance`` (K = 2: logit, distance) by a 3D watershed from
  the distance's h-maxima; ``boundary`` (K = 3: background, interior, boundary
  probabilities) by a 3D watershed of the interiors.

Arrays are channels first, (K, Z, Y, X) float32, on isotropic voxels (the caller resamples
z by the anisotropy first); labels come back (Z, Y, X) int32, 0 = background.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

from ..errors import InputError, check_label_image
from ._flows import FLOW_SCALE, _fill_holes
from ._instances import _add_unseeded, instances_from_probabilities, renumber_objects

#: how 3D boundary probabilities become objects: "seeds" (:func:`decode_boundary_3d`) or "2d-rules"
#: (:func:`~napari_seglab.core.objects._instances.instances_from_probabilities`, the 2D decoder run in 3D)
BOUNDARY_DECODER = "seeds"
#: the 3D decoders, by instance head
HEADS_3D = ("flows", "distance", "boundary")
#: linking: an object continues the one above when their overlap covers at least this fraction of the smaller
#: (IoU at 0.25, as Cellpose stitches, cut every nucleus' first and last planes off as objects of their own)
LINK_IOU = 0.5


def link_planes(labels: np.ndarray, min_iou: float = LINK_IOU) -> np.ndarray:
    """Link per-plane 2D objects of a (Z, Y, X) label stack into 3D objects (int32, ids 1..N).

    Plane by plane from the top: an object of plane z takes the id of the
    object of plane z - 1 it overlaps most, if the overlap covers at least
    ``min_iou`` of the smaller of the two and no other object of plane z overlaps
    that one more (one to one, best first); otherwise it starts a new 3D object.
    Ids of each plane's input need not be related.
    """
    lab = check_label_image(labels)
    if lab.ndim != 3:
        raise InputError(f"labels must be a (Z, Y, X) stack, got shape {lab.shape}.")
    if not 0.0 < min_iou <= 1.0:
        raise InputError(f"min_iou must lie in (0, 1], got {min_iou}.")
    out = np.zeros(lab.shape, np.int32)
    next_id = 0
    for z in range(lab.shape[0]):
        cur = lab[z].astype(np.int64, copy=False)
        ids = np.unique(cur)
        ids = ids[ids > 0]
        if not ids.size:
            continue
        new = {}
        if z > 0 and out[z - 1].any():
            prev = out[z - 1].astype(np.int64)
            both = (cur > 0) & (prev > 0)
            pairs, inter = np.unique(np.stack([cur[both], prev[both]]), axis=1, return_counts=True)
            area_c = dict(zip(*np.unique(cur[cur > 0], return_counts=True), strict=True))
            area_p = dict(zip(*np.unique(prev[prev > 0], return_counts=True), strict=True))
            # overlap over the smaller of the two: the small cap of a nucleus on its first plane still continues
            # it (its IoU with the next, larger section is tiny)
            ious = np.array([n / min(area_c[c], area_p[p]) for (c, p), n in zip(pairs.T, inter, strict=True)])
            # greedy one-to-one, best IoU first
            taken_c, taken_p = set(), set()
            for k in np.argsort(-ious, kind="stable"):
                c, p = int(pairs[0, k]), int(pairs[1, k])
                if ious[k] < min_iou:
                    break
                if c in taken_c or p in taken_p:
                    continue
                taken_c.add(c)
                taken_p.add(p)
                new[c] = p
        lut = np.zeros(int(ids.max()) + 1, np.int32)
        for c in ids:
            c = int(c)
            if c in new:
                lut[c] = new[c]
            else:
                next_id += 1
                lut[c] = next_id
        out[z] = lut[cur]
    return renumber_objects(out, 1)


#: points followed at once: the paths are independent, so chunks bound the followers' memory (about 60 bytes
#: per point while stepping) and change no end point
FOLLOW_CHUNK = 1 << 20


def _follow3d(field: np.ndarray, pts: np.ndarray, n_steps: int) -> np.ndarray:
    """End points (N, 3) x/y/z after ``n_steps`` Euler steps of up to 1 voxel along ``field`` (3, Z, Y, X).

    ``field`` holds the (dx, dy, dz) components (grid_sample's order) and ``pts`` (N, 3) float32 the
    x/y/z starting points; both are taken as they are (no copy); ``pts`` is overwritten with the ends.
    """
    shape = field.shape[1:]
    grid_field = torch.from_numpy(field)[None]
    size = torch.tensor([max(s - 1, 1) for s in shape[::-1]], dtype=torch.float32)
    with torch.no_grad():
        for start in range(0, len(pts), FOLLOW_CHUNK):
            p = torch.from_numpy(pts[start:start + FOLLOW_CHUNK])
            for _ in range(n_steps):
                grid = (p / size * 2 - 1)[None, None, None]
                step = F.grid_sample(grid_field, grid, mode="bilinear", align_corners=True)[0, :, 0, 0].T
                p[...] = torch.minimum(torch.clamp(p + step, min=0), size)
    return pts


def _cluster3d(ends: np.ndarray, shape: tuple[int, ...], min_count: int) -> np.ndarray:
    """Cluster id (0 = none) per end point: a watershed of the smoothed end-point histogram from its peaks."""
    idx = tuple(np.clip(np.rint(ends[:, k]).astype(np.int64), 0, shape[k] - 1) for k in range(len(shape)))
    flat = np.ravel_multi_index(idx, shape)
    hist = np.bincount(flat, minlength=int(np.prod(shape))).reshape(shape).astype(np.float32)
    counts = ndi.uniform_filter(hist, 3, mode="constant") * 3 ** len(shape)
    peaks = (counts == ndi.maximum_filter(counts, 5, mode="constant")) & (counts >= min_count)
    markers, n = ndi.label(peaks, structure=np.ones((3,) * len(shape)))
    if n == 0:
        return np.zeros(len(ends), np.int32)
    region = ndi.binary_dilation(hist > 0, iterations=2)
    basins = watershed(-counts, markers=markers, mask=region)
    return basins[idx].astype(np.int32)


def decode_flows_3d(outputs: np.ndarray, *, threshold: float = 0.0, n_steps: int = 200,
                    min_size: int = 30) -> np.ndarray:
    """Objects (Z, Y, X) int32 from a 3D flow field (4, Z, Y, X): [fg logit, dz, dy, dx] x FLOW_SCALE.

    Every foreground voxel (logit > ``threshold``) follows the flows ``n_steps``
    steps; end points cluster at the peaks of their histogram, each cluster one
    object; holes are filled and objects under ``min_size`` voxels dropped.
    """
    out = np.asarray(outputs, np.float32)
    if out.ndim != 4 or out.shape[0] != 4:
        raise InputError(f"3D flow outputs must be (4, Z, Y, X), got shape {out.shape}.")
    fg = out[0] > threshold
    labels = np.zeros(fg.shape, np.int32)
    if not fg.any():
        return labels
    # the flows in grid_sample's (x, y, z) order, built one component at a time: 12 bytes a voxel
    flow = np.empty(out[1:].shape, np.float32)
    for c in range(3):
        np.divide(out[3 - c], FLOW_SCALE, out=flow[c])
        flow[c] *= fg
    # starting points (x, y, z) from the flat indices of the foreground, without int64 copies of every axis
    flat = np.flatnonzero(fg)
    pts = np.empty((flat.size, 3), np.float32)
    _, ny, nx = fg.shape
    pts[:, 0] = flat % nx
    pts[:, 1] = flat // nx % ny
    pts[:, 2] = flat // (nx * ny)
    del flat
    ends = _follow3d(flow, pts, n_steps)[:, ::-1]
    del flow
    labels[fg] = _cluster3d(ends, fg.shape, min_count=max(3, min_size // 2))
    return renumber_objects(_fill_holes(labels), min_size)


def decode_distance_3d(outputs: np.ndarray, *, threshold: float = 0.0, h: float = 0.1,
                       min_size: int = 30) -> np.ndarray:
    """Objects (Z, Y, X) int32 from a 3D distance field (2, Z, Y, X): [fg logit, distance in [0, 1]].

    Seeds are the 3D h-maxima (height ``h``) of the smoothed distance; they grow by
    watershed over the negated distance through the foreground (logit > ``threshold``);
    foreground no seed reaches becomes its own object; objects under ``min_size`` voxels are dropped.
    """
    out = np.asarray(outputs, np.float32)
    if out.ndim != 4 or out.shape[0] != 2:
        raise InputError(f"3D distance outputs must be (2, Z, Y, X), got shape {out.shape}.")
    fg = out[0] > threshold
    dist = ndi.gaussian_filter(out[1], 1.0) * fg
    markers, _ = ndi.label(h_maxima(dist, h) & fg, structure=np.ones((3, 3, 3)))
    labels = watershed(-dist, markers=markers, mask=fg)
    return renumber_objects(_add_unseeded(labels, fg), min_size)


def decode_boundary_3d(probs: np.ndarray, *, h: float = 2.0, min_size: int = 30) -> np.ndarray:
    """Objects (Z, Y, X) int32 from averaged 3D class probabilities (3, Z, Y, X): background, interior, boundary.

    The interiors (interior > 0.5) of touching nuclei meet somewhere in 3D far more often
    than on one plane, so they are not taken as seeds whole: seeds are the h-maxima (height
    ``h`` voxels) of the interiors' smoothed distance transform, grown by watershed through
    the foreground (background < 0.5); foreground no seed reaches becomes its own object.
    """
    p = np.asarray(probs, np.float32)
    if p.ndim != 4 or p.shape[0] != 3:
        raise InputError(f"3D boundary probabilities must be (3, Z, Y, X), got shape {p.shape}.")
    fg = (p[0] < 0.5) | (p[1] > 0.5)
    core = p[1] > 0.5
    dist = ndi.gaussian_filter(ndi.distance_transform_edt(core).astype(np.float32), 1.0)
    markers, _ = ndi.label(h_maxima(dist, h) & core, structure=np.ones((3, 3, 3)))
    labels = watershed(-dist, markers=markers, mask=fg)
    return renumber_objects(_add_unseeded(labels, fg), min_size)


def decode_volume(outputs: np.ndarray, head: str, *, min_size: int = 30, n_steps: int = 200) -> np.ndarray:
    """Objects (Z, Y, X) int32 from a combined 3D field of ``head`` ("flows", "distance" or "boundary").

    ``n_steps``: steps along the flows (flows only).
    """
    if head == "flows":
        return decode_flows_3d(outputs, min_size=min_size, n_steps=n_steps)
    if head == "distance":
        return decode_distance_3d(outputs, min_size=min_size)
    if head == "boundary":
        if BOUNDARY_DECODER == "seeds":
            return decode_boundary_3d(outputs, min_size=min_size)
        p = np.asarray(outputs, np.float32)
        if p.ndim != 4 or p.shape[0] != 3:
            raise InputError(f"3D boundary probabilities must be (3, Z, Y, X), got shape {p.shape}.")
        return instances_from_probabilities(p, min_size=min_size)
    raise InputError(f"no 3D decoding for head {head!r}; choose one of {', '.join(HEADS_3D)}.")
