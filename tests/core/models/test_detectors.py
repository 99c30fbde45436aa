"""The box detector families (RetinaNet, FCOS, Faster R-CNN): build, learn, save, predict, merge tiles.

Tiny 64 px inputs, untrained networks (weights=None): these tests check the
plumbing and the rules (targets, cross-tile merge, limits), not accuracy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from painted import two_discs

from napari_seglab.core.errors import InputError
from napari_seglab.core.events import drive
from napari_seglab.core.models import (
    CheckpointMeta,
    LossInputs,
    ModelSpec,
    batch_box_targets,
    boxes_from_instances,
    build_model,
    families,
    get_family,
    load_checkpoint,
    merge_tile_boxes,
    save_checkpoint,
)
from napari_seglab.core.predict import iter_predict_image, load_model
from napari_seglab.core.tiling import TilePlan

BOX_FAMILIES = [pytest.param(f.name, id=f.name) for f in families() if f.kind == "boxes"]
#: every box detector scores every candidate, so an untrained one still returns boxes (at most 20 per tile)
LOOSE = {"box_score_thresh": 0.0, "detections_per_img": 20, "rpn_train_top_n": 100,
         "box_batch_size_per_image": 16}


def spec_of(family: str, in_channels: int = 1, n_classes: int = 2, **options) -> ModelSpec:
    entry = get_family(family)
    keep = {k: v for k, v in {**LOOSE, **options}.items() if k in entry.stored_options}
    return ModelSpec(family=family, arch=entry.default_arch, in_channels=in_channels, n_classes=n_classes,
                     options=keep)


def scores_near_half(model) -> None:
    """Put an untrained one-stage detector's class scores near 0.5 (its prior bias makes them ~0.01)."""
    head = getattr(model.detector, "head", None)
    if head is not None:
        torch.nn.init.zeros_(head.classification_head.cls_logits.bias)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("family", BOX_FAMILIES)
def test_box_family_builds_from_scratch_and_detects(family, channels):
    torch.manual_seed(0)
    spec = spec_of(family, in_channels=channels)
    model, note = build_model(spec)
    assert note == "random initialisation"
    assert get_family(family).kind == "boxes" and not spec.semantic
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(1, channels, 64, 64))
    assert len(out) == 1 and out[0]["boxes"].shape[1] == 4
    assert out[0]["scores"].shape == out[0]["labels"].shape == out[0]["boxes"].shape[:1]


@pytest.mark.slow
@pytest.mark.parametrize("family", BOX_FAMILIES)
def test_loss_step_on_boxes_and_on_negative_patches(family):
    torch.manual_seed(0)
    spec = spec_of(family, n_classes=3)
    model, _ = build_model(spec)
    entry = get_family(family)
    chw, _ = two_discs()
    images = torch.from_numpy(np.stack([chw, chw]))
    with_boxes = [np.array([[12, 12, 29, 29, 1], [33, 35, 52, 54, 2]], np.float32), np.zeros((0, 5), np.float32)]
    for boxes in (with_boxes, [np.zeros((0, 5), np.float32)] * 2):  # one negative patch; then all negative
        model.zero_grad()
        loss = entry.loss(model, LossInputs(images=images, targets=None, boxes=boxes))
        assert loss.ndim == 0 and torch.isfinite(loss)
        loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_instance_patches_give_the_same_targets_as_explicit_boxes():
    chw, inst = two_discs()
    inst[0, 0:2] = 3  # a 2-pixel sliver at the patch border: no box
    images = torch.from_numpy(np.stack([chw, chw]))
    negative = np.zeros_like(inst)
    from_instances = batch_box_targets(LossInputs(images=images, targets=None, instances=[inst, negative]), 2)
    ys, xs = np.nonzero(inst == 1)
    ys2, xs2 = np.nonzero(inst == 2)
    drawn = [np.array([[ys.min(), xs.min(), ys.max() + 1, xs.max() + 1, 1],
                       [ys2.min(), xs2.min(), ys2.max() + 1, xs2.max() + 1, 1]], np.float32),
             np.zeros((0, 5), np.float32)]
    from_boxes = batch_box_targets(LossInputs(images=images, targets=None, boxes=drawn), 2)
    for a, b in zip(from_instances, from_boxes, strict=True):
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["labels"], b["labels"])
    # torchvision's x0, y0, x1, y1 order, exclusive far edges
    assert from_boxes[0]["boxes"][0].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert from_boxes[1]["boxes"].shape == (0, 4) and from_boxes[1]["labels"].dtype == torch.int64
    assert boxes_from_instances(inst).shape == (2, 5)


