"""Dice, IoU and instance matching on small hand-drawn label images."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_seglab.core.errors import InputError
from napari_seglab.core.evaluate import (
    class_dice,
    dice,
    iou,
    match_instances,
    mean_dice,
    per_class_dice,
)


def _squares(*boxes, shape=(40, 40), dtype=np.int32):
    """Label image with object k+1 filling boxes[k] = (y0, x0, y1, x1)."""
    out = np.zeros(shape, dtype)
    for k, (y0, x0, y1, x1) in enumerate(boxes, start=1):
        out[y0:y1, x0:x1] = k
    return out


def _check(result, t, tp, fp, fn):
    s = f"{int(round(t * 100))}"
    assert result[f"tp_{s}"] == tp
    assert result[f"fp_{s}"] == fp
    assert result[f"fn_{s}"] == fn
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    assert result[f"precision_{s}"] == pytest.approx(prec)
    assert result[f"recall_{s}"] == pytest.approx(rec)
    assert result[f"f1_{s}"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert result[f"ap{s}"] == pytest.approx(tp / (tp + fp + fn))


def test_dice_iou_hand_values():
    a = np.zeros((4, 4), np.uint8)
    b = np.zeros((4, 4), np.uint8)
    a[0, :2] = 1  # 2 px
    b[0, 1:4] = 3  # 3 px, overlap 1
    assert dice(a, b) == pytest.approx(2 * 1 / 5)
    assert iou(a, b) == pytest.approx(1 / 4)
    empty = np.zeros((4, 4), np.uint8)
    assert dice(empty, empty) == 1.0
    assert iou(empty, empty) == 1.0
    assert dice(a, empty) == 0.0


def test_per_class_dice_with_ignore():
    truth = np.array([[0, 1, 1, 2], [0, 0, 2, 2]])
    pred = np.array([[0, 1, 2, 2], [1, 0, 2, 2]])
    scores = per_class_dice(pred, truth, 3)
    assert scores == pytest.approx([2 * 2 / 5, 2 * 1 / 4, 2 * 3 / 7])
    # Ignore every pixel where truth is 0: class 0 is then absent from both, and has no score.
    scores = per_class_dice(pred, truth, 3, ignore=0)
    assert scores == pytest.approx([np.nan, 2 * 1 / 3, 2 * 3 / 7], nan_ok=True)
    mask = np.zeros(truth.shape, bool)
    mask[0, 2] = True
    assert per_class_dice(pred, truth, 3, ignore=mask)[1] == pytest.approx(2 * 1 / 3)
    assert np.isnan(per_class_dice(pred, truth, 4)[3])


def test_one_dice_policy_for_empty_classes():
    """In neither: no score (NaN), left out of a mean; in one only: 0; a mean of nothing scored: 1."""
    empty, some = np.zeros((3, 4), bool), np.eye(3, 4, dtype=bool)
    assert np.isnan(class_dice(empty, empty))
    assert class_dice(empty, some) == class_dice(some, empty) == 0.0
    assert class_dice(some, some) == 1.0
    assert mean_dice([np.nan, 0.5, 1.0]) == pytest.approx(0.75)
    assert mean_dice([np.nan, np.nan]) == mean_dice([]) == 1.0
    assert mean_dice([0.0, np.nan]) == 0.0
    # the foreground Dice and the per-class Dice read the same policy
    assert dice(empty, empty) == mean_dice([class_dice(empty, empty)]) == 1.0
    assert dice(empty, some) == dice(some, empty) == 0.0
    per = per_class_dice(some.astype(int), np.zeros((3, 4), int), 3)
    assert per[0] == pytest.approx(2 * 9 / 21) and per[1] == 0.0 and np.isnan(per[2])
    assert mean_dice(per) == pytest.approx((2 * 9 / 21) / 2)


def test_perfect_match():
    truth = _squares((0, 0, 10, 10), (20, 20, 30, 30), (0, 30, 5, 40))
    pred = truth * 7  # other ids, same objects
    r = match_instances(pred.astype(np.uint16), truth)
    for t in (0.5, 0.75, 0.9):
        _check(r, t, 3, 0, 0)
    assert r["ap50"] == 1.0
    assert r["n_pred"] == r["n_true"] == 3
    assert r["dice"] == r["iou"] == 1.0
    assert r["mean_matched_iou"] == pytest.approx(1.0)


def test_split_object():
    truth = _squares((0, 0, 10, 10), (20, 20, 30, 30))
    # Object 1 split 6/4 columns: halves have IoU 0.6 and 0.4 with it.
    pred = _squares((0, 0, 10, 6), (0, 6, 10, 10), (20, 20, 30, 30))
    r = match_instances(pred, truth)
    _check(r, 0.5, tp=2, fp=1, fn=0)
    _check(r, 0.75, tp=1, fp=2, fn=1)
    assert r["ap50"] == pytest.approx(2 / 3)
    assert r["ap75"] == pytest.approx(1 / 4)
    assert r["mean_matched_iou_50"] == pytest.approx((0.6 + 1.0) / 2)


def test_merged_objects():
    truth = _squares((0, 0, 10, 10), (0, 10, 10, 20), (30, 30, 38, 38))
    pred = _squares((0, 0, 10, 20), (30, 30, 38, 38))
    # Merged object has IoU exactly 0.5 with each half: one of them matches at 0.5.
    r = match_instances(pred, truth, thresholds=(0.5, 0.6))
    _check(r, 0.5, tp=2, fp=0, fn=1)
    _check(r, 0.6, tp=1, fp=1, fn=2)
    assert r["ap50"] == pytest.approx(2 / 3)
    assert r["precision_50"] == 1.0
    assert r["recall_50"] == pytest.approx(2 / 3)
    assert r["f1_50"] == pytest.approx(0.8)


def test_missed_object_and_false_positive():
    truth = _squares((0, 0, 10, 10), (20, 20, 30, 30))
    missed = _squares((0, 0, 10, 10))
    r = match_instances(missed, truth)
    _check(r, 0.5, tp=1, fp=0, fn=1)
    assert r["ap50"] == 0.5
    assert r["precision_50"] == 1.0 and r["recall_50"] == 0.5

    extra = _squares((0, 0, 10, 10), (20, 20, 30, 30), (35, 0, 40, 5))
    r = match_instances(extra, truth)
    _check(r, 0.5, tp=2, fp=1, fn=0)
    assert r["ap50"] == pytest.approx(2 / 3)
    assert r["precision_50"] == pytest.approx(2 / 3) and r["recall_50"] == 1.0


def test_shifted_object_thresholds():
    truth = _squares((0, 0, 10, 10))
    pred = _squares((0, 2, 10, 12))  # overlap 80, union 120 -> IoU 2/3
    r = match_instances(pred, truth)
    _check(r, 0.5, 1, 0, 0)
    _check(r, 0.75, 0, 1, 1)
    _check(r, 0.9, 0, 1, 1)
    assert r["mean_matched_iou"] == pytest.approx(2 / 3)


def test_empty_prediction_and_both_empty():
    truth = _squares((0, 0, 10, 10), (20, 20, 30, 30))
    empty = np.zeros_like(truth)
    r = match_instances(empty, truth)
    _check(r, 0.5, tp=0, fp=0, fn=2)
    assert r["ap50"] == 0.0 and r["precision_50"] == 0.0 and r["dice"] == 0.0
    r = match_instances(empty, empty)
    assert r["ap50"] == 1.0 and r["f1_50"] == 1.0 and r["n_true"] == 0
    assert r["mean_matched_iou"] == 0.0


def test_ambiguous_pairs_use_largest_matching():
    # Two predictions each reach IoU >= 0.3 with both truths; the one-to-one
    # matching must pair them crosswise to match both.
    truth = np.zeros((1, 10), np.int32)
    truth[0, :5] = 1
    truth[0, 5:] = 2
    pred = np.zeros((1, 10), np.int32)
    pred[0, :3] = 1
    pred[0, 3:] = 2
    r = match_instances(pred, truth, thresholds=(0.25,))
    assert r["tp_25"] == 2 and r["ap25"] == 1.0


def test_nd_labels_any_dtype_and_json():
    truth = np.zeros((4, 8, 8), np.uint8)
    truth[1:3, 1:4, 1:4] = 5
    truth[0:2, 5:8, 5:8] = 9
    pred = truth.astype(np.int64)
    pred[pred == 9] = 2
    r = match_instances(pred, truth, thresholds=(0.5, 0.505))
    assert r["ap50"] == 1.0 and r["ap50p5"] == 1.0
    json.dumps(r)  # plain Python numbers only


def test_bad_input():
    a = np.zeros((4, 4), np.int32)
    with pytest.raises(InputError):
        match_instances(a, np.zeros((4, 5), np.int32))
    with pytest.raises(InputError):
        match_instances(a.astype(np.float32), a)
    with pytest.raises(InputError):
        match_instances(a - 1, a)
    with pytest.raises(InputError):
        match_instances(a, a, thresholds=(0.0,))
    with pytest.raises(ValueError):  # InputError is a ValueError
        dice(a, np.zeros(3))


def test_many_objects_fast():
    rng = np.random.default_rng(0)
    truth = np.arange(1, 4001, dtype=np.int32).reshape(40, 100).repeat(8, 0).repeat(8, 1)
    pred = truth.copy()
    pred[rng.random(pred.shape) < 0.1] = 0
    r = match_instances(pred, truth)
    assert r["n_true"] == 4000 and r["tp_50"] == 4000
