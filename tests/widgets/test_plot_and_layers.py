"""The live training plot and the layer helpers of the annotate-train-correct loop."""

from __future__ import annotations

import numpy as np

from napari_seglab import _layers
from napari_seglab._widgets import _common
from napari_seglab._widgets._plot import MAX_POINTS, Series, TrainingPlot


def test_a_long_series_is_averaged_down_to_a_bounded_number_of_points():
    series = Series(limit=100)
    for step in range(1, 10_001):
        series.add(step, float(step % 2))  # alternating 0/1 averages to 0.5
    points = series.visible()
    assert len(points) <= 101 and series.count == 10_000 and series.last == (10_000.0, 0.0)
    assert points[0][0] < 100 and points[-1][0] > 9_900
    assert all(abs(y - 0.5) < 1e-9 for _x, y in points)
    series.add(10_001, float("nan"))  # a diverged step is not drawn
    assert series.count == 10_000


def test_the_plot_keeps_the_last_values_and_paints(qtbot):
    plot = TrainingPlot()
    qtbot.addWidget(plot)
    plot.resize(320, 220)
    plot.add_dice(0, 0, None)  # an annotation too small for a hold-out says so
    assert "no validation" in plot._dice_title()
    for step in range(1, 2001):
        plot.add_loss(step, 1.0 / step)
    plot.add_dice(1000, 1, 0.5, (0.9, 0.4, 0.2))
    plot.add_dice(2000, 2, 0.7, (0.95, 0.6, 0.55))
    assert len(plot.loss.visible()) <= MAX_POINTS + 1 and plot.loss.last == (2000.0, 1 / 2000)
    assert plot.smooth.last[1] < 0.01 and plot.best == (0.7, 2)
    assert len(plot.class_dice) == 3 and plot.class_dice[2].last == (2000.0, 0.55)
    assert "val Dice 0.700" in plot._dice_title() and "loss 0.0005" in plot._loss_title()
    assert [text for text, _color in plot._class_legend()] == ["0: 0.95", "1: 0.60", "2: 0.55"]
    image = plot.grab().toImage()  # paints without error
    assert image.width() == 320
    plot.add_dice(2500, 3, 0.8, (0.9, 0.7))  # two classes: only the mean is drawn
    plot.clear()
    assert plot.loss.count == 0 and plot.best is None and not plot.class_dice and not plot.marks


def test_a_continued_run_starts_a_new_dice_line(qtbot):
    plot = TrainingPlot()
    qtbot.addWidget(plot)
    plot.resize(320, 220)
    plot.add_dice(25, 1, 0.35)
    plot.add_dice(50, 2, 0.348)
    plot.mark(50)  # Continue: the next Dice values come from another held-out set
    plot.add_dice(75, 3, 0.06)
    assert [p for p in plot.earlier_dice[0].visible()] == [(25.0, 0.35), (50.0, 0.348)]
    assert plot.dice.visible() == [(75.0, 0.06)]  # not joined to the earlier line
    assert plot.best == (0.06, 3) and "best 0.060" in plot._dice_title()
    assert plot.grab().toImage().width() == 320
    plot.clear()
    assert not plot.earlier_dice


def test_the_smoothed_loss_keeps_up_in_a_short_run(qtbot):
    plot = TrainingPlot()
    qtbot.addWidget(plot)
    # a short run: the loss halves over 20 steps (0.89 -> 0.44)
    for step in range(1, 21):
        plot.add_loss(step, 0.89 - (0.45 * (step - 1) / 19))
    assert abs(plot.smooth.last[1] - plot.loss.last[1]) < 0.05
    # a long noisy run is still smoothed: alternating 0/1 stays near 0.5
    plot.clear()
    for step in range(1, 2001):
        plot.add_loss(step, float(step % 2))
    assert abs(plot.smooth.last[1] - 0.5) < 0.1


def test_corrections_keep_unpredicted_planes_unannotated():
    prediction = np.zeros((3, 4, 5), np.int32)
    prediction[1, :2] = 7  # object ids of the plane that was predicted
    scribbles = _common.correction_labels(prediction, "instances", "scribbles", planes=[(1,)])
    assert scribbles.shape == prediction.shape
    assert np.all(scribbles[0] == 0) and np.all(scribbles[2] == 0)  # 0 = not annotated
    assert set(np.unique(scribbles[1])) == {1, 2}
    assert np.array_equal(_common.correction_labels(prediction, "instances", "instances"), prediction)
    classes = _common.correction_labels(np.array([[0, 2]]), "semantic", "classes")
    assert classes.tolist() == [[0, 2]]


def test_compact_labels_picks_a_dtype_napari_draws_directly():
    assert _common.compact_labels(np.array([0, 3], np.int32)).dtype == np.uint16
    assert _common.compact_labels(np.array([0, 3], np.int64), np.uint8).dtype == np.uint8
    assert _common.compact_labels(np.array([0, 70_000], np.int32)).dtype == np.int32
    assert _common.compact_labels(np.array([-1, 3], np.int32)).dtype == np.int32


def test_matching_pairs_follow_names_and_skip_model_output(make_napari_viewer):
    viewer = make_napari_viewer()
    a = viewer.add_image(np.zeros((8, 8)), name="a")
    b = viewer.add_image(np.zeros((8, 8)), name="b c")
    a_scribbles = viewer.add_labels(np.zeros((8, 8), np.uint8), name="a scribbles")
    bc_corrected = viewer.add_labels(np.zeros((8, 8), np.uint8), name="b c corrected")
    _layers.show_labels(viewer, np.zeros((8, 8), np.uint8), "a labels", role="prediction")
    viewer.add_labels(np.zeros((8, 8), np.uint8), name="z labels")  # no image called "z"
    pairs = _common.matching_pairs(viewer)
    assert [(image.name, labels.name) for image, labels in pairs] == [("a", "a scribbles"), ("b c", "b c corrected")]
    assert pairs[0][0] is a and pairs[1] == (b, bc_corrected) and pairs[0][1] is a_scribbles
