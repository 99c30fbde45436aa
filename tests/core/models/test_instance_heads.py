"""The "flows" and "distance" instance heads in training, prediction, checkpoints and augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from painted import discs, partial

from napari_seglab.core.data import Normalization, PatchSampler, Sample
from napari_seglab.core.errors import InputError
from napari_seglab.core.events import collect, drive
from napari_seglab.core.labels import get_mode, head_targets, validate_labels
from napari_seglab.core.models import (
    ModelSpec,
    build_model,
    export_model,
    load_checkpoint,
    save_checkpoint,
)
from napari_seglab.core.objects import _flows as flows
from napari_seglab.core.predict import iter_predict_image, load_model
from napari_seglab.core.train import TrainConfig, iter_train, prepare_training_data

TINY = dict(patch=64, batch_size=2, lr=3e-3, device="cpu", bf16="off", threads=1, scale=1.0,
            save_last=False)


def labels_for(mode, inst):
    return inst if mode == "instances" else partial(inst)


# one pair in the fast run (flows on objects is the session's flows_model); the others are slow
@pytest.mark.parametrize(("mode", "head"), [
    ("instances", "distance"),
    pytest.param("instances", "flows", marks=pytest.mark.slow),
    pytest.param("objects", "flows", marks=pytest.mark.slow),
    pytest.param("objects", "distance", marks=pytest.mark.slow),
])
def test_head_trains_and_predicts_instances(tmp_path, mode, head):
    img, inst = discs()
    path = tmp_path / "m.pt"
    cfg = TrainConfig(label_mode=mode, instance_head=head, epochs=1, steps_per_epoch=2, model_out=str(path), **TINY)
    _, result = collect(iter_train([img], [labels_for(mode, inst)], cfg))
    meta = result.checkpoint.meta
    assert meta["model"]["options"]["head"] == head
    assert meta["class_names"] == ["background", "object"] and meta["n_classes"] == 2
    assert result.steps == 2
    ckpt = load_checkpoint(path)  # round trip: the head survives and the weights fit it
    assert ckpt.spec.head == head and ckpt.spec.out_channels == flows.n_outputs(head)
    pred = drive(iter_predict_image(load_model(path, "cpu"), img, probabilities=True))
    assert pred.kind == "instances"
    assert pred.labels.shape == img.shape and pred.labels.dtype == np.int32
    assert pred.probabilities.shape == (2, *img.shape)
    np.testing.assert_allclose(pred.probabilities.sum(0), 1.0, atol=1e-5)


def test_head_targets_keep_the_whole_plane_and_ignore_unpainted_pixels_beyond_the_margin():
    _, inst = discs()
    lab = validate_labels(partial(inst), inst.shape, "objects")
    fg, reg = head_targets(lab, "objects", "flows")
    assert reg.shape == (3, *inst.shape) and reg.dtype == np.float32
    margin = get_mode("objects").with_margin(lab)  # unpainted pixels next to a painted object: background
    assert (fg[margin == 0] == -1).all() and (fg[margin == 1] == 0).all() and (fg[lab >= 2] == 1).all()
    assert ((lab == 0) & (margin == 1)).any()
    samples, *_ = prepare_training_data([discs()[0]], [lab], "objects", scale=1.0, head="flows")
    assert samples[0].head == "flows" and samples[0].regression.shape == (3, *inst.shape)


def test_augmented_flow_patches_still_point_to_their_object_centre():
    img, inst = discs(shape=(64, 64), centres=((30, 34, 14),))
    fg, reg = head_targets(inst.astype(np.int64), "instances", "flows")
    sample = Sample(Normalization().apply(img[None]), fg, None, reg, "flows")
    sampler = PatchSampler([sample], 64, np.random.default_rng(0), favour=0.0)
    seen = set()
    for _ in range(40):
        x, t, r = sampler.head_batch(1)
        # the object's centre in the augmented patch: the foreground's centroid (the object is whole)
        ys, xs = np.nonzero(t[0] == 1)
        cy, cx = ys.mean(), xs.mean()
        far = np.hypot(ys - cy, xs - cx) > 4
        to_centre = np.stack([cy - ys[far], cx - xs[far]])
        to_centre /= np.linalg.norm(to_centre, axis=0)
        vec = r[0, 1:, ys[far], xs[far]].T
        cos = (vec * to_centre).sum(0)
        assert np.median(cos) > 0.9, cos.min()
        # the image moved with the targets: the bright disc is where the foreground is
        assert x[0, 0][t[0] == 1].mean() > x[0, 0][t[0] == 0].mean() + 0.3
        seen.add((round(float(cy)), round(float(cx))))
    assert len(seen) > 1  # the patches were really turned


class _ExactFlows(torch.nn.Module):
    """A fake network whose outputs are the exact flow targets of the plane it sits on.

    It answers each tile by finding where the tile lies in the (unique, random)
    test image, so the blended outputs are the exact targets, as from a perfect model.
    """

    def __init__(self, image: np.ndarray, target: np.ndarray):
        super().__init__()
        self.image, self.target = image, target
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        tile = x[0, 0].numpy()
        h, w = tile.shape
        for y0, x0 in np.argwhere(np.abs(self.image - tile[0, 0]) < 1e-6):
            if y0 + h <= self.image.shape[0] and x0 + w <= self.image.shape[1] \
                    and np.allclose(self.image[y0:y0 + h, x0:x0 + w], tile, atol=1e-5):
                t = self.target[:, y0:y0 + h, x0:x0 + w]
                logit = np.where(t[0] > 0, 8.0, -8.0)
                out = np.concatenate([logit[None], flows.FLOW_SCALE * t[1:]])
                return torch.from_numpy(out.astype(np.float32))[None]
        raise AssertionError("tile not found in the image")


def test_object_on_a_tile_border_is_one_object(tmp_path):
    # 96 x 128 with 64 px tiles: tiles start at x = 0, 32, 64 and y = 0, 32; an object centred on x = 64 and
    # a long one across y = 48 cross tile borders and must each come out whole
    shape = (96, 128)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    inst = np.zeros(shape, np.int64)
    inst[(yy - 30) ** 2 + (xx - 64) ** 2 < 12**2] = 1
    inst[(yy - 60) ** 2 / 20**2 + (xx - 25) ** 2 / 8**2 < 1] = 2
    inst[(yy - 70) ** 2 + (xx - 95) ** 2 < 10**2] = 3
    img = np.random.default_rng(1).uniform(0, 1, shape).astype(np.float32)
    target, _ = flows.targets(inst, "instances", "flows")
    spec = ModelSpec(family="unet", arch="Unet", encoder="resnet18", n_classes=2,
                     options={"encoder_depth": 3, "decoder_channels": [16, 16, 16], "head": "flows"})
    model, _ = build_model(spec)
    meta = {"model": spec.to_dict(), "label_mode": "instances", "n_classes": 2, "class_names": ["background", "object"],
            "normalization": {"per_image": False, "lo": [0.0], "hi": [1.0]}}
    save_checkpoint(tmp_path / "m.pt", model, meta)
    lm = load_model(tmp_path / "m.pt", "cpu")
    lm.model = _ExactFlows(img, target)
    pred = drive(iter_predict_image(lm, img, tile=64, overlap=0.25))
    assert lm.model.calls > 4  # it really was tiled
    assert pred.labels.max() == 3
    for i in (1, 2, 3):
        ids = np.unique(pred.labels[inst == i])
        ids = ids[ids > 0]
        assert len(ids) == 1, (i, ids)
        iou = np.logical_and(pred.labels == ids[0], inst == i).sum() / np.logical_or(pred.labels == ids[0],
                                                                                       inst == i).sum()
        assert iou > 0.9


@pytest.mark.slow
def test_old_checkpoint_without_a_head_predicts_with_the_boundary_head(tmp_path):
    img, inst = discs()
    path = tmp_path / "old.pt"
    cfg = TrainConfig(label_mode="instances", encoder="resnet18", epochs=1, steps_per_epoch=2,
                      model_out=str(path), instance_head="boundary", **TINY)
    _, result = collect(iter_train([img], [inst], cfg))
    meta = result.checkpoint.meta
    assert "head" not in meta["model"]["options"]  # the boundary head is stored as before
    assert meta["class_names"] == ["background", "interior", "boundary"]
    ckpt = load_checkpoint(path)
    assert ckpt.spec.head == "boundary" and ckpt.spec.out_channels == 3
    pred = drive(iter_predict_image(load_model(path, "cpu"), img, probabilities=True))
    assert pred.kind == "instances" and pred.probabilities.shape == (3, *img.shape)


@pytest.mark.parametrize("bad", [
    dict(label_mode="instances", instance_head="stardist"),
    dict(label_mode="scribbles", instance_head="flows"),
    dict(label_mode="instances", instance_head="flows", family="maskrcnn"),
])
def test_bad_instance_head_is_refused_in_the_config(bad):
    with pytest.raises(InputError, match="instance head|head"):
        TrainConfig(epochs=1, **bad).check()


def test_bad_instance_head_in_checkpoint_metadata_is_refused(tmp_path):
    spec = ModelSpec(family="unet", arch="Unet", encoder="resnet18", n_classes=2,
                     options={"encoder_depth": 3, "decoder_channels": [16, 16, 16], "head": "flows"})
    model, _ = build_model(spec)
    bad = spec.to_dict()
    bad["options"]["head"] = "watershed"
    save_checkpoint(tmp_path / "bad.pt", model, {"model": bad, "label_mode": "instances", "n_classes": 2})
    with pytest.raises(InputError, match="instance head"):
        load_checkpoint(tmp_path / "bad.pt")


def test_export_of_a_head_model_gives_foreground_probability_and_maps(tmp_path):
    spec = ModelSpec(family="unet", arch="Unet", encoder="resnet18", n_classes=2,
                     options={"encoder_depth": 3, "decoder_channels": [16, 16, 16], "head": "flows"})
    model, _ = build_model(spec)
    save_checkpoint(tmp_path / "m.pt", model, {"model": spec.to_dict(), "label_mode": "instances", "n_classes": 2,
                                               "patch": 64})
    export_model(tmp_path / "m.pt", "torchscript", tmp_path / "m.ts")
    extra = {"seglab_meta.json": ""}
    traced = torch.jit.load(str(tmp_path / "m.ts"), _extra_files=extra)
    meta = extra["seglab_meta.json"]
    assert "foreground probability, then the flows" in (meta.decode() if isinstance(meta, bytes) else meta)
    x = torch.rand(1, 1, 64, 64)
    out = traced(x)
    model.eval()
    with torch.no_grad():
        raw = model(x)
    assert out.shape == (1, 3, 64, 64)
    torch.testing.assert_close(out[:, 0], torch.sigmoid(raw[:, 0]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[:, 1:], raw[:, 1:], atol=1e-5, rtol=1e-5)


def test_cli_trains_with_the_flows_head_and_predicts_objects(tmp_path, capsys):
    import tifffile

    from napari_seglab.cli import main

    img, inst = discs()
    tifffile.imwrite(tmp_path / "img.tif", img)
    tifffile.imwrite(tmp_path / "inst.tif", inst)
    model = tmp_path / "m.pt"
    code = main(["train", "--image", str(tmp_path / "img.tif"), "--labels", str(tmp_path / "inst.tif"),
                 "--label-mode", "instances", "--instance-head", "flows", "--model-out", str(model),
                 "--patch", "64", "--batch-size", "2", "--epochs", "1", "--steps-per-epoch", "2", "--device", "cpu",
                 "--scale", "1", "--threads", "1"])
    assert code == 0, capsys.readouterr().err
    assert load_checkpoint(model).spec.head == "flows"
    code = main(["predict", "--model", str(model), "--input", str(tmp_path / "img.tif"),
                 "--output", str(tmp_path / "pred.tif")])
    assert code == 0, capsys.readouterr().err
    assert tifffile.imread(tmp_path / "pred.tif").shape == img.shape
    capsys.readouterr()
    code = main(["train", "--image", str(tmp_path / "img.tif"), "--labels", str(tmp_path / "inst.tif"),
                 "--label-mode", "instances", "--instance-head", "stardist", "--model-out", str(tmp_path / "x.pt")])
    assert code == 2 and "stardist" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_object_scale_resamples_then_maps_the_objects_back(flows_model):
    img, _ = discs()
    lm = load_model(flows_model, "cpu")
    assert lm.meta["scale"] == 1.5
    stack = np.stack([img, img[::-1]])
    pred = drive(iter_predict_image(lm, stack, "ZYX", probabilities=True))
    assert pred.kind == "instances" and pred.labels.shape == stack.shape
    assert pred.probabilities.shape == (2, *stack.shape)
    np.testing.assert_allclose(pred.probabilities.sum(0), 1.0, atol=1e-5)


def test_batch_writes_objects_of_a_head_model(flows_model, tmp_path):
    import tifffile

    from napari_seglab.core.batch import iter_run_batch

    img, _ = discs()
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "a.tif", img.astype(np.uint16))
    tifffile.imwrite(tmp_path / "in" / "b.tif", np.stack([img, img[::-1]]).astype(np.uint16))
    _, summary = collect(iter_run_batch(str(flows_model), str(tmp_path / "in"), str(tmp_path / "out"), workers=0,
                                   probabilities=True))
    assert summary.ok == 2 and summary.failed == 0
    assert tifffile.imread(tmp_path / "out" / "b_labels.tif").shape == (2, *img.shape)
    assert tifffile.imread(tmp_path / "out" / "a_probabilities.tif").shape == (2, *img.shape)


def test_validation_dice_and_preview_work_for_a_head():
    from napari_seglab.core.events import Preview

    centres = tuple((cy, cx, 9) for cy in range(24, 192, 40) for cx in range(24, 256, 40))
    img, inst = discs(shape=(192, 256), centres=centres)
    cfg = TrainConfig(label_mode="instances", instance_head="flows", epochs=1, steps_per_epoch=2, preview_every=2,
                      **TINY)
    events, result = collect(iter_train([img], [inst], cfg, preview_plane=img))
    val = result.history[-1]["val_dice"]
    assert val is not None and 0.0 <= val <= 1.0
    assert len(result.history[-1]["per_class_dice"]) == 2  # background, object
    previews = [e for e in events if isinstance(e, Preview)]
    assert previews and previews[-1].labels.shape == img.shape


def test_fine_tuning_keeps_the_head_of_the_start_model(flows_model, tmp_path):
    img, inst = discs()
    cfg = TrainConfig(label_mode="objects", init=str(flows_model), epochs=1, steps_per_epoch=1, **TINY)
    _, result = collect(iter_train([img], [partial(inst)], cfg))
    assert result.checkpoint.spec.head == "flows"
    with pytest.raises(InputError, match="'flows' instance head, not 'distance'"):
        collect(iter_train([img], [partial(inst)], TrainConfig(**{**cfg.__dict__, "instance_head": "distance"})))


def test_describe_checkpoint_names_the_head_and_the_scale():
    from napari_seglab.core.models import Checkpoint, describe_checkpoint

    spec = ModelSpec(family="unet", arch="Unet", encoder="resnet18", n_classes=2, options={"head": "flows"})
    text = describe_checkpoint(Checkpoint(meta={"model": spec.to_dict(), "label_mode": "instances", "scale": 1.5},
                                          state_dict={}))
    assert "flows instance head" in text and "resampled x1.5" in text

