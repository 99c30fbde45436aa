"""EvaluateWidget scoring boxes: two Shapes layers, a live score threshold, instance labels as truth, non-rectangles refused."""

from __future__ import annotations

import numpy as np
import pytest
from widget_helpers import WAIT_MS, click, dock


def _rect(y0, x0, y1, x1):
    return np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], float)


#: true boxes A, B, C (the same hand-checked pair as the CLI tests)
TRUTH = [_rect(0, 0, 10, 10), _rect(20, 20, 30, 30), _rect(40, 40, 50, 50)]
#: A exactly (0.9); B 2 px off (0.8, IoU 0.667); a box on nothing (0.7); C exactly (0.3)
PRED = [_rect(0, 0, 10, 10), _rect(20, 22, 30, 32), _rect(60, 60, 70, 70), _rect(40, 40, 50, 50)]
SCORES = [0.9, 0.8, 0.7, 0.3]


def _table(widget) -> dict:
    value = widget._table.value
    return {name: row[0] for name, row in zip(value["index"], value["data"], strict=True)}


def _boxes_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((80, 80), np.uint16), name="cells")
    truth = viewer.add_shapes(TRUTH, shape_type="rectangle", name="true boxes")
    pred = viewer.add_shapes(PRED, shape_type="rectangle", name="boxes",
                             features={"score": SCORES, "class": [1, 1, 1, 1]})
    return viewer, pred, truth


def _run(qtbot, widget, pred, truth):
    widget._prediction.value = pred
    widget._truth.value = truth
    click(widget._run)
    qtbot.waitUntil(lambda: not widget.busy and widget.scores is not None, timeout=WAIT_MS)
    return widget.scores


def test_two_shapes_layers_give_the_box_scores(make_napari_viewer, qtbot):
    viewer, pred, truth = _boxes_viewer(make_napari_viewer)
    widget = dock(viewer, "Evaluate")
    assert widget._threshold.value == 0.5

    scores = _run(qtbot, widget, pred, truth)

    assert scores["ap50"] == pytest.approx(11 / 12) and scores["ap75"] == pytest.approx(0.5)
    assert scores["ap"] == pytest.approx(2 / 3)
    rows = _table(widget)
    assert list(rows) == ["AP@0.5", "AP@0.75", "AP@[.5:.95]", "precision", "recall", "F1", "TP", "FP", "FN",
                          "predicted", "true", "count error"]
    assert (rows["AP@0.5"], rows["AP@0.75"], rows["AP@[.5:.95]"]) == ("0.917", "0.500", "0.667")
    assert (rows["precision"], rows["recall"], rows["F1"]) == ("0.667", "0.667", "0.667")
    assert (rows["TP"], rows["FP"], rows["FN"], rows["predicted"], rows["count error"]) == ("2", "1", "1", "3", "+0")
    assert "3 of 4 boxes in 'boxes'" in widget._summary.value
    assert widget.as_text().splitlines()[:2] == ["score threshold\t0.5", "AP@0.5\t0.917"]


def test_the_threshold_rescored_live(make_napari_viewer, qtbot):
    viewer, pred, truth = _boxes_viewer(make_napari_viewer)
    widget = dock(viewer, "Evaluate")
    _run(qtbot, widget, pred, truth)

    widget._threshold.value = 0.2  # the C box (0.3) now counts: TP 3, FP 1
    qtbot.waitUntil(lambda: not widget.busy and widget.scores is not None
                    and widget.scores["score_threshold"] == 0.2, timeout=WAIT_MS)
    rows = _table(widget)
    assert (rows["TP"], rows["FP"], rows["FN"], rows["predicted"], rows["count error"]) == ("3", "1", "0", "4", "+1")
    assert rows["recall"] == "1.000" and rows["AP@0.5"] == "0.917"  # AP uses every score: unchanged

    # two changes in a row (the second while the first rescoring may still run): the last one wins
    widget._threshold.value = 0.85
    widget._threshold.value = 0.95  # nothing scores this high
    qtbot.waitUntil(lambda: not widget.busy and widget.scores is not None
                    and widget.scores["score_threshold"] == 0.95, timeout=WAIT_MS)
    assert _table(widget)["predicted"] == "0" and _table(widget)["recall"] == "0.000"
    assert "0 of 4 boxes in 'boxes' score \u2265 0.95" in widget._summary.value


