"""Training's validation Dice is the evaluation's Dice: one policy for classes absent from the held-out pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_seglab.core.data import Sample
from napari_seglab.core.evaluate import mean_dice, per_class_dice
from napari_seglab.core.models import CheckpointMeta, ModelSpec
from napari_seglab.core.train._state import Validator

CPU = torch.device("cpu")
META = CheckpointMeta(model=ModelSpec(family="unet", arch="Unet", encoder="resnet18", n_classes=2),
                      label_mode="scribbles")


class Paints(torch.nn.Module):
    """A two-class 'network' that calls every pixel ``cls``, or the object wherever the image is bright."""

    def __init__(self, cls: int | None):
        super().__init__()
        self.cls = cls

    def forward(self, x):
        if self.cls is None:
            fg = (x[:, :1] > 0.5).float()
        else:
            fg = torch.full_like(x[:, :1], float(self.cls))
        return torch.cat([5 * (1 - fg), 5 * fg], 1)


def validator(target: np.ndarray, image: np.ndarray | None = None) -> Validator:
    """Held-out pixels: a 20 x 20 block of ``target`` in a 64 x 64 plane (everything else ignored)."""
    held = np.zeros((64, 64), bool)
    held[20:40, 20:40] = True
    img = np.zeros((1, 64, 64), np.float32) if image is None else image
    return Validator([Sample(image=img, target=target.astype(np.int64))], [held])


def test_a_class_absent_from_prediction_and_held_out_pixels_is_left_out_of_the_mean():
    background = np.zeros((64, 64), np.int64)
    mean, per = validator(background).score(Paints(0), META, CPU, "scribbles")
    assert per[0] == 1.0 and np.isnan(per[1]) and mean == 1.0


def test_a_class_painted_where_there_is_none_scores_zero():
    background = np.zeros((64, 64), np.int64)
    mean, per = validator(background).score(Paints(1), META, CPU, "scribbles")
    assert per == [0.0, 0.0] and mean == 0.0


def test_validation_scores_the_held_out_pixels_as_evaluation_does():
    target = np.zeros((64, 64), np.int64)
    target[25:35, 22:30] = 1
    image = np.zeros((1, 64, 64), np.float32)
    image[0, 24:36, 24:34] = 1.0  # the 'network' finds a shifted object
    mean, per = validator(target, image).score(Paints(None), META, CPU, "scribbles")
    block = (slice(20, 40), slice(20, 40))
    expected = per_class_dice((image[0] > 0.5).astype(int)[block], target[block], 2)
    assert per == pytest.approx(expected) and mean == pytest.approx(mean_dice(expected))
    assert 0.0 < per[1] < 1.0
