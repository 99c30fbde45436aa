"""Helpers for the bioimage.io tests: tiny checkpoints of every exportable head, and the skip when the
bioimage.io tools are missing or cannot run here."""

from __future__ import annotations

from pathlib import Path

import pytest

#: a 0.3 M-parameter encoder: a package of it exports and passes bioimage.io's test in seconds
TINY_ENCODER = "tu-mobilenetv3_small_050"
#: (name, label mode, classes, instance head) of every head a U-Net exports
HEADS = (("semantic", "scribbles", 2, None), ("boundary", "instances", 3, None),
         ("flows", "objects", 2, "flows"), ("distance", "objects", 2, "distance"))


def require_bioimageio() -> None:
    """Skip unless bioimageio.core can run here (installed, and bioimageio.spec works with this pydantic)."""
    pytest.importorskip("bioimageio.core")
    from napari_seglab.core.models import bioimageio_problem

    problem = bioimageio_problem()
    if problem:
        pytest.skip(problem)


def tiny_checkpoint(path: Path, label_mode: str = "scribbles", n_classes: int = 2, head: str | None = None,
                    per_image: bool = True, seed: int = 0) -> Path:
    """A random-weight 3-level U-Net checkpoint on :data:`TINY_ENCODER` (no download, no training)."""
    import torch

    from napari_seglab.core.data import Normalization
    from napari_seglab.core.models import ModelSpec, build_model, save_checkpoint

    torch.manual_seed(seed)
    options = {"encoder_depth": 3, "decoder_channels": [16, 8, 4]}
    if head:
        options["head"] = head
    spec = ModelSpec(family="unet", arch="Unet", encoder=TINY_ENCODER, in_channels=1, n_classes=n_classes,
                     options=options)
    model, _ = build_model(spec)
    norm = Normalization() if per_image else Normalization(per_image=False, lo=(100.0,), hi=(1800.0,))
    meta = {"model": spec.to_dict(), "label_mode": label_mode, "normalization": norm.to_dict(), "patch": 64}
    return save_checkpoint(path, model, meta)
