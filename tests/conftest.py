"""Shared fixtures: tiny synthetic data and one tiny trained model per session."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

# helpers shared by test folders (painted.py, boxfamily.py in core/; widget_helpers.py in widgets/)
for _helpers in ("core", "widgets"):
    sys.path.insert(0, str(Path(__file__).parent / _helpers))


@pytest.fixture(scope="session")
def blobs():
    """A (96, 128) float32 image with two bright discs and its dense scribbles (1 bg, 2 fg)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :128]
    mask = ((yy - 40) ** 2 + (xx - 50) ** 2 < 15**2) | ((yy - 70) ** 2 + (xx - 100) ** 2 < 12**2)
    img = rng.normal(100, 10, mask.shape).astype(np.float32)
    img[mask] += 80
    lab = np.where(mask, 2, 1).astype(np.uint8)
    return img, lab, mask


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, blobs):
    """Path of a tiny U-Net (resnet18) trained a few steps on ``blobs`` scribbles."""
    from napari_seglab.core.events import run_to_completion
    from napari_seglab.core.train import TrainConfig, iter_train

    img, lab, _ = blobs
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    cfg = TrainConfig(label_mode="scribbles", encoder="resnet18", epochs=4, steps_per_epoch=4, patch=64,
                      batch_size=4, lr=3e-3, device="cpu", model_out=str(path))
    run_to_completion(iter_train([img], [lab], cfg))
    return path