def test_instance_labels_as_the_truth(make_napari_viewer, qtbot):
    viewer, pred, _truth = _boxes_viewer(make_napari_viewer)
    labels = np.zeros((80, 80), np.uint16)
    labels[0:10, 0:10], labels[20:30, 20:30], labels[40:50, 40:50] = 1, 2, 3
    instances = viewer.add_labels(labels, name="instances")
    widget = dock(viewer, "Evaluate")

    scores = _run(qtbot, widget, pred, instances)

    assert scores["ap50"] == pytest.approx(11 / 12) and scores["n_true"] == 3


def test_an_ellipse_is_refused_with_a_notification_naming_the_layer(make_napari_viewer, errors):
    viewer, _pred, truth = _boxes_viewer(make_napari_viewer)
    drawn = viewer.add_shapes([_rect(0, 0, 10, 10), _rect(20, 20, 30, 30)], shape_type=["rectangle", "ellipse"],
                              name="drawn")
    widget = dock(viewer, "Evaluate")
    widget._prediction.value = drawn
    widget._truth.value = truth
    click(widget._run)
    assert not widget.busy and widget.scores is None
    assert len(errors) == 1 and "'drawn', shape 2" in errors[0] and "ellipse" in errors[0]
    assert "rectangle" in widget._summary.value and widget._run.enabled


def test_labels_prediction_against_boxes_is_refused(make_napari_viewer, errors):
    viewer, _pred, truth = _boxes_viewer(make_napari_viewer)
    viewer.add_labels(np.zeros((80, 80), np.uint8), name="pred labels")
    widget = dock(viewer, "Evaluate")
    widget._prediction.value = viewer.layers["pred labels"]
    widget._truth.value = truth
    click(widget._run)
    assert len(errors) == 1 and "'true boxes' holds boxes" in errors[0]
    assert not widget._threshold.enabled  # the threshold is for boxes only
    widget._prediction.value = viewer.layers["boxes"]
    assert widget._threshold.enabled


def test_a_stack_matches_boxes_within_their_plane(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    labels = np.zeros((3, 40, 40), np.uint16)
    labels[0, 5:15, 5:15], labels[2, 20:30, 10:20] = 1, 2
    instances = viewer.add_labels(labels, name="instances")

    def on(z, rect):
        return np.hstack([np.full((4, 1), float(z)), rect])

    # the right boxes on planes 0 and 2, and plane 0's box again on plane 1, where nothing is
    pred = viewer.add_shapes([on(0, _rect(5, 5, 15, 15)), on(2, _rect(20, 10, 30, 20)), on(1, _rect(5, 5, 15, 15))],
                             shape_type="rectangle", name="boxes", features={"score": [0.9, 0.8, 0.7]})
    widget = dock(viewer, "Evaluate")

    scores = _run(qtbot, widget, pred, instances)

    assert (scores["tp"], scores["fp"], scores["fn"]) == (2, 1, 0) and scores["ap50"] == 1.0
    assert set(scores["planes"]) == {"0", "1", "2"} and "over 3 planes" in widget._summary.value


def test_a_predict_dock_layer_is_scored_with_the_boxes_its_threshold_hides(make_napari_viewer, qtbot):
    from napari_seglab import _layers

    viewer, _pred, truth = _boxes_viewer(make_napari_viewer)
    rows = [{"y0": r[0, 0], "x0": r[0, 1], "y1": r[2, 0], "x1": r[2, 1], "class": 1, "score": s, "plane": ""}
            for r, s in zip(PRED, SCORES, strict=True)]
    shown = _layers.show_boxes(viewer, rows, "predicted boxes", score_threshold=0.75)
    assert len(shown.data) == 2  # the 0.7 and 0.3 boxes are hidden
    widget = dock(viewer, "Evaluate")

    scores = _run(qtbot, widget, shown, truth)

    assert scores["ap50"] == pytest.approx(11 / 12)  # as with all four boxes drawn
    assert (scores["tp"], scores["fp"], scores["fn"]) == (2, 1, 1)
