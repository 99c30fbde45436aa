"""One tiling for every tiled prediction: where the tiles go (:class:`TilePlan`) and how they blend (:class:`Blender`).

The semantic path, the instance heads (flows, distance) and Mask R-CNN all cut
a (Y, X) plane with a :class:`TilePlan`, so one ``--tile`` / ``--overlap``
means the same tiles everywhere. Outputs that are averaged (probabilities, raw
head outputs) go through a :class:`Blender`, which accumulates weighted tiles
and their weights pixel by pixel: any window works, separable or not.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import product

import numpy as np

from .errors import InputError

__all__ = ["ALIGN", "Blender", "TilePlan", "check_overlap", "window"]

#: tile sides are multiples of this where the plan may choose them (the U-Nets halve the size 5 times)
ALIGN = 32


def check_overlap(overlap) -> float:
    """``overlap`` as a float in [0, 1); anything else is an InputError (1.0 would step tiles by one pixel)."""
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float, np.integer, np.floating)):
        raise InputError(f"tile overlap must be a number in [0, 1); got {overlap!r}")
    if not (math.isfinite(overlap) and 0 <= overlap < 1):
        raise InputError(f"tile overlap must lie in [0, 1); got {overlap}")
    return float(overlap)


def _axis(length: int, tile: int, overlap: float, shrink: bool) -> tuple[int, list[int]]:
    """(tile length, start offsets) along one axis.

    The fewest tiles of at most ``tile`` pixels that share at least
    ``overlap`` x ``tile`` pixels with their neighbours, spread evenly from 0
    to the end. ``shrink``: then make the tiles as small as that count allows
    (a multiple of :data:`ALIGN` where possible), so no pixel work is wasted.
    """
    if length <= tile:
        return length, [0]
    ov = int(round(tile * overlap))
    n = math.ceil((length - ov) / max(1, tile - ov))
    size = tile
    if shrink:
        size = min(tile, length, -(-math.ceil((length + (n - 1) * ov) / n) // ALIGN) * ALIGN)
        if n == 1:
            return size, [0]
    return size, [round(i * (length - size) / (n - 1)) for i in range(n)]


@dataclass(frozen=True)
class TilePlan:
    """Tiles of one (Y, X) plane: every tile is ``size`` (ty, tx), at the origins ``ys`` x ``xs``.

    Build one with :meth:`balanced` (the tile may shrink so tiles fit the
    plane evenly: the semantic and instance-head path) or :meth:`fixed`
    (tiles of exactly the size asked, or the plane's size where smaller).
    Tiles cover the plane; neighbours overlap by at least ``overlap`` x tile.
    """

    shape: tuple[int, int]
    size: tuple[int, int]
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @classmethod
    def balanced(cls, shape: tuple[int, int], tile: int, overlap: float) -> TilePlan:
        """The fewest tiles of at most ``tile`` pixels, shrunk to fit the plane evenly (see :func:`_axis`)."""
        return cls._make(shape, tile, overlap, shrink=True)

    @classmethod
    def fixed(cls, shape: tuple[int, int], tile: int, overlap: float) -> TilePlan:
        """Tiles of exactly ``min(tile, side)`` pixels per axis, spread evenly."""
        return cls._make(shape, tile, overlap, shrink=False)

    @classmethod
    def _make(cls, shape, tile, overlap, shrink: bool) -> TilePlan:
        overlap = check_overlap(overlap)
        if int(tile) < 1:
            raise InputError(f"the tile size must be at least 1 pixel; got {tile}")
        h, w = (int(n) for n in shape)
        ty, ys = _axis(h, int(tile), overlap, shrink)
        tx, xs = _axis(w, int(tile), overlap, shrink)
        return cls((h, w), (ty, tx), tuple(ys), tuple(xs))

    def __len__(self) -> int:
        return len(self.ys) * len(self.xs)

    def origins(self) -> list[tuple[int, int]]:
        """(y0, x0) of every tile, row by row."""
        return list(product(self.ys, self.xs))

    def slices(self) -> Iterator[tuple[slice, slice]]:
        """(Y slice, X slice) of every tile, in :meth:`origins` order."""
        ty, tx = self.size
        for y0, x0 in self.origins():
            yield slice(y0, y0 + ty), slice(x0, x0 + tx)

    def cores(self) -> list[tuple[tuple[int, int], tuple[int, int]]]:
        """Per tile, ((y lo, y hi), (x lo, x hi)): the part nearer its own centre than a neighbour's.

        The cores partition the plane (the overlap is cut at its midline), so
        an object assigned to the core holding its centre is kept by one tile.
        """
        def spans(starts, tile, length):
            bounds = [0] + [(starts[i + 1] + starts[i] + tile) // 2 for i in range(len(starts) - 1)] + [length]
            return [(bounds[i], bounds[i + 1]) for i in range(len(starts))]

        return list(product(spans(self.ys, self.size[0], self.shape[0]), spans(self.xs, self.size[1], self.shape[1])))


def window(size_y: int, size_x: int, min_weight: float = 1e-3) -> np.ndarray:
    """Smooth blending weights (Y, X) float32: a Hann window per axis, floored at ``min_weight``.

    Weights fall towards a tile's edges, where a network sees least context;
    an axis shorter than 3 pixels is flat.
    """
    def hann(n):
        if n < 3:
            return np.ones(n, np.float32)
        return np.maximum(np.sin(np.pi * (np.arange(n) + 0.5) / n) ** 2, min_weight).astype(np.float32)

    return np.outer(hann(size_y), hann(size_x))


class Blender:
    """Weighted average of overlapping tile outputs over a (K, Y, X) float32 plane.

    :meth:`add` accumulates ``output x weights`` and the weights themselves
    pixel by pixel; :meth:`result` divides. ``weights``: a (ty, tx) array for
    every tile (default :func:`window` of the plan's tile size); any
    positive window works, separable or not.
    """

    def __init__(self, plan: TilePlan, channels: int, weights: np.ndarray | None = None):
        self.plan = plan
        self.weights = (window(*plan.size) if weights is None else np.asarray(weights, np.float32))
        if self.weights.shape != plan.size:
            raise ValueError(f"blending weights {self.weights.shape} do not match the tiles {plan.size}")
        self.sum = np.zeros((channels, *plan.shape), np.float32)
        self.total = np.zeros(plan.shape, np.float32)

    def add(self, where: tuple[slice, slice], output: np.ndarray) -> None:
        """Add one tile's (K, ty, tx) output at ``where`` (a :meth:`TilePlan.slices` item); ``output`` is scaled in place."""
        output *= self.weights
        self.sum[(slice(None), *where)] += output
        self.total[where] += self.weights

    def result(self, rows: int = 1024) -> np.ndarray:
        """The blended (K, Y, X) float32 plane (the accumulator itself, divided in row blocks)."""
        for y in range(0, self.plan.shape[0], rows):
            self.sum[:, y:y + rows] /= self.total[y:y + rows]
        return self.sum
