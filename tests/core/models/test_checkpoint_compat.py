"""Checkpoints written by an earlier release load and predict exactly as they did then.

The fixtures (tests/core/models/fixtures, made by make_old_checkpoints.py with the code of commit
98a81b2) hold that release's metadata layout and its own prediction of a stored image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_seglab.core.events import drive
from napari_seglab.core.models import describe_checkpoint, load_checkpoint, save_checkpoint
from napari_seglab.core.predict import iter_predict_image, load_model

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("name", ["old_unet_scribbles", "old_unet_flows"])
def test_old_checkpoint_loads_and_predicts_as_before(name):
    expected = np.load(FIXTURES / f"{name}.npz")
    lm = load_model(FIXTURES / f"{name}.pt", "cpu")
    pred = drive(iter_predict_image(lm, expected["image"], probabilities=True, tile=64, overlap=0.25))
    np.testing.assert_array_equal(pred.labels, expected["labels"])
    np.testing.assert_allclose(pred.probabilities, expected["probabilities"], atol=1e-5)


def test_old_checkpoint_metadata_reads_the_same():
    ckpt = load_checkpoint(FIXTURES / "old_unet_flows.pt")
    assert ckpt.spec.family == "unet" and ckpt.spec.encoder == "tu-lcnet_035" and ckpt.spec.head == "flows"
    assert ckpt.label_mode == "instances"
    assert ckpt.meta["scale"] == 1.5 and ckpt.meta["patch"] == 64
    assert ckpt.meta["class_names"] == ["background", "object"]
    assert ckpt.meta["training"]["config"]["instance_head"] == "flows"
    assert "flows instance head" in describe_checkpoint(ckpt)


def test_old_checkpoint_reads_into_typed_metadata():
    info = load_checkpoint(FIXTURES / "old_unet_flows.pt").info
    assert info.model.options == {"encoder_depth": 3, "decoder_channels": [16, 8, 4], "head": "flows"}
    assert info.label_mode == "instances" and info.scale == 1.5 and info.patch == 64
    assert info.class_names == ("background", "object") and info.n_classes == 2
    assert info.normalization.per_image and len(info.normalization.lo) == 1
    assert info.metrics["epoch"] == 1 and info.training["config"]["patch"] == 64


@pytest.mark.parametrize("name", ["old_unet_scribbles", "old_unet_flows"])
def test_old_metadata_survives_a_load_and_save_unchanged(name, tmp_path):
    """Reading an earlier release's file into CheckpointMeta and writing it again loses and adds nothing."""
    on_disk = torch.load(FIXTURES / f"{name}.pt", weights_only=True)["meta"]
    ckpt = load_checkpoint(FIXTURES / f"{name}.pt")
    assert ckpt.meta == on_disk
    save_checkpoint(tmp_path / "again.pt", ckpt.build(), ckpt.info)
    assert torch.load(tmp_path / "again.pt", weights_only=True)["meta"] == on_disk
