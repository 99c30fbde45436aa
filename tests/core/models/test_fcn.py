"""torchvision FCN: trains on dense class labels and instance labels, predicts the image's shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_seglab.core.errors import InputError
from napari_seglab.core.evaluate import match_instances
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


# ----------------------------------------------------------------------------- the light FCN


def test_light_fcn_is_a_stride_8_resnet18_and_much_smaller_than_resnet50():
    light, note = build_model(ModelSpec(family="fcn", arch="fcn_resnet18", in_channels=1, n_classes=3))
    heavy, _ = build_model(ModelSpec(family="fcn", arch="fcn_resnet50", in_channels=1, n_classes=3))
    assert "random" in note
    size = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert size(light) < size(heavy) / 8
    features = light.fcn.backbone(torch.rand(1, 3, 64, 96))["out"]
    assert features.shape == (1, 256, 8, 12)  # stride 8: one value per 8 x 8 pixels
    with torch.no_grad():
        assert light.eval()(torch.rand(2, 1, 64, 96)).shape == (2, 3, 64, 96)


def test_light_fcn_takes_imagenet_backbone_weights_from_the_torch_cache(monkeypatch, tmp_path):
    from torchvision.models import ResNet18_Weights, resnet18

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    spec = ModelSpec(family="fcn", arch="fcn_resnet18", in_channels=1, n_classes=3)
    _, note = build_model(spec, pretrained="auto")
    assert "not in the torch cache" in note and "random initialisation" in note
    cached = tmp_path / "hub" / "checkpoints" / ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    stock = resnet18(weights=None).state_dict()
    torch.save(stock, cached)
    model, note = build_model(spec, pretrained="imagenet")
    assert "ImageNet" in note
    assert torch.equal(model.fcn.backbone.layer3[0].conv1.weight, stock["layer3.0.conv1.weight"])


def test_light_fcn_refuses_a_weights_file_of_another_network(tmp_path):
    torch.save({"conv.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    with pytest.raises(InputError, match="does not hold weights for a ResNet-18 FCN"):
        build_model(ModelSpec(family="fcn", arch="fcn_resnet18", n_classes=3), pretrained=str(tmp_path / "other.pth"))


@pytest.mark.slow
def test_default_fcn_learns_nuclei_from_dense_instances_in_a_short_cpu_run():
    """What a CPU user gets from the FCN with its defaults: objects, not the empty map of a ResNet-50 FCN."""
    img, inst = make_nuclei((192, 192), seed=5)
    test_img, test_inst = make_nuclei((160, 160), seed=6)
    # 60 steps of 8 patches of 96 px: Dice 0.90, AP@0.5 0.87 here (one thread, 17 s)
    cfg = TrainConfig(family="fcn", label_mode="instances", epochs=2, steps_per_epoch=30, patch=96, device="cpu",
                      seed=0, save_last=False)
    result = drive(iter_train([img], [inst.astype(np.int32)], cfg))
    lm = load_model(result.checkpoint, "cpu")
    assert lm.spec.arch == "fcn_resnet18"
    pred = drive(iter_predict_image(lm, test_img))
    scores = match_instances(pred.labels, test_inst)
    assert scores["dice"] > 0.8 and scores["ap50"] > 0.5
