"""Training box detectors from box rows and instance labels (a fake tiny box family, see boxfamily.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from boxfamily import Recorder, bright_squares, register

from napari_seglab.core import api
from napari_seglab.core.errors import InputError
from napari_seglab.core.events import Message
from napari_seglab.core.models import load_checkpoint
from napari_seglab.core.predict import load_model
from napari_seglab.core.train import TrainConfig

GRID = tuple((8 + 30 * (k // 7), 8 + 30 * (k % 7), 12) for k in range(21))  # 3 rows of 7 squares


def config(**kw) -> TrainConfig:
    values = {"label_mode": "boxes", "family": "boxnet", "epochs": 2, "steps_per_epoch": 3, "patch": 32,
              "batch_size": 4, "device": "cpu", "threads": 1, "seed": 0, **kw}
    return TrainConfig(**values)


@pytest.fixture
def recorder(monkeypatch):
    rec = Recorder()
    register(monkeypatch, rec)
    return rec


def check_patches(batches, threshold_fraction=0.5):
    """Every box of every recorded patch holds bright pixels, and every whole bright square has a box."""
    from scipy import ndimage as ndi

    whole = 0
    for images, boxes in batches:
        for img, b in zip(images, boxes, strict=True):
            patch = img[0] - np.median(img[0])
            bright = patch > threshold_fraction * patch.max() if patch.max() > 0.3 else np.zeros(patch.shape, bool)
            for y0, x0, y1, x1, cls in b:
                assert cls >= 1 and 0 <= y0 < y1 <= img.shape[-2] and 0 <= x0 < x1 <= img.shape[-1]
                inside = bright[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))]
                assert inside.mean() > 0.5  # the box sits on its square, not beside it
            labels, _ = ndi.label(bright)
            for sl in ndi.find_objects(labels):
                ys, xs = sl
                if ys.start > 0 and xs.start > 0 and ys.stop < img.shape[-2] and xs.stop < img.shape[-1] \
                        and (ys.stop - ys.start) * (xs.stop - xs.start) >= 16:
                    whole += 1
                    assert any(y0 - 1 <= ys.start and x0 - 1 <= xs.start and y1 + 1 >= ys.stop and x1 + 1 >= xs.stop
                               for y0, x0, y1, x1, _ in b), (sl, b)
    return whole


def test_trains_from_box_rows_and_the_boxes_reach_the_loss_like_the_image(recorder, tmp_path):
    img, rows = bright_squares()
    out = tmp_path / "boxes.pt"
    events = []
    result = api.train([img], None, config(model_out=str(out), epochs=3, scale_jitter=1.3), boxes=[rows],
                       on_event=events.append)
    assert result.steps == 9 and len(recorder.batches) == 9
    assert sum(len(b) for _, boxes in recorder.batches for b in boxes) > 0
    assert check_patches(recorder.batches) > 3
    texts = [e.text for e in events if isinstance(e, Message)]
    assert any("3 boxes in 1 annotated region" in t for t in texts)
    assert any("fewer than 10 boxes" in t and "training loss" in t for t in texts)  # no hold-out, and why
    # the checkpoint is on disk, safe to load, and knows it is a box model
    ckpt = load_checkpoint(out)
    assert ckpt.spec.family == "boxnet" and ckpt.label_mode == "boxes" and ckpt.spec.n_classes == 2
    assert ckpt.info.class_names == ("background", "object")
    loaded = load_model(out, "cpu")
    for k, v in loaded.model.state_dict().items():
        torch.testing.assert_close(v, result.checkpoint.state_dict[k])


def test_trains_from_instance_labels_one_box_per_object(recorder):
    img, rows = bright_squares()
    inst = np.zeros(img.shape, np.uint16)
    for k, r in enumerate(rows, 1):
        inst[r["y0"]:r["y1"], r["x0"]:r["x1"]] = k
    result = api.train([img], [inst], config(label_mode="instances", patch=64))
    assert result.checkpoint.label_mode == "instances" and result.checkpoint.spec.n_classes == 2
    assert check_patches(recorder.batches) > 3
    assert all(b[:, 4].tolist() == [1.0] * len(b) for _, boxes in recorder.batches for b in boxes)


def test_box_classes_become_model_classes(recorder):
    img, rows = bright_squares()
    rows[1]["class"] = 3
    result = api.train([img], None, config(), boxes=[rows])
    assert result.checkpoint.spec.n_classes == 4
    assert result.checkpoint.info.class_names == ("background", "class 1", "class 2", "class 3")
    assert {3.0} <= {float(c) for _, boxes in recorder.batches for b in boxes for c in b[:, 4]} <= {1.0, 3.0}


def test_the_annotated_area_is_respected(recorder):
    """A bright square outside the area (unboxed) is never shown to the loss."""
    img, rows = bright_squares(shape=(96, 160))
    img[20:40, 130:150] = 5000.0  # an unmarked object, far brighter than the boxed ones
    area = np.zeros(img.shape, np.uint8)
    area[:, :110] = 1
    api.train([img], [area], config(epochs=4), boxes=[rows])
    for images, _ in recorder.batches:
        assert images.max() < 5  # the boxed squares normalise to about 1; the outside one would be far above


def test_validation_box_ap_is_recorded_and_the_best_model_kept(recorder, tmp_path):
    img, rows = bright_squares(shape=(96, 224), squares=GRID)
    events = []
    result = api.train([img], None, config(epochs=4, model_out=str(tmp_path / "m.pt")), boxes=[rows],
                       on_event=events.append)
    assert any("validation: box AP@0.5 on" in e.text for e in events if isinstance(e, Message))
    history = result.history
    assert len(history) == 4 and all(r["val_ap50"] is not None and 0 <= r["val_ap50"] <= 1 for r in history)
    assert all(r["val_dice"] is None for r in history)
    metrics = result.checkpoint.info.metrics
    best = history[metrics["epoch"] - 1]
    assert metrics["val_ap50"] == best["val_ap50"]  # the kept model is the epoch with the best AP (ties: lower loss)
    assert round(best["val_ap50"], 3) == max(round(r["val_ap50"], 3) for r in history)
    # the bright-region stand-in finds every held-out square once its score passes: AP is high
    assert max(r["val_ap50"] for r in history) > 0.9
    on_disk = load_checkpoint(tmp_path / "m.pt")
    assert on_disk.info.metrics["val_ap50"] == metrics["val_ap50"]
    assert {e.val_dice for e in events if type(e).__name__ == "EpochEnd"} == {r["val_ap50"] for r in history}


def test_a_stack_trains_on_the_planes_its_boxes_name(recorder):
    img, rows = bright_squares()
    stack = np.stack([np.random.default_rng(1).normal(100, 5, img.shape).astype(np.float32), img, img])
    events = []
    api.train([stack], None, config(), boxes=[[{**r, "plane": "1"} for r in rows]], axes=["ZYX"],
              on_event=events.append)
    assert any("3 boxes in 1 annotated region" in e.text for e in events if isinstance(e, Message))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"family": "unet"}, "learns from painted labels, not boxes; choose a box detector family"),
    ({"label_mode": "scribbles"}, "needs boxes or 'instances' labels"),
])
def test_wrong_family_or_mode_is_refused(recorder, kwargs, message):
    img, rows = bright_squares()
    with pytest.raises(InputError, match=message):
        api.train([img], [np.ones(img.shape, np.uint8)], config(**kwargs), boxes=[rows])


def test_bad_boxes_are_refused_naming_the_row(recorder):
    img, rows = bright_squares()
    outside = [*rows, {"y0": 200, "x0": 10, "y1": 220, "x1": 20}]
    with pytest.raises(InputError, match=r"boxes of image 1, box 4: the box .* lies outside the image \(96 x 128"):
        api.train([img], None, config(), boxes=[outside])
    with pytest.raises(InputError, match=r"box 1: plane '3' does not exist; image 1 is a 2D image"):
        api.train([img], None, config(), boxes=[[{**rows[0], "plane": "3"}]])
    stack = np.stack([img, img])
    with pytest.raises(InputError, match=r"box 2: plane '2' does not exist; image 1 is a stack of 2 planes \(Z\)"):
        api.train([stack], None, config(), boxes=[[{**rows[0], "plane": "0"}, {**rows[1], "plane": "2"}]],
                  axes=["ZYX"])
    with pytest.raises(InputError, match="needs boxes"):
        api.train([img], None, config(), boxes=None)
    with pytest.raises(InputError, match="1 image\\(s\\) but 2 box list"):
        api.train([img], None, config(), boxes=[rows, rows])
    with pytest.raises(InputError, match="box 1: empty box"):
        api.train([img], None, config(), boxes=[[{"y0": 5, "x0": 5, "y1": 5, "x1": 9}]])


def test_a_box_sticking_out_is_clipped(recorder):
    img, rows = bright_squares()
    rows[0].update(y0=-5, x0=-3)
    from napari_seglab.core.train import prepare_box_data

    samples, *_ = prepare_box_data([img], None, [rows], "boxes")
    np.testing.assert_array_equal(samples[0].boxes[0], [0, 0, 24, 26, 1])


def test_the_model_kept_is_the_one_with_the_best_validation_ap(recorder, monkeypatch):
    """Scripted AP per epoch (0.2, 0.8, 0.5): the kept weights are those of epoch 2, whatever the loss did."""
    from napari_seglab.core.train import BoxValidator

    scripted, seen = [0.2, 0.8, 0.5], []

    def score(self, model, meta, device, mode="boxes"):
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return scripted[len(seen) - 1], []

    monkeypatch.setattr(BoxValidator, "score", score)
    img, rows = bright_squares(shape=(96, 224), squares=GRID)
    result = api.train([img], None, config(epochs=3), boxes=[rows])
    assert [r["val_ap50"] for r in result.history] == scripted
    assert result.checkpoint.info.metrics["epoch"] == 2 and result.checkpoint.info.metrics["val_ap50"] == 0.8
    for k, v in seen[1].items():
        torch.testing.assert_close(result.checkpoint.state_dict[k], v)
    assert any(not torch.equal(seen[2][k], v) for k, v in seen[1].items())  # epoch 3 had moved on


def test_stop_keeps_the_best_box_model(recorder, tmp_path):
    """Stop during epoch 3: the run ends at once and the file holds the best model of the epochs done."""
    import threading

    from napari_seglab.core.events import TrainStep

    stop = threading.Event()

    def on_event(event):
        if isinstance(event, TrainStep) and event.step == 7:
            stop.set()

    img, rows = bright_squares(shape=(96, 224), squares=GRID)
    result = api.train([img], None, config(epochs=5, model_out=str(tmp_path / "m.pt")), boxes=[rows], stop=stop,
                       on_event=on_event)
    assert result.stopped and result.steps == 7 and len(result.history) == 3
    on_disk = load_checkpoint(tmp_path / "m.pt")
    assert on_disk.info.metrics["epoch"] == result.checkpoint.info.metrics["epoch"]
    assert on_disk.info.metrics["val_ap50"] is not None
