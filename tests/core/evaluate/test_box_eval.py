"""Box scores of stacks: pooled over planes (one ranking, matches only within a plane) and per plane."""

from __future__ import annotations

import numpy as np
import pytest

from napari_seglab.core.errors import InputError
from napari_seglab.core.evaluate import (
    box_scores,
    box_scores_by_plane,
    plane_key,
    pooled_box_scores,
)
from napari_seglab.core.labels import label_box_rows


def _box(y0, x0, y1, x1, plane="", score=None):
    row = {"y0": y0, "x0": x0, "y1": y1, "x1": x1, "class": 1, "plane": plane}
    if score is not None:
        row["score"] = score
    return row


#: plane 0 holds a true box at the top left, plane 1 one further down
TRUTH = [_box(0, 0, 10, 10, "0"), _box(20, 20, 30, 30, "1")]
#: the best-scoring box sits on plane 1 where plane 0's object is: a false positive there
PRED = [_box(0, 0, 10, 10, "1", 0.95), _box(0, 0, 10, 10, "0", 0.9), _box(20, 20, 30, 30, "1", 0.6)]


def test_pooling_matches_boxes_only_within_their_plane():
    scores = pooled_box_scores(PRED, TRUTH, score_threshold=0.5)
    # ranked hits over both planes: miss (0.95), hit (0.9), hit (0.6); 2 true boxes
    # precision 0, 1/2, 2/3 -> made monotone 2/3, 2/3, 2/3; recall 0, 1/2, 1 -> AP = 2/3 at every IoU
    assert scores["ap50"] == pytest.approx(2 / 3) and scores["ap"] == pytest.approx(2 / 3)
    assert (scores["tp"], scores["fp"], scores["fn"]) == (2, 1, 0)
    assert scores["precision"] == pytest.approx(2 / 3) and scores["recall"] == 1.0
    assert scores["f1"] == pytest.approx(0.8) and scores["count_error"] == 1 and scores["n_planes"] == 2
    # ignoring the planes, the 0.95 box would take plane 0's object: hits 1, 0, 1 and AP 5/6
    flat = [{**r, "plane": ""} for r in PRED]
    assert box_scores(flat, [{**r, "plane": ""} for r in TRUTH])["ap50"] == pytest.approx(5 / 6)


def test_per_plane_scores_and_the_threshold():
    result = box_scores_by_plane(PRED, TRUTH, score_threshold=0.7)
    assert set(result["planes"]) == {"0", "1"}
    assert result["planes"]["0"]["ap50"] == 1.0
    assert result["planes"]["1"]["ap50"] == pytest.approx(0.5)  # FP first, then the hit: precision 1/2 at recall 1
    # at 0.7 the 0.6 hit of plane 1 no longer counts; AP (over every score) does not change
    overall = result["overall"]
    assert (overall["tp"], overall["fp"], overall["fn"], overall["n_pred"]) == (1, 1, 1, 2)
    assert overall["ap50"] == pytest.approx(2 / 3)


def test_a_2d_image_pools_to_box_scores():
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 50, (12, 2))
    truth = [_box(y, x, y + 8, x + 8) for y, x in corners]
    pred = [_box(y + rng.normal(0, 1), x + rng.normal(0, 1), y + 8, x + 8, score=float(rng.random()))
            for y, x in corners[:9]] + [_box(70, 70, 80, 80, score=0.99)]
    pooled = pooled_box_scores(pred, truth, 0.3)
    plain = box_scores(pred, truth, 0.3)
    assert {k: pooled[k] for k in plain} == pytest.approx(plain)
    assert box_scores_by_plane(pred, truth, 0.3)["planes"] == {}


def test_truth_from_instance_labels_of_a_stack():
    labels = np.zeros((2, 40, 40), np.uint16)
    labels[0, 5:15, 5:15] = 1
    labels[1, 20:30, 10:20] = 2
    labels[1, 2:6, 30:38] = 3
    truth = label_box_rows(labels, "ZYX", "instances")
    assert sorted((r["plane"], r["y0"], r["x0"], r["y1"], r["x1"]) for r in truth) == [
        ("0", 5, 5, 15, 15), ("1", 2, 30, 6, 38), ("1", 20, 10, 30, 20)]
    pred = [_box(5, 5, 15, 15, "0", 0.9), _box(20, 10, 30, 20, "1", 0.8),
            _box(2, 30, 6, 38, "0", 0.7)]  # the right box on the wrong plane
    scores = pooled_box_scores(pred, truth, 0.5)
    assert (scores["tp"], scores["fp"], scores["fn"]) == (2, 1, 1)
    assert scores["ap50"] == pytest.approx(2 / 3)  # hits 1, 1, 0 of 3 true boxes: recall 1/3 + 1/3 at precision 1


def test_boxes_of_a_2d_image_and_of_a_stack_do_not_mix():
    with pytest.raises(InputError, match="same image"):
        pooled_box_scores([_box(0, 0, 5, 5, "")], [_box(0, 0, 5, 5, "2")])
    with pytest.raises(InputError, match="mix planes"):
        pooled_box_scores([_box(0, 0, 5, 5, ""), _box(0, 0, 5, 5, "1")], [])
    assert plane_key({"plane": "1,2"}) == (1, 2) and plane_key({"plane": 3}) == (3,) and plane_key({}) == ()


def test_nothing_predicted_nothing_true():
    scores = pooled_box_scores([], [], 0.5)
    assert scores["ap50"] == 1.0 and scores["f1"] == 1.0 and scores["n_planes"] == 0
    scores = pooled_box_scores([], TRUTH, 0.5)
    assert scores["ap"] == 0.0 and scores["recall"] == 0.0 and scores["fn"] == 2
