"""Box AP, precision, recall and count error against values worked out by hand."""

import numpy as np
import pytest

from napari_seglab.core.errors import InputError
from napari_seglab.core.evaluate import box_iou, box_scores


def _row(y0, x0, y1, x1, score=1.0):
    return {"y0": y0, "x0": x0, "y1": y1, "x1": x1, "score": score}


def test_box_iou_by_hand():
    # 10x10 boxes shifted by 5 in x: overlap 50, union 150
    assert box_iou(np.array([[0, 0, 10, 10]]), np.array([[0, 5, 10, 15], [20, 20, 30, 30]])).tolist() == \
        [[pytest.approx(1 / 3), 0.0]]


def test_perfect_detections_score_one():
    truth = [_row(0, 0, 10, 10), _row(20, 20, 30, 30)]
    s = box_scores([_row(0, 0, 10, 10, 0.9), _row(20, 20, 30, 30, 0.8)], truth)
    assert (s["ap50"], s["ap75"], s["ap"], s["precision"], s["recall"], s["f1"]) == (1, 1, 1, 1, 1, 1)
    assert s["count_error"] == 0


def test_ap_of_a_ranked_list_by_hand():
    # truth: 2 boxes. Ranked predictions: hit (0.9), false positive (0.8), hit (0.7).
    # precision/recall points: (1, 1/2), (1/2, 1/2), (2/3, 1); monotone precision: 1, 2/3, 2/3
    # AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    truth = [_row(0, 0, 10, 10), _row(20, 20, 30, 30)]
    pred = [_row(0, 0, 10, 10, 0.9), _row(50, 50, 60, 60, 0.8), _row(20, 20, 30, 30, 0.7)]
    s = box_scores(pred, truth, score_threshold=0.75)
    assert s["ap50"] == pytest.approx(5 / 6)
    # above 0.75: one hit, one false positive; one true box missed
    assert (s["tp"], s["fp"], s["fn"], s["n_pred"]) == (1, 1, 1, 2)
    assert s["precision"] == 0.5 and s["recall"] == 0.5 and s["count_error"] == 0


def test_ap75_and_coco_ap_fall_for_a_loose_box():
    truth = [_row(0, 0, 10, 10)]
    loose = [_row(0, 0, 10, 12)]  # IoU 100/120 = 0.833: a hit up to 0.8, a miss from 0.85
    s = box_scores(loose, truth)
    assert s["ap50"] == 1 and s["ap75"] == 1
    assert s["ap"] == pytest.approx(7 / 10)  # 0.5, 0.55, ..., 0.8 hit: 7 of 10 thresholds


def test_a_duplicate_counts_once():
    truth = [_row(0, 0, 10, 10)]
    s = box_scores([_row(0, 0, 10, 10, 0.9), _row(0, 0, 10, 10, 0.8)], truth)
    assert (s["tp"], s["fp"]) == (1, 1) and s["ap50"] == 1.0


def test_empty_cases_and_bad_boxes():
    assert box_scores([], [])["ap50"] == 1.0
    assert box_scores([], [_row(0, 0, 4, 4)])["recall"] == 0.0
    assert box_scores([_row(0, 0, 4, 4)], [])["precision"] == 0.0
    with pytest.raises(InputError, match="y1 >= y0"):
        box_scores([_row(5, 0, 4, 4)], [])
