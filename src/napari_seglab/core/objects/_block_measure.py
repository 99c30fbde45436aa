"""Object measurements of a label image larger than memory, block by block.

:func:`measure_blocks` gives the rows :func:`~napari_seglab.core.objects._instances.measure_objects`
gives for the whole image, reading the labels (a zarr array or any array sliced by windows) and the
image one block at a time. Two passes:

1. Sums that combine exactly across blocks: pixel count, sums of y and x (centroids), bounding box
   (min / max), and per channel the intensity sum, min and max, accumulated per label.
2. The shape columns that do not add up (``eccentricity``, ``solidity``, ``perimeter``): each object
   is measured whole from a window of the labels that holds its bounding box. Objects are given to
   the block holding their box's top-left corner, and that block's window reaches down and right to
   the furthest box end among its objects, so memory stays near one block while objects are small
   next to it. An object whose box is wider than :data:`MAX_SHAPE_SIDE` (or ``max_side``) keeps its
   exact sums but gets NaN shape columns (counted in the returned note) instead of a window of that size.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence

import numpy as np

from ..events import check_stop
from ._instances import _physical_columns

#: an object whose bounding box is longer than this on a side gets NaN shape columns (memory bound)
MAX_SHAPE_SIDE = 4096

Reader = Callable[[slice, slice], np.ndarray]


class _Sums:
    """Per-label sums, grown as larger labels appear (index = label)."""

    def __init__(self, channels: int):
        self.channels = channels
        self.size = 0
        self.count = np.zeros(0, np.int64)
        self.sy = np.zeros(0, np.float64)
        self.sx = np.zeros(0, np.float64)
        self.y0 = np.zeros(0, np.int64)
        self.x0 = np.zeros(0, np.int64)
        self.y1 = np.zeros(0, np.int64)
        self.x1 = np.zeros(0, np.int64)
        self.isum = np.zeros((0, channels), np.float64)
        self.imin = np.zeros((0, channels), np.float64)
        self.imax = np.zeros((0, channels), np.float64)

    def grow(self, top: int) -> None:
        if top < self.size:
            return
        n = max(top + 1, 2 * self.size)
        extra = n - self.size

        def pad(a, fill):
            return np.concatenate([a, np.full((extra, *a.shape[1:]), fill, a.dtype)])

        big = np.iinfo(np.int64).max
        self.count, self.sy, self.sx = pad(self.count, 0), pad(self.sy, 0.0), pad(self.sx, 0.0)
        self.y0, self.x0, self.y1, self.x1 = pad(self.y0, big), pad(self.x0, big), pad(self.y1, -1), pad(self.x1, -1)
        self.isum, self.imin, self.imax = pad(self.isum, 0.0), pad(self.imin, np.inf), pad(self.imax, -np.inf)
        self.size = n

    def add(self, lab: np.ndarray, image: np.ndarray | None, y0: int, x0: int) -> None:
        """Add a block's (y, x) labels (and its (y, x[, c]) image) whose top-left pixel is (y0, x0)."""
        fg = lab > 0
        if not fg.any():
            return
        yy, xx = np.nonzero(fg)
        ids = lab[fg].astype(np.int64)
        self.grow(int(ids.max()))
        np.add.at(self.count, ids, 1)
        np.add.at(self.sy, ids, yy + y0)
        np.add.at(self.sx, ids, xx + x0)
        np.minimum.at(self.y0, ids, yy + y0)
        np.minimum.at(self.x0, ids, xx + x0)
        np.maximum.at(self.y1, ids, yy + y0 + 1)
        np.maximum.at(self.x1, ids, xx + x0 + 1)
        if image is not None:
            values = image[fg].astype(np.float64).reshape(len(ids), -1)
            for c in range(self.channels):
                np.add.at(self.isum[:, c], ids, values[:, c])
                np.minimum.at(self.imin[:, c], ids, values[:, c])
                np.maximum.at(self.imax[:, c], ids, values[:, c])


def _windows(shape: Sequence[int], block: int) -> list[tuple[slice, slice]]:
    h, w = int(shape[0]), int(shape[1])
    return [(slice(y, min(y + block, h)), slice(x, min(x + block, w)))
            for y in range(0, h, block) for x in range(0, w, block)]


