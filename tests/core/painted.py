"""Hand-made painted images shared by the core tests (not a test module)."""

from __future__ import annotations

import numpy as np


def discs(shape=(96, 128), centres=((30, 30, 10), (30, 52, 10), (70, 90, 12)), seed=0):
    """Image (Y, X) float32 and instance labels (Y, X) uint16 of bright discs (the first two touching)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    inst = np.zeros(shape, np.uint16)
    for i, (cy, cx, r) in enumerate(centres, 1):
        inst[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = i
    img = np.random.default_rng(seed).normal(100, 8, shape).astype(np.float32) + 90 * (inst > 0)
    return img, inst


def partial(inst):
    """Objects 1 and 3 painted whole (ids 2, 3), a background stroke (1), the rest unpainted (0)."""
    lab = np.zeros(inst.shape, np.uint16)
    lab[85:90, 5:60] = 1
    lab[inst == 1] = 2
    lab[inst == 3] = 3
    return lab


def two_discs(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A (1, size, size) float32 image of two bright discs and their (size, size) int32 object ids."""
    yy, xx = np.mgrid[:size, :size]
    inst = np.zeros((size, size), np.int32)
    inst[(yy - 20) ** 2 + (xx - 20) ** 2 < 64] = 1
    inst[(yy - 42) ** 2 + (xx - 44) ** 2 < 81] = 2
    return (0.1 + 0.8 * (inst > 0)).astype(np.float32)[None], inst
