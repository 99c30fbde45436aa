"""torchvision FCN: trains on dense class labels and instance labels, predicts the image's shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_seglab.core.events import drive
from napari_seglab.core.models import FCNWrapper, ModelSpec, build_model, load_checkpoint
from napari_seglab.core.predict import iter_predict_image, load_model
from napari_seglab.core.synthetic import make_nuclei
from napari_seglab.core.train import TrainConfig, iter_train

FAST = dict(family="fcn", arch="fcn_resnet50", patch=64, batch_size=2, epochs=1, device="cpu", lr=1e-3,
            save_last=False)


@pytest.fixture(scope="module")
def nuclei():
    img, inst = make_nuclei((96, 96), seed=2)
    return img, inst.astype(np.int32)


def test_fcn_logits_have_one_channel_per_class_at_input_size():
    model, note = build_model(ModelSpec(family="fcn", arch="fcn_resnet50", in_channels=2, n_classes=4))
    assert isinstance(model, FCNWrapper) and "random" in note
    with torch.no_grad():
        out = model.eval()(torch.rand(1, 2, 64, 96))
    assert out.shape == (1, 4, 64, 96)


@pytest.mark.slow
def test_fcn_trains_on_classes_and_predicts(tmp_path, nuclei):
    img, inst = nuclei
    classes = np.where(inst > 0, 1 + inst % 2, 0).astype(np.uint8)  # two object classes
    cfg = TrainConfig(label_mode="classes", steps_per_epoch=2, model_out=str(tmp_path / "fcn.pt"), **FAST)
    result = drive(iter_train([img], [classes], cfg))
    assert result.steps == 2 and np.isfinite(result.history[0]["train_loss"])
    ckpt = load_checkpoint(tmp_path / "fcn.pt")
    assert ckpt.spec.family == "fcn" and ckpt.spec.n_classes == 3
    pred = drive(iter_predict_image(load_model(ckpt, "cpu"), img, probabilities=True))
    assert pred.kind == "semantic" and pred.labels.shape == img.shape and pred.labels.dtype == np.int32
    assert pred.probabilities.shape == (3, *img.shape)
    np.testing.assert_allclose(pred.probabilities.sum(0), 1.0, atol=1e-4)
    assert pred.labels.min() >= 0 and pred.labels.max() <= 2


@pytest.mark.slow
def test_fcn_trains_on_instances_and_predicts_object_ids(nuclei):
    img, inst = nuclei
    cfg = TrainConfig(label_mode="instances", steps_per_epoch=1, instance_head="boundary", **FAST)
    result = drive(iter_train([img], [inst], cfg))
    lm = load_model(result.checkpoint, "cpu")
    assert lm.spec.n_classes == 3  # background, interior, boundary
    pred = drive(iter_predict_image(lm, img))
    assert pred.kind == "instances" and pred.labels.shape == img.shape and pred.labels.dtype == np.int32


@pytest.mark.slow
def test_fcn_on_dense_instances_gets_the_flows_head_by_default(nuclei):
    img, inst = nuclei
    result = drive(iter_train([img], [inst], TrainConfig(label_mode="instances", steps_per_epoch=1, **FAST)))
    lm = load_model(result.checkpoint, "cpu")
    assert lm.spec.head == "flows" and lm.spec.out_channels == 3
    pred = drive(iter_predict_image(lm, img, probabilities=True))
    assert pred.kind == "instances" and pred.labels.shape == img.shape
    np.testing.assert_allclose(pred.probabilities.sum(0), 1, atol=1e-5)
