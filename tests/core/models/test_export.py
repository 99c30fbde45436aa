"""Exporting checkpoints: TorchScript, ONNX and a bioimage.io package."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_seglab.core.errors import InputError
from napari_seglab.core.models import (
    META_FILE,
    Checkpoint,
    ModelSpec,
    example_input,
    export_model,
    export_torchscript,
    exportable_model,
    load_checkpoint,
    probabilities,
)

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")


def test_torchscript_gives_the_model_probabilities_at_any_size(tiny_model, tmp_path):
    out = export_torchscript(tiny_model, tmp_path / "m.ts")
    extra = {META_FILE: ""}
    scripted = torch.jit.load(str(out), _extra_files=extra)
    net = load_checkpoint(tiny_model).build("cpu")
    for shape in [(1, 1, 64, 64), (2, 1, 96, 160)]:
        x = torch.rand(shape)
        with torch.no_grad():
            got, want = scripted(x), probabilities(net(x))
        assert got.shape == (shape[0], 2, *shape[2:])
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)
    meta = json.loads(extra[META_FILE])
    assert meta["model"]["encoder"] == "resnet18" and "normalization" in meta


def test_example_input_follows_the_recorded_patch_and_channels(tiny_model):
    x = example_input(tiny_model)
    assert x.shape == (1, 1, 64, 64) and x.dtype == torch.float32


def test_maskrcnn_is_refused_before_building():
    spec = ModelSpec(family="maskrcnn", arch="maskrcnn_resnet50_fpn", n_classes=2)
    ckpt = Checkpoint(meta={"model": spec.to_dict()}, state_dict={})
    with pytest.raises(InputError, match="Mask R-CNN"):
        exportable_model(ckpt)


def test_export_model_refuses_bad_format_and_overwriting_the_checkpoint(tiny_model, tmp_path):
    with pytest.raises(InputError, match="torchscript"):
        export_model(tiny_model, "keras", tmp_path / "m.h5")
    before = tiny_model.read_bytes()
    with pytest.raises(InputError, match="overwrite"):
        export_model(tiny_model, "torchscript", tiny_model)
    assert tiny_model.read_bytes() == before


def test_export_into_a_missing_folder_writes_nothing(tiny_model, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        export_model(tiny_model, "torchscript", tmp_path / "nope" / "m.pt")
    assert not (tmp_path / "nope").exists()


def test_onnx_needs_the_onnx_package(tiny_model, tmp_path):
    try:
        import onnx
    except ImportError:
        with pytest.raises(InputError, match="install onnx"):
            export_model(tiny_model, "onnx", tmp_path / "m.onnx")
        return
    out = export_model(tiny_model, "onnx", tmp_path / "m.onnx")
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["input"]
