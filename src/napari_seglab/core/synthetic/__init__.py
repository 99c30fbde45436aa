"""Synthetic sample and test data: nuclei images with exact masks, human-like scribbles.

Modules: ``_nuclei`` (the image generator), ``_nuclei3d`` (anisotropic 3D stacks), ``_scribbles`` (strokes painted from a dense mask).
"""

from ._nuclei import make_nuclei
from ._nuclei3d import make_nuclei_3d
from ._scribbles import make_scribbles

__all__ = [
    "make_nuclei", "make_nuclei_3d", "make_scribbles",
]
