"""Synthetic sample and test data: nuclei images with exact masks, human-like scribbles.

Modules: ``_nuclei`` (the image generator), ``_scribbles`` (strokes painted from a dense mask).
"""

from ._nuclei import make_nuclei
from ._scribbles import make_scribbles

__all__ = [
    "make_nuclei", "make_scribbles",
]
