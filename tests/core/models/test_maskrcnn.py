"""Mask R-CNN: targets, loss, checkpoints, and the merge of tiled detections into one label image."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from napari_seglab.core.device import precision_for
from napari_seglab.core.events import Stopped, TileDone, collect, drive
from napari_seglab.core.models import (
    ModelSpec,
    build_maskrcnn,
    build_model,
    detection_loss,
    detection_targets,
    load_checkpoint,
    predict_instances_tiled,
    save_checkpoint,
)
from napari_seglab.core.models._maskrcnn import _paste_compact
from napari_seglab.core.objects import boxes_from_labels
from napari_seglab.core.predict import LoadedModel, iter_predict_image, load_model
from napari_seglab.core.synthetic import make_nuclei
from napari_seglab.core.train import TrainConfig, iter_train

ROW_KEYS = {"y0", "x0", "y1", "x1", "class", "score"}
# fewer sampled regions per image than the default keep the CPU tests quick
FAST = {"patch": 64, "box_batch_size_per_image": 32, "rpn_train_top_n": 300}


def spec(arch: str = "maskrcnn_resnet18_fpn", **options) -> ModelSpec:
    return ModelSpec(family="maskrcnn", arch=arch, in_channels=1, n_classes=2, options={**FAST, **options})


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    model, note = build_model(spec())
    return model, note


# ----------------------------------------------------------------------------- targets and loss


def test_detection_targets_from_hand_made_instances():
    inst = np.zeros((20, 30), np.uint16)
    inst[2:6, 3:10] = 7  # ids need not be consecutive
    inst[10:18, 20:25] = 3
    inst[0, 29] = 9  # a one-pixel sliver: dropped
    t = detection_targets(inst)
    assert t["boxes"].dtype == torch.float32 and t["labels"].dtype == torch.int64
    assert t["masks"].dtype == torch.uint8 and t["masks"].shape == (2, 20, 30)
    # ascending ids: 3 then 7; boxes are x0, y0, x1, y1 with exclusive ends
    assert t["boxes"].tolist() == [[20, 10, 25, 18], [3, 2, 10, 6]]
    assert t["labels"].tolist() == [1, 1]
    assert t["masks"][0].numpy().astype(bool).tolist() == (inst == 3).tolist()
    assert int(t["masks"][1].sum()) == 28


def test_detection_targets_of_empty_patch():
    t = detection_targets(np.zeros((16, 16), np.int64))
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,) and t["masks"].shape == (0, 16, 16)


def test_detection_loss_is_finite_with_and_without_objects(detector):
    model, note = detector
    assert "random initialisation" in note
    img, inst = make_nuclei((64, 64), seed=3)
    x = (img.astype(np.float32) - img.min()) / np.ptp(img)
    images = torch.from_numpy(np.stack([x, x[::-1].copy()]))[:, None]
    loss = detection_loss(model, images, [inst.astype(np.int64), np.zeros((64, 64), np.int64)])
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.training
    model.zero_grad(set_to_none=True)


@pytest.mark.slow
def test_model_round_trips_through_a_checkpoint(tmp_path, detector):
    model, _ = detector
    meta = {"model": spec().to_dict(), "label_mode": "instances"}
    save_checkpoint(tmp_path / "m.pt", model, meta)
    rebuilt = load_checkpoint(tmp_path / "m.pt").build("cpu")
    for (k, a), (k2, b) in zip(model.state_dict().items(), rebuilt.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)


def test_multichannel_input_and_v2_build():
    s = replace(spec(rpn_pre_nms_top_n=100, rpn_post_nms_top_n=50), arch="maskrcnn_resnet50_fpn_v2", in_channels=2)
    model, _ = build_maskrcnn(s, None, False)
    model.eval()
    with torch.inference_mode():
        out = model.detect(torch.rand(1, 2, 64, 64), 0.99)
    assert set(out[0]) >= {"boxes", "scores", "labels", "masks"}


def test_stock_weights_missing_from_cache_fall_back_to_random(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    _, note = build_maskrcnn(spec("maskrcnn_resnet50_fpn"), "coco", False)
    assert "not in the torch cache" in note and "random initialisation" in note and "maskrcnn_resnet50" in note
    # the light architecture has no COCO weights: "coco" looks for its ImageNet backbone
    _, note = build_maskrcnn(spec(), "coco", False)
    assert "resnet18" in note and "random initialisation" in note


def test_light_maskrcnn_is_a_resnet18_fpn_with_narrow_heads():
    light, _ = build_maskrcnn(spec(), None, False)
    heavy, _ = build_maskrcnn(spec("maskrcnn_resnet50_fpn"), None, False)
    size = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert size(light) < size(heavy) / 3
    det = light.detector
    assert det.backbone.out_channels == 128 and len(det.roi_heads.mask_head) == 2
    bare, _ = build_maskrcnn(ModelSpec(family="maskrcnn", arch="maskrcnn_resnet18_fpn", n_classes=2), None, False)
    assert bare.detector.roi_heads.fg_bg_sampler.batch_size_per_image == 64  # its own default: fewer regions
    assert build_maskrcnn(spec(box_batch_size_per_image=200), None, False)[0].detector.roi_heads \
        .fg_bg_sampler.batch_size_per_image == 200  # an option still overrides it
    light.eval()
    with torch.inference_mode():
        out = light.detect(torch.rand(1, 1, 96, 64), 0.0)[0]
    assert out["masks"].shape[1:] == (1, 28, 28) and out["boxes"].shape[1] == 4


@pytest.mark.slow
def test_weights_file_loads_and_predictors_fit_our_classes(tmp_path, detector):
    model, _ = detector
    other, _ = build_model(ModelSpec(family="maskrcnn", arch="maskrcnn_resnet18_fpn", n_classes=5,
                                     options=FAST))
    torch.save(other.detector.state_dict(), tmp_path / "stock.pth")  # a torchvision-style state dict
    loaded, note = build_maskrcnn(spec(), str(tmp_path / "stock.pth"), False)
    assert "stock.pth" in note
    got, src = loaded.detector.state_dict(), other.detector.state_dict()
    assert torch.equal(got["backbone.body.conv1.weight"], src["backbone.body.conv1.weight"])
    assert got["roi_heads.box_predictor.cls_score.weight"].shape[0] == 2
    assert got["roi_heads.mask_predictor.mask_fcn_logits.weight"].shape[0] == 2


# ----------------------------------------------------------------------------- merge of tiled detections


class GroundTruthDetector(nn.Module):
    """Stands in for Mask R-CNN: 'detects' the true objects visible in each tile.

    The input plane carries its own coordinates (pixel value = y * width + x),
    so the stub knows where a tile lies. Objects cut by the tile edge come
    back cut, as a real detector would see them.
    """

    def __init__(self, instances: np.ndarray, scores: dict[int, float] | None = None, duplicate: int = 0):
        super().__init__()
        self.instances, self.scores, self.duplicate = instances, scores or {}, duplicate
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        h, w = x.shape[-2:]
        y0, x0 = divmod(int(x[0, 0, 0, 0]), self.instances.shape[1])
        crop = self.instances[y0:y0 + h, x0:x0 + w]
        found = [(int(i), self.scores.get(int(i), 0.9 - 0.01 * int(i))) for i in np.unique(crop) if i]
        found += [(i, s - 0.05) for i, s in found if i == self.duplicate]  # a weaker second detection
        masks = np.stack([crop == i for i, _ in found]).astype(np.float32) if found else np.zeros((0, h, w), np.float32)
        boxes = []
        for m in masks:
            ys, xs = np.nonzero(m)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        scores = [s for _, s in found]
        return [{"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                 "labels": torch.ones(len(found), dtype=torch.int64),
                 "scores": torch.tensor(scores, dtype=torch.float32),
                 "masks": torch.from_numpy(masks)[:, None]}]


def coordinate_plane(h: int, w: int) -> np.ndarray:
    return np.arange(h * w, dtype=np.float32).reshape(1, h, w)


def stub_model(detector: nn.Module) -> LoadedModel:
    meta = {"model": spec().to_dict(), "label_mode": "instances",
            # identity normalisation, so the coordinates reach the stub unchanged
            "normalization": {"per_image": False, "lo": [0.0], "hi": [1.0]}}
    return LoadedModel(model=detector, meta=meta, device=torch.device("cpu"),
                       precision=precision_for(torch.device("cpu"), training=True))


def objects_across_tile_borders() -> np.ndarray:
    """(96, 96) objects; with 64 px tiles at 0.5 overlap, tiles start at 0 and 32 and their cores meet at 48."""
    inst = np.zeros((96, 96), np.int32)
    inst[40:56, 8:20] = 1  # straddles the core border between the two tile rows
    inst[58:72, 26:38] = 2  # crosses the lower edge of the first tile row
    inst[42:54, 42:54] = 3  # straddles both core borders: in all four tiles
    inst[4:14, 4:14] = 4  # in one tile only
    inst[80:92, 70:90] = 5
    yy, xx = np.mgrid[:96, :96]
    inst[(yy - 20) ** 2 + (xx - 62) ** 2 < 36] = 6  # a disc across the second tile column's left edge
    return inst


def assert_same_objects(pred: np.ndarray, truth: np.ndarray):
    """pred is truth relabelled: one predicted id per true object, background kept."""
    assert ((pred > 0) == (truth > 0)).all()
    pairs = {(int(t), int(p)) for t, p in zip(truth.ravel(), pred.ravel(), strict=True) if t}
    assert len(pairs) == len({t for t, _ in pairs}) == len({p for _, p in pairs})


def test_object_cut_by_tile_borders_comes_out_once():
    truth = objects_across_tile_borders()
    lm = stub_model(GroundTruthDetector(truth))
    events, (labels, rows) = collect(predict_instances_tiled(lm, coordinate_plane(96, 96), tile=64, overlap=0.5))
    assert [(e.tile, e.tiles) for e in events] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert labels.dtype == np.int32 and labels.shape == (96, 96)
    assert labels.max() == len(rows) == 6
    assert_same_objects(labels, truth)
    assert all(set(r) == ROW_KEYS for r in rows)
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    boxes, ids = boxes_from_labels(labels)
    assert boxes.tolist() == [[r["y0"], r["x0"], r["y1"], r["x1"]] for r in rows]
    assert ids.tolist() == list(range(1, 7))


def test_low_scores_and_duplicates_are_dropped():
    truth = objects_across_tile_borders()
    lm = stub_model(GroundTruthDetector(truth, scores={4: 0.3}, duplicate=5))
    labels, rows = drive(predict_instances_tiled(lm, coordinate_plane(96, 96), tile=64, overlap=0.5,
                                                 score_threshold=0.5))
    assert len(rows) == 5
    assert not labels[truth == 4].any()
    assert_same_objects(np.where(truth == 4, 0, labels), np.where(truth == 4, 0, truth))


def test_one_tile_when_the_plane_fits():
    truth = objects_across_tile_borders()
    detector = GroundTruthDetector(truth)
    labels, rows = drive(predict_instances_tiled(stub_model(detector), coordinate_plane(96, 96),
                                                 tile=128, overlap=0.25))
    assert detector.calls == 1 and len(rows) == 6
    assert_same_objects(labels, truth)


def test_stop_raises_stopped_and_predict_image_reports_stopped():
    truth = objects_across_tile_borders()
    stop = threading.Event()
    stop.set()
    lm = stub_model(GroundTruthDetector(truth))
    with pytest.raises(Stopped):
        drive(predict_instances_tiled(lm, coordinate_plane(96, 96), tile=64, overlap=0.5, stop=stop))
    assert drive(iter_predict_image(lm, coordinate_plane(96, 96)[0], tile=64, overlap=0.5,
                               stop=stop)).stopped


def test_predict_image_fills_each_plane_of_a_stack_with_boxes_per_plane():
    truth = objects_across_tile_borders()
    lm = stub_model(GroundTruthDetector(truth))
    stack = np.stack([coordinate_plane(96, 96)[0]] * 3)
    events, pred = collect(iter_predict_image(lm, stack, "ZYX", tile=64, overlap=0.5, planes=[(0,), (2,)]))
    assert pred.kind == "instances" and pred.labels.shape == (3, 96, 96) and pred.labels.dtype == np.int32
    assert_same_objects(pred.labels[2], truth)
    assert not pred.labels[1].any()
    assert len(pred.boxes) == 12 and {r["plane"] for r in pred.boxes} == {"0", "2"}
    assert all(set(r) == ROW_KEYS | {"plane"} for r in pred.boxes)
    assert sum(isinstance(e, TileDone) for e in events) == 8


def test_compact_masks_are_pasted_into_their_boxes():
    y0, x0, crop = _paste_compact(torch.ones(28, 28), [10.0, 20.0, 30.0, 40.0], 64, 64)
    assert abs(y0 - 20) <= 1 and abs(x0 - 10) <= 1
    assert abs(crop.shape[0] - 20) <= 2 and abs(crop.shape[1] - 20) <= 2 and crop.mean() > 0.9
    # clipped at the tile edge
    y0, x0, crop = _paste_compact(torch.ones(28, 28), [50.0, 50.0, 70.0, 70.0], 64, 64)
    assert y0 + crop.shape[0] == 64 and x0 + crop.shape[1] == 64


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_maskrcnn_trains_and_predicts_instances(tmp_path):
    img, inst = make_nuclei((64, 64), seed=5)
    cfg = TrainConfig(label_mode="instances", family="maskrcnn", patch=64, batch_size=1, epochs=1,
                      steps_per_epoch=1, device="cpu", lr=1e-4, model_out=str(tmp_path / "m.pt"),
                      save_last=False)
    _, result = collect(iter_train([img], [inst], cfg))
    assert result.steps == 1 and np.isfinite(result.history[0]["train_loss"])
    ckpt = load_checkpoint(tmp_path / "m.pt")
    assert ckpt.spec.family == "maskrcnn" and ckpt.spec.n_classes == 2 and ckpt.label_mode == "instances"
    assert ckpt.meta["class_names"] == ["background", "object"]
    lm = load_model(tmp_path / "m.pt", "cpu")
    events, pred = collect(iter_predict_image(lm, img, score_threshold=0.6))
    assert pred.kind == "instances" and pred.labels.shape == img.shape and pred.labels.dtype == np.int32
    assert pred.probabilities is None and any(isinstance(e, TileDone) for e in events)
    assert len(pred.boxes) == pred.labels.max()
    assert all(set(r) == ROW_KEYS | {"plane"} for r in pred.boxes)
