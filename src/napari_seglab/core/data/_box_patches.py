"""Box geometry of training patches: crop, clip, zoom, flip and transpose (N, 5) box arrays.

Boxes are (N, 5) float32 arrays [y0, x0, y1, x1, class] in pixel edges
(y1 / x1 exclusive), like :func:`~napari_seglab.core.labels._boxes.boxes_array`. Every function here
moves boxes exactly as the matching image operation moves pixels, so a box
drawn around an object still encloses it after any patch draw.
"""

from __future__ import annotations

import numpy as np

#: a box cut by a patch (or area, or hold-out) border is kept, clipped, when at least this fraction
#: of its area is visible, and dropped otherwise: a detector taught a box around a sliver of an object
#: learns to fire on fragments, and half an object is still recognisable (albumentations and
#: torchvision's detection references use the same kind of rule)
MIN_VISIBLE = 0.5
#: ... and when the visible part is at least this many pixels high and wide (a thinner sliver is dropped)
MIN_SIDE = 2.0


def empty_boxes() -> np.ndarray:
    """A (0, 5) float32 box array: a patch with nothing to find."""
    return np.zeros((0, 5), np.float32)


def clip_boxes(boxes: np.ndarray, y0: float, x0: float, h: float, w: float, *,
               min_visible: float = MIN_VISIBLE, min_side: float = MIN_SIDE) -> np.ndarray:
    """The boxes inside the window [y0, y0 + h) x [x0, x0 + w), in the window's pixels.

    Boxes are shifted by (-y0, -x0) and clipped to the window; a box whose
    visible part is under ``min_visible`` of its area, or thinner than
    ``min_side`` pixels, is dropped. Returns a new (M, 5) float32 array.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 5)
    if not len(boxes):
        return empty_boxes()
    out = boxes.copy()
    out[:, [0, 2]] -= y0
    out[:, [1, 3]] -= x0
    area = (out[:, 2] - out[:, 0]) * (out[:, 3] - out[:, 1])
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, h)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, w)
    dy, dx = out[:, 2] - out[:, 0], out[:, 3] - out[:, 1]
    keep = (dy >= min_side) & (dx >= min_side) & (dy * dx >= min_visible * np.maximum(area, 1e-6))
    return out[keep]


def zoom_boxes(boxes: np.ndarray, factor_y: float, factor_x: float | None = None) -> np.ndarray:
    """Boxes of an image resampled by ``factor`` (pixel edges scale exactly; see :func:`~napari_seglab.core.data._samples._zoom_patch`)."""
    out = np.asarray(boxes, np.float32).reshape(-1, 5).copy()
    out[:, [0, 2]] *= factor_y
    out[:, [1, 3]] *= factor_y if factor_x is None else factor_x
    return out


def transform_boxes(boxes: np.ndarray, shape: tuple[int, int], *, transpose: bool = False, flip_y: bool = False,
                    flip_x: bool = False) -> np.ndarray:
    """Boxes of a (Y, X) = ``shape`` patch after :func:`~napari_seglab.core.objects._flows.transform` (transpose first, then the flips).

    ``shape`` is the patch's shape before the transform.
    """
    out = np.asarray(boxes, np.float32).reshape(-1, 5).copy()
    h, w = shape
    if transpose:
        out = out[:, [1, 0, 3, 2, 4]]
        h, w = w, h
    if flip_y:
        out[:, [0, 2]] = h - out[:, [2, 0]]
    if flip_x:
        out[:, [1, 3]] = w - out[:, [3, 1]]
    return out


def box_centres(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Flat indices (into a plane of ``shape``) of the boxes' centre pixels: where box-aware patches aim."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 5)
    if not len(boxes):
        return np.zeros(0, np.int64)
    cy = np.clip(((boxes[:, 0] + boxes[:, 2]) / 2).astype(np.int64), 0, shape[0] - 1)
    cx = np.clip(((boxes[:, 1] + boxes[:, 3]) / 2).astype(np.int64), 0, shape[1] - 1)
    return cy * shape[1] + cx