def test_boxes_are_clipped_to_the_patch_and_bad_classes_refused():
    images = torch.zeros(1, 1, 32, 32)
    rows = [np.array([[-5, 10, 8, 40, 1], [33, 5, 40, 9, 1]], np.float32)]  # the second lies outside
    target = batch_box_targets(LossInputs(images=images, targets=None, boxes=rows), 2)[0]
    assert target["boxes"].tolist() == [[10, 0, 32, 8]]
    with pytest.raises(InputError, match="class 2"):
        batch_box_targets(LossInputs(images=images, targets=None, boxes=[np.array([[1, 1, 9, 9, 2]])]), 2)


@pytest.mark.slow
@pytest.mark.parametrize("family", BOX_FAMILIES)
def test_checkpoint_round_trip_predicts_the_same_rows(family, tmp_path):
    torch.manual_seed(1)
    spec = spec_of(family)
    model, _ = build_model(spec)
    scores_near_half(model)
    save_checkpoint(tmp_path / "m.pt", model, CheckpointMeta(model=spec, label_mode="instances", patch=64))
    ckpt = load_checkpoint(tmp_path / "m.pt")
    assert ckpt.spec == spec and ckpt.spec.family_entry.kind == "boxes"
    chw, _ = two_discs()
    image = np.stack([chw[0], chw[0, ::-1]])  # a (Z, Y, X) stack: planes tagged in the rows
    lm = load_model(tmp_path / "m.pt", "cpu")
    pred = drive(iter_predict_image(lm, image, "ZYX", tile=64, score_threshold=0.3))
    assert pred.kind == "boxes" and pred.labels.shape == image.shape and not pred.labels.any()
    assert pred.boxes and {r["plane"] for r in pred.boxes} <= {"0", "1"}
    assert all(r["score"] >= 0.3 and 0 <= r["y0"] < r["y1"] <= 64 and r["class"] == 1 for r in pred.boxes)
    assert len([r for r in pred.boxes if r["plane"] == "0"]) <= 20  # detections_per_img, one tile per plane
    again = drive(iter_predict_image(load_model(tmp_path / "m.pt", "cpu"), image, "ZYX", tile=64,
                                score_threshold=0.3))
    assert again.boxes == pred.boxes


@pytest.mark.parametrize("family", BOX_FAMILIES)
def test_at_least_2000_detections_per_image_by_default(family):
    model, _ = build_model(ModelSpec(family=family, arch=get_family(family).default_arch))
    det = model.detector
    limit = det.roi_heads.detections_per_img if hasattr(det, "roi_heads") else det.detections_per_img
    assert limit >= 2000
    if hasattr(det, "roi_heads"):  # the box head can return no more boxes than region proposals
        assert det.rpn._post_nms_top_n["testing"] >= 2000
    else:
        assert det.topk_candidates >= 2000
    small, _ = build_model(spec_of(family, detections_per_img=5))
    small.eval()
    scores_near_half(small)
    with torch.no_grad():
        assert len(small(torch.rand(1, 1, 64, 64))[0]["boxes"]) <= 5


@pytest.mark.parametrize("family", BOX_FAMILIES)
def test_a_stored_option_out_of_range_is_refused_on_load(family, tmp_path):
    spec = spec_of(family)
    model, _ = build_model(spec)
    meta = CheckpointMeta(model=spec, label_mode="instances", patch=64).to_dict()
    meta["model"]["options"]["detections_per_img"] = 10**9
    save_checkpoint(tmp_path / "bad.pt", model, meta)
    with pytest.raises(InputError, match="detections_per_img"):
        load_checkpoint(tmp_path / "bad.pt")
    meta["model"]["options"] = {"anchor_sizes": [8, 16, 32]}  # one size per FPN level: five
    save_checkpoint(tmp_path / "bad.pt", model, meta)
    with pytest.raises(InputError, match="anchor_sizes"):
        load_checkpoint(tmp_path / "bad.pt")


def _row(y0, x0, y1, x1, cls, score):
    return [y0, x0, y1, x1, cls, score]


