"""EvaluateWidget in a real viewer: hand-made labels with known scores, and a shape mismatch."""

from __future__ import annotations

import numpy as np
from widget_helpers import WAIT_MS, click, dock


def _objects() -> np.ndarray:
    """(40, 60) uint16: three 10x10 squares with ids 1, 2, 3."""
    labels = np.zeros((40, 60), np.uint16)
    labels[2:12, 2:12] = 1
    labels[20:30, 5:15] = 2
    labels[5:15, 40:50] = 3
    return labels


def _evaluate(qtbot, widget, prediction, truth):
    widget._prediction.value = prediction
    widget._truth.value = truth
    click(widget._run)
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    return widget.scores


def test_a_perfect_match_scores_one_everywhere(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    truth = viewer.add_labels(_objects(), name="truth")
    # the same objects under other ids still match perfectly
    renumbered = viewer.add_labels(np.where(_objects() > 0, _objects() + 10, 0).astype(np.int32), name="pred")
    widget = dock(viewer, "Evaluate")

    scores = _evaluate(qtbot, widget, renumbered, truth)

    assert scores["dice"] == 1.0 and scores["iou"] == 1.0 and scores["n_pred"] == scores["n_true"] == 3
    table = widget._table.value
    assert list(table["columns"]) == ["\u22650.5", "\u22650.75", "\u22650.9"]  # IoU thresholds
    rows = {name: list(row) for name, row in zip(table["index"], table["data"], strict=True)}
    for name in ("precision", "recall", "F1", "AP"):
        assert rows[name] == ["1.000"] * 3
    assert rows["TP"] == ["3"] * 3 and rows["FN"] == ["0"] * 3
    assert "Dice 1.000" in widget._summary.value and "IoU 1.000" in widget._summary.value
    assert widget._copy.enabled and widget.as_text().startswith("dice\t1.0000")


def test_a_missed_and_a_shrunken_object_lower_the_right_scores(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    truth = viewer.add_labels(_objects(), name="truth")
    partial = _objects()
    partial[partial == 3] = 0  # object 3 missed
    partial[2:12, 2:4] = 0  # object 1 keeps 80 of 100 pixels: IoU 0.8
    pred = viewer.add_labels(partial, name="pred")
    widget = dock(viewer, "Evaluate")

    scores = _evaluate(qtbot, widget, pred, truth)

    rows = {name: list(row) for name, row in zip(widget._table.value["index"], widget._table.value["data"], strict=True)}
    assert rows["TP"] == ["2", "2", "1"] and rows["FN"] == ["1", "1", "2"]
    assert rows["precision"] == ["1.000", "1.000", "0.500"]
    assert rows["AP"] == [f"{2 / 3:.3f}", f"{2 / 3:.3f}", f"{1 / 4:.3f}"]  # TP 1, FP 1, FN 2
    assert np.isclose(scores["dice"], 2 * 180 / (180 + 300))


def test_labels_of_different_shapes_are_refused_with_a_clear_message(make_napari_viewer, errors):
    viewer = make_napari_viewer()
    viewer.add_labels(_objects(), name="truth")
    viewer.add_labels(np.zeros((20, 20), np.uint8), name="small")
    widget = dock(viewer, "Evaluate")
    widget._prediction.value = viewer.layers["small"]
    widget._truth.value = viewer.layers["truth"]
    click(widget._run)
    assert not widget.busy and widget.scores is None
    assert len(errors) == 1 and "'small' has shape (20, 20) but 'truth' has shape (40, 60)" in errors[0]
    assert "same image" in widget._summary.value and widget._run.enabled


def test_prediction_and_truth_start_on_different_layers(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_labels(_objects(), name="nuclei_test_instances")
    viewer.add_labels(_objects(), name="cells scribbles")
    prediction = viewer.add_labels(_objects(), name="cells labels")
    prediction.metadata["seglab_role"] = "prediction"
    widget = dock(viewer, "Evaluate")
    assert widget._prediction.value is prediction
    assert widget._truth.value is viewer.layers["nuclei_test_instances"]


def test_an_error_clears_the_old_scores_and_counts_read_right(make_napari_viewer, qtbot, errors):
    viewer = make_napari_viewer()
    one = np.zeros((40, 60), np.uint16)
    one[2:12, 2:12] = 1
    truth = viewer.add_labels(one, name="truth")
    pred = viewer.add_labels(one.copy(), name="pred")
    viewer.add_labels(np.zeros((20, 20), np.uint8), name="small")
    widget = dock(viewer, "Evaluate")
    _evaluate(qtbot, widget, pred, truth)
    assert "1 object in 'pred', 1 object in 'truth'" in widget._summary.value
    assert widget._table.value["data"][0][0] == "1.000"

    widget._prediction.value = viewer.layers["small"]
    click(widget._run)
    assert errors and widget.scores is None and not widget._copy.enabled
    assert all(cell == "\u2013" for row in widget._table.value["data"] for cell in row)  # nothing stale


def test_scoring_scribbles_as_a_prediction_warns(make_napari_viewer, qtbot, monkeypatch):
    from napari.utils import notifications

    warned = []
    monkeypatch.setattr(notifications, "show_warning", lambda message: warned.append(str(message)))
    viewer = make_napari_viewer()
    truth = viewer.add_labels(_objects(), name="truth")
    strokes = np.zeros((40, 60), np.uint8)
    strokes[20, 30:40] = 1  # a background stroke
    strokes[6, 4:10] = 2  # a stroke inside an object
    paint = viewer.add_labels(strokes, name="paint")
    widget = dock(viewer, "Evaluate")
    _evaluate(qtbot, widget, paint, truth)
    assert warned and "'paint' looks like scribbles" in warned[0]
    assert "looks like scribbles" in widget._summary.value
    warned.clear()
    _evaluate(qtbot, widget, viewer.layers["truth"], viewer.layers["truth"])
    assert not warned