def _shapes(labels, sums: _Sums, present: np.ndarray, block: int, max_side: int,
            stop: threading.Event | None) -> tuple[dict, int]:
    """{label: (eccentricity, solidity, perimeter)} of the objects no wider than ``max_side``; how many were wider."""
    from skimage.measure import regionprops_table

    out: dict[int, tuple] = {}
    h, w = labels.shape[:2]
    wide = (sums.y1[present] - sums.y0[present] > max_side) | (sums.x1[present] - sums.x0[present] > max_side)
    small = present[~wide]
    if not small.size:
        return out, int(wide.sum())
    owner_y, owner_x = sums.y0[small] // block, sums.x0[small] // block
    cols = math.ceil(w / block)
    owner = owner_y * cols + owner_x
    order = np.argsort(owner, kind="stable")
    small, owner = small[order], owner[order]
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    ends = np.r_[starts[1:], small.size]
    for s, e in zip(starts, ends, strict=True):
        check_stop(stop)
        ids = small[s:e]
        by, bx = divmod(int(owner[s]), cols)
        ys = slice(by * block, min(h, int(sums.y1[ids].max())))
        xs = slice(bx * block, min(w, int(sums.x1[ids].max())))
        # the window starts at the block's corner (every box here starts within the block) and ends
        # where the furthest box of its objects ends
        lab = np.asarray(labels[ys, xs]).astype(np.int64, copy=False)
        lab = np.where(np.isin(lab, ids), lab, 0)
        table = regionprops_table(lab, properties=["label", "eccentricity", "solidity", "perimeter"])
        for i, label in enumerate(table["label"]):
            out[int(label)] = (float(table["eccentricity"][i]), float(table["solidity"][i]),
                               float(table["perimeter"][i]))
    return out, int(wide.sum())


def measure_blocks(labels, read: Reader | None = None, *, block: int = 1024, channels: int = 0,
                   pixel_size: Sequence[float] | None = None, max_side: int = MAX_SHAPE_SIDE,
                   stop: threading.Event | None = None) -> tuple[list[dict], str]:
    """Rows of :func:`~napari_seglab.core.objects._instances.measure_objects` for a large 2D label image.

    ``labels``: a (Y, X) integer array read by windows (a zarr array; 0 = background); ``read(ys, xs)``:
    the image's raw (y, x) or (y, x, c) pixels of a window, or None for no intensity columns;
    ``channels``: the image's channel count (0: no channel axis, one intensity column without a suffix).
    ``block``: window side of the passes (memory: about a window of labels and image at a time);
    ``pixel_size``: (y, x) µm, adds ``area_um2`` / ``perimeter_um``. Returns (rows in label order, note):
    the note says how many objects were wider than ``max_side`` and got NaN shape columns ("" when none).
    Raises :class:`~napari_seglab.core.events.Stopped` when ``stop`` is set between windows.
    """
    h, w = (int(n) for n in labels.shape[:2])
    block = max(1, int(block))
    sums = _Sums(max(1, channels))
    for ys, xs in _windows((h, w), block):
        check_stop(stop)
        lab = np.asarray(labels[ys, xs])
        img = None if read is None else np.asarray(read(ys, xs))
        sums.add(lab, img, ys.start, xs.start)
    present = np.flatnonzero(sums.count) if sums.size else np.zeros(0, np.int64)
    shapes, wide = _shapes(labels, sums, present, block, max_side, stop)
    nan3 = (math.nan, math.nan, math.nan)
    rows = []
    for label in present:
        n = int(sums.count[label])
        # the key order of measure_objects' rows (the CSV's column order)
        row = {"label": int(label), "area": n, "centroid_y": float(sums.sy[label] / n),
               "bbox_y0": int(sums.y0[label]), "bbox_y1": int(sums.y1[label]),
               "centroid_x": float(sums.sx[label] / n), "bbox_x0": int(sums.x0[label]),
               "bbox_x1": int(sums.x1[label])}
        row["eccentricity"], row["solidity"], row["perimeter"] = shapes.get(int(label), nan3)
        if read is not None:
            for stat, values in (("mean", sums.isum[label] / n), ("max", sums.imax[label]),
                                 ("min", sums.imin[label])):
                if channels == 0:
                    row[f"{stat}_intensity"] = float(values[0])
                else:
                    for c in range(channels):
                        row[f"{stat}_intensity_{c}"] = float(values[c])
        rows.append(row)
    _physical_columns(rows, 2, pixel_size)
    note = (f"{wide} object(s) wider than {max_side} px: eccentricity, solidity and perimeter left empty"
            if wide else "")
    return rows, note
