"""A fake, tiny box-detector family for the box training tests (not a test module).

:func:`register` plugs it into the model registry for one test (monkeypatch),
the way a real box family (retinanet, fcos, fasterrcnn) is registered. Its
loss reads ``LossInputs.boxes``: a tiny network regresses the number of boxes
in each patch, and every batch the loss sees is recorded, so a test can check
that the boxes reach the loss transformed exactly like the image. Its
``predict_objects`` boxes the bright connected regions of a plane, scored
by the network's count output, so validation has something to measure.

To test a real family instead, replace :func:`register` with one that
returns it (the tests only use the returned family's name).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from napari_seglab.core.models import Family
from napari_seglab.core.models import _registry as registry

NAME = "boxnet"


class BoxCounter(nn.Module):
    """Two convolutions and a global mean: one number per image, the predicted box count."""

    def __init__(self, in_channels: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.head = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))[:, 0]


class Recorder:
    """Every batch the loss hook saw: (images (B, C, P, P) float32, list of (N, 5) boxes)."""

    def __init__(self):
        self.batches: list[tuple[np.ndarray, list[np.ndarray]]] = []

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        assert batch.boxes is not None and len(batch.boxes) == batch.images.shape[0]
        self.batches.append((batch.images.detach().float().cpu().numpy(),
                             [np.array(b, copy=True) for b in batch.boxes]))
        counts = torch.tensor([float(len(b)) for b in batch.boxes], device=batch.images.device)
        return ((model(batch.images.float()) - counts) ** 2).mean()


def boxes_of_bright_regions(lm, chw, *, tile, overlap, score_threshold=0.5, stop=None):
    """One box per connected bright region (normalised value > 0.5), scored by the network: a stand-in detector."""
    from scipy import ndimage as ndi

    yield 1, 1
    labels, n = ndi.label(chw[0] > 0.5)
    model = lm.model
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(chw, np.float32))[None].to(next(model.parameters()).device)
        score = 0.5 + 0.5 * float(torch.sigmoid(model(x))[0])  # always shown at predict's default threshold
    rows = []
    for sl in ndi.find_objects(labels):
        if sl is None or score < score_threshold:
            continue
        rows.append({"y0": float(sl[0].start), "x0": float(sl[1].start), "y1": float(sl[0].stop),
                     "x1": float(sl[1].stop), "class": 1, "score": score})
    return labels.astype(np.int32), rows


def make_family(recorder: Recorder | None = None, name: str = NAME) -> Family:
    recorder = recorder or Recorder()
    return Family(name=name, kind="boxes", label="Box net", archs=(name,), default_arch=name,
                  build=lambda spec, pretrained, allow_download: (BoxCounter(spec.in_channels), "random initialisation"),
                  loss=recorder.loss, predict_objects=boxes_of_bright_regions, bytes_per_pixel=100,
                  train_bytes_per_pixel=200, lr=1e-2, lr_finetune=1e-2, exportable=False,
                  label_modes=("boxes", "instances"),
                  label_modes_note="Box net learns boxes: it needs boxes or 'instances' labels",
                  channels_last=False, holdout=False)


def register(monkeypatch, recorder: Recorder | None = None) -> Family:
    """Register the fake box family for this test; returns it."""
    family = make_family(recorder)
    monkeypatch.setitem(registry.REGISTRY, family.name, family)
    return family


def bright_squares(shape=(96, 128), squares=((10, 12, 14), (50, 70, 12), (60, 20, 10)), seed=0):
    """Image (Y, X) float32 of bright squares on noise, and their box rows (exact pixel edges, class 1)."""
    img = np.random.default_rng(seed).normal(100, 5, shape).astype(np.float32)
    rows = []
    for y, x, side in squares:
        img[y:y + side, x:x + side] += 200
        rows.append({"y0": y, "x0": x, "y1": y + side, "x1": x + side, "class": 1})
    return img, rows
