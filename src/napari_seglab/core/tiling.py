"""Tile grids over one image axis (no torch, no models): shared by the dense and the object predictors."""

from __future__ import annotations

import math


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles of exactly ``tile`` pixels covering ``length``, sharing about ``overlap`` x ``tile``."""
    if length <= tile:
        return [0]
    ov = int(round(tile * overlap))
    n = math.ceil((length - ov) / max(1, tile - ov))
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]