def test_an_object_on_a_tile_border_is_reported_once():
    # a (64, 100) plane in two 64 px tiles: origins x = 0 and 36, cores x in [0, 50) and [50, 100)
    plan = TilePlan.fixed((64, 100), 64, 0.25)
    assert plan.origins() == [(0, 0), (0, 36)] and plan.cores() == [((0, 64), (0, 50)), ((0, 64), (50, 100))]
    (o1, o2), (c1, c2) = plan.origins(), plan.cores()
    left = np.array([
        _row(10, 40, 30, 60, 1, 0.9),  # object A across the core border, centre x 50: the right tile's
        _row(40, 39, 50, 60, 1, 0.8),  # object B seen by the left tile, centre x 49.5: the left tile's
        _row(5, 2, 15, 12, 1, 0.7),  # object C, well inside the left core
    ], np.float32)
    right = np.array([
        _row(10, 4, 30, 24, 1, 0.6),  # object A again (plane x 40..60): kept, as its centre is in this core
        _row(40, 5, 50, 25, 1, 0.95),  # object B again, plane x 41..61, centre 51: its own core too
        _row(40, 5, 50, 25, 2, 0.5),  # a class-2 box in the same place: another class, kept
    ], np.float32)
    rows = merge_tile_boxes([(o1, c1, left), (o2, c2, right)])
    got = [(r["y0"], r["x0"], r["y1"], r["x1"], r["class"], r["score"]) for r in rows]
    # A once (from the right tile); B once, the better of its two views (IoU 19/22 > 0.5); C; the class-2 box
    assert got == [(40.0, 41.0, 50.0, 61.0, 1, 0.95), (5.0, 2.0, 15.0, 12.0, 1, 0.7),
                   (10.0, 40.0, 30.0, 60.0, 1, 0.6), (40.0, 41.0, 50.0, 61.0, 2, 0.5)]


def test_merging_keeps_neighbours_that_barely_touch():
    core = ((0, 64), (0, 64))
    tile = np.array([_row(0, 0, 10, 10, 1, 0.9), _row(0, 8, 10, 18, 1, 0.8)], np.float32)  # IoU 0.11
    assert len(merge_tile_boxes([((0, 0), core, tile)])) == 2
    assert merge_tile_boxes([((0, 0), core, np.zeros((0, 6), np.float32))]) == []


def test_stock_weights_absent_offline_leave_a_clear_note(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    spec = ModelSpec(family="retinanet", arch="retinanet_resnet50_fpn")
    model, note = build_model(spec, "coco")
    assert "retinanet_resnet50_fpn_coco" in note and "not in the torch cache" in note and "random" in note
    _, note = build_model(spec_of("fcos"), "auto")  # the ResNet-18 architecture: no COCO weights, a backbone
    assert "resnet18" in note and "random" in note
    # a state dict file (one of ours) is loaded into a fresh model, tensor for tensor
    torch.save(model.state_dict(), tmp_path / "w.pth")
    again, note = build_model(spec, str(tmp_path / "w.pth"))
    assert note.startswith("weights from")
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_train_learns_a_box_family_from_instance_labels(tmp_path):
    from napari_seglab.core.synthetic import make_nuclei
    from napari_seglab.core.train import TrainConfig, iter_train

    image, instances = make_nuclei((64, 64), seed=3)
    config = TrainConfig(family="retinanet", label_mode="instances", epochs=1, steps_per_epoch=2, patch=64,
                         batch_size=2, device="cpu", pretrained=None, model_out=str(tmp_path / "r.pt"),
                         save_last=False)
    drive(iter_train([image], [instances], config))
    ckpt = load_checkpoint(tmp_path / "r.pt")
    assert ckpt.spec.family == "retinanet" and ckpt.spec.arch == "retinanet_resnet18_fpn"
    pred = drive(iter_predict_image(load_model(tmp_path / "r.pt", "cpu"), image, score_threshold=0.0))
    assert pred.kind == "boxes" and not pred.labels.any()


@pytest.mark.slow
@pytest.mark.parametrize("family", ["fcos", "fasterrcnn"])
def test_train_learns_a_box_family_from_drawn_boxes_and_batch_counts_them(family, tmp_path):
    """The whole path a user takes: box rows (as a Shapes layer or CSV gives them) -> train -> predict boxes."""
    from napari_seglab.core.labels import label_box_rows
    from napari_seglab.core.synthetic import make_nuclei
    from napari_seglab.core.train import TrainConfig, iter_train

    image, instances = make_nuclei((96, 96), seed=4)
    rows = label_box_rows(instances, "YX", "instances")
    config = TrainConfig(family=family, label_mode="boxes", epochs=1, steps_per_epoch=2, patch=64, batch_size=2,
                         device="cpu", model_out=str(tmp_path / "d.pt"), save_last=False)
    result = drive(iter_train([image], [None], config, boxes=[rows]))
    assert result.steps == 2
    ckpt = load_checkpoint(tmp_path / "d.pt")
    assert ckpt.spec.family == family and ckpt.label_mode == "boxes"
    pred = drive(iter_predict_image(load_model(tmp_path / "d.pt", "cpu"), image, score_threshold=0.0))
    assert pred.kind == "boxes" and not pred.labels.any()
    assert all(0 <= r["y0"] < r["y1"] <= 96 and 0 <= r["x0"] < r["x1"] <= 96 for r in pred.boxes)
