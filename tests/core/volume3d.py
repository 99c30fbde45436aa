"""A stand-in 3D nuclei model for plumbing tests: a 'distance head' whose outputs follow the input's brightness.

Gaussian nuclei in an anisotropic stack give a distance field peaked at each centre, so the
3D decoding has a true answer (one object per nucleus) without any training.
"""

from __future__ import annotations

import numpy as np
import torch

from napari_seglab.core.device import precision_for
from napari_seglab.core.models import CheckpointMeta, ModelSpec
from napari_seglab.core.predict._image import LoadedModel

CPU = torch.device("cpu")
#: three nuclei (z, y, x) of a (12, 48, 48) stack whose z step is twice the pixel size
CENTRES = ((5, 14, 14), (6, 30, 32), (6, 14, 34))


class BrightIsNear(torch.nn.Module):
    """Raw outputs [foreground logit, distance]: foreground where the normalised input is bright, distance = input."""

    def __init__(self):
        super().__init__()
        self.planes: list[tuple[int, int]] = []

    def forward(self, x):
        self.planes.append(tuple(x.shape[-2:]))
        return torch.cat([20 * (x - 0.3), x], 1)


class BrightIsInside(torch.nn.Module):
    """Logits of the boundary classes: background where dim, interior where bright, boundary in between."""

    def __init__(self):
        super().__init__()
        self.planes: list[tuple[int, int]] = []

    def forward(self, x):
        self.planes.append(tuple(x.shape[-2:]))
        return torch.cat([20 * (0.3 - x), 20 * (x - 0.5), torch.zeros_like(x)], 1)


class Uphill(torch.nn.Module):
    """Raw flows-head outputs [foreground logit, dy, dx x FLOW_SCALE]: unit steps up the input's brightness."""

    def __init__(self):
        super().__init__()
        self.planes: list[tuple[int, int]] = []
        self.register_buffer("kernel", torch.tensor([[[[0, -0.5, 0], [0, 0, 0], [0, 0.5, 0]]],
                                                     [[[0, 0, 0], [-0.5, 0, 0.5], [0, 0, 0]]]]))

    def forward(self, x):
        from napari_seglab.core.objects._flows import FLOW_SCALE

        self.planes.append(tuple(x.shape[-2:]))
        g = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), self.kernel)
        g = g / (g.pow(2).sum(1, keepdim=True).sqrt() + 1e-3)
        return torch.cat([20 * (x - 0.3), FLOW_SCALE * g], 1)


def blob_model(head: str = "distance", label_mode: str = "instances", n_classes: int = 2,
               scale: float = 1.0) -> LoadedModel:
    """A LoadedModel around :class:`BrightIsNear` (the boundary classes: :class:`BrightIsInside`, the flows head:
    :class:`Uphill`), inputs in [0, 1]; ``scale``: the object scale the checkpoint records."""
    spec = ModelSpec(family="unet", arch="Unet", encoder="resnet18", n_classes=n_classes,
                     options={"head": head} if head != "boundary" else {})
    meta = CheckpointMeta.coerce({"model": spec.to_dict(), "label_mode": label_mode, "n_classes": n_classes,
                                  "normalization": {"per_image": False, "lo": [0.0], "hi": [1.0]},
                                  "scale": scale})
    network = {"boundary": BrightIsInside, "flows": Uphill}.get(head, BrightIsNear)()
    return LoadedModel(network, meta, CPU, precision_for(CPU))


def blobs(shape=(12, 48, 48), anisotropy=2.0, centres=CENTRES) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian nuclei (radius ~6 px laterally) in an anisotropic (Z, Y, X) float32 stack, and their masks."""
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]].astype(np.float32)
    image = np.zeros(shape, np.float32)
    truth = np.zeros(shape, np.int32)
    for i, (cz, cy, cx) in enumerate(centres, start=1):
        d2 = ((zz - cz) * anisotropy) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2
        image = np.maximum(image, np.exp(-d2 / (2 * 4.0 ** 2)))
        truth[(d2 < 6.0 ** 2) & (truth == 0)] = i
    return image, truth


def many_blobs(shape=(16, 96, 96), n=14, seed=1, anisotropy=2.0) -> tuple[np.ndarray, np.ndarray]:
    """:func:`blobs` with ``n`` nuclei at random places (some touching), for block-wise checks."""
    rng = np.random.default_rng(seed)
    centres = [(int(rng.integers(2, shape[0] - 2)), int(rng.integers(6, shape[1] - 6)),
                int(rng.integers(6, shape[2] - 6))) for _ in range(n)]
    return blobs(shape, anisotropy, centres)
