"""The training loss shared by the dense (``semantic`` kind) families: one value per pixel."""

from __future__ import annotations

import torch
from torch import nn

from ..labels import IGNORE
from ..objects import head_loss
from ._family import LossInputs
from ._losses import segmentation_loss


def dense_loss(model: nn.Module, batch: LossInputs) -> torch.Tensor:
    """BCE/CE + Dice on the class logits, or the "flows" / "distance" head's loss (:func:`~napari_seglab.core.objects._flows.head_loss`)."""
    device = batch.images.device
    targets = torch.from_numpy(batch.targets).to(device)
    outputs = model(batch.images).float()
    if batch.regression is not None:
        return head_loss(outputs, torch.from_numpy(batch.regression).to(device), targets == IGNORE, batch.head)
    return segmentation_loss(outputs, targets, class_weights=batch.class_weights, focal_gamma=batch.focal_gamma)
