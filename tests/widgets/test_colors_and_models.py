"""Class colours across layers, no stale layers, errors that name layers, and which model a continued run keeps."""

from __future__ import annotations

import numpy as np
import pytest
from widget_helpers import WAIT_MS, click, dock, image_and_scribbles, set_tiny_training

from napari_seglab._colors import class_color, legend_html, value_colors
from napari_seglab._widgets import _models
from napari_seglab._widgets._train_job import name_layers
from napari_seglab.core.synthetic import make_nuclei, make_scribbles


def _rgba(layer, value: int) -> np.ndarray:
    return np.round(layer.colormap.map([value])[0], 3)


def _hex_rgba(color: str) -> np.ndarray:
    from napari.utils.colormaps.standardize_color import transform_color

    return np.round(transform_color(color)[0], 3)


@pytest.fixture
def painted():
    """(160, 160) nuclei with 16 background and 16 nucleus strokes: enough for a validation hold-out."""
    image, instances = make_nuclei((160, 160), seed=3)
    return image, instances, make_scribbles(instances, seed=3, n_objects=16, n_background=16)


def test_colour_tables_follow_the_label_conventions():
    scribbles, semantic = value_colors("scribbles"), value_colors("semantic")
    assert scribbles[0] == semantic[0] == "transparent"
    assert scribbles[1] == class_color(0) and scribbles[2] == semantic[1] == class_color(1)
    assert scribbles[3] == semantic[2] != semantic[1]
    assert value_colors("instances") is None
    legend = legend_html("scribbles")
    assert f"color:{class_color(0)}" in legend and f"color:{class_color(1)}" in legend
    assert "1 = background" in legend and "2 = class 1" in legend


def test_a_class_has_one_colour_in_scribbles_prediction_and_correction(make_napari_viewer, qtbot, tmp_path,
                                                                       painted):
    viewer = make_napari_viewer()
    _image_layer, labels_layer = image_and_scribbles(viewer, painted)
    widget = dock(viewer, "Train")
    assert f"color:{class_color(1)}" in widget._legend.value  # the legend shows the colours
    set_tiny_training(widget, tmp_path / "model.pt")
    widget._preview.value = 0
    click(widget._controls.run_button)
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    click(widget._correct)

    prediction, corrected = viewer.layers["cells prediction"], viewer.layers["cells corrected"]
    nucleus, background = _hex_rgba(class_color(1)), _hex_rgba(class_color(0))
    # scribble 2 = nucleus = predicted 1 = corrected 2; scribble 1 = background = corrected 1
    assert np.array_equal(_rgba(labels_layer, 2), nucleus)
    assert np.array_equal(_rgba(prediction, 1), nucleus)
    assert np.array_equal(_rgba(corrected, 2), nucleus)
    assert np.array_equal(_rgba(labels_layer, 1), background) and np.array_equal(_rgba(corrected, 1), background)
    assert _rgba(prediction, 0)[3] == 0  # predicted background is not drawn


def test_the_predict_dock_colours_classes_like_the_train_dock(make_napari_viewer, qtbot, tiny_nuclei,
                                                              tiny_model):
    viewer = make_napari_viewer()
    viewer.add_image(tiny_nuclei[0], name="cells")
    predict = dock(viewer, "Predict")
    predict.set_checkpoint(tiny_model)
    predict._device.value = "cpu"
    click(predict._controls.run_button)
    qtbot.waitUntil(lambda: not predict.busy, timeout=WAIT_MS)
    assert np.array_equal(_rgba(viewer.layers["cells labels"], 1), _hex_rgba(class_color(1)))


def test_a_failed_run_leaves_no_preview_and_names_the_layer(make_napari_viewer, qtbot, tmp_path, tiny_nuclei,
                                                            errors):
    viewer = make_napari_viewer()
    viewer.add_image(tiny_nuclei[0], name="cells")
    viewer.add_labels(np.zeros(tiny_nuclei[0].shape, np.uint8), name="my strokes")
    widget = dock(viewer, "Train")
    set_tiny_training(widget, tmp_path / "model.pt")
    widget._preview.value = 1
    click(widget._controls.run_button)
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    assert errors and "labels 'my strokes' are empty" in errors[-1]
    assert "'my strokes'" in widget._controls.status.value
    assert [layer.name for layer in viewer.layers] == ["cells", "my strokes"]  # no empty "cells preview"


def test_error_messages_name_the_layers():
    names = [("cells", "cells scribbles"), ("flipped", "flipped paint")]
    assert name_layers("labels 2 are empty: paint some strokes first", names) == \
        "labels 'flipped paint' are empty: paint some strokes first"
    assert name_layers("image 2 has 3 channel(s) but image 1 has 1", names) == \
        "image 'flipped' has 3 channel(s) but image 'cells' has 1"
    assert name_layers("labels 3 are empty", names) == "labels 3 are empty"  # no such pair: unchanged


def test_the_verdict_compares_on_the_same_hold_out_when_it_can():
    meta = {"metrics": {"val_dice": 0.063}}
    worse = _models.judge(meta, [{"epoch": 1, "val_dice": 0.063}], previous_dice=0.348)
    assert not worse.keep_new and not worse.same_holdout and "0.063 vs 0.348" in worse.text()
    # the start model measured on this run's own held-out pixels (epoch 0) is the fairer judge
    fair = _models.judge(meta, [{"epoch": 0, "val_dice": 0.05}, {"epoch": 1, "val_dice": 0.063}], 0.348)
    assert fair.keep_new and fair.before == 0.05
    assert _models.judge({"metrics": {"val_dice": None}}, [], 0.348).keep_new  # no Dice: keep the new model
    assert _models.judge(meta, [], previous_dice=0.065).keep_new  # within noise


def test_a_continued_run_that_ends_worse_keeps_the_better_model(make_napari_viewer, qtbot, tmp_path, painted):
    viewer = make_napari_viewer()
    image_and_scribbles(viewer, painted)
    widget = dock(viewer, "Train")
    set_tiny_training(widget, tmp_path / "first.pt")
    widget._preview.value = 1
    click(widget._controls.run_button)
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    first, first_state = tmp_path / "first.pt", tmp_path / "first.last.pt"
    assert widget.last_checkpoint == first and first_state.is_file()
    assert widget._kept_dice is not None  # this run held strokes out
    widget._kept_dice = 0.99  # as if the first model had been very good

    widget._save_to.value = tmp_path / "second.pt"
    click(widget._continue)
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)

    second = tmp_path / "second.pt"
    assert second.is_file() and widget.last_checkpoint == first  # "Predict with this model" uses the better
    assert "ended worse than the model it started from" in widget._controls.status.value
    assert not widget._use_newer.native.isHidden() and widget._continue_from == first
    assert not first_state.exists()  # Continue goes on from the kept model: the old optimizer state is gone
    assert "cells preview" not in viewer.layers  # no hidden, stale preview either
    assert len(widget.plot.earlier_dice) == 1  # the two runs' Dice lines are not joined

    click(widget._use_newer)
    assert widget.last_checkpoint == second and widget._use_newer.native.isHidden()
    assert widget._continue_from == tmp_path / "second.last.pt"


def test_optimizer_state_is_kept_only_while_continue_can_use_it(make_napari_viewer, qtbot, tmp_path, tiny_nuclei):
    viewer = make_napari_viewer()
    image_and_scribbles(viewer, tiny_nuclei)
    widget = dock(viewer, "Train")
    widget._preview.value = 0
    set_tiny_training(widget, tmp_path / "a.pt", steps=1)
    click(widget._controls.run_button)
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    assert (tmp_path / "a.last.pt").is_file()
    assert str(tmp_path.name) in widget._folder.value and "1 model" in widget._folder.value

    set_tiny_training(widget, tmp_path / "b.pt", steps=1)
    click(widget._controls.run_button)  # a new run from scratch: Continue will follow it
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    assert not (tmp_path / "a.last.pt").exists() and (tmp_path / "b.last.pt").is_file()
    assert (tmp_path / "a.pt").is_file()  # models themselves are never deleted

    viewer.window.remove_dock_widget(_dock_of(widget))  # closing the dock ends what Continue could do
    assert not (tmp_path / "b.last.pt").exists() and (tmp_path / "b.pt").is_file()


def _dock_of(widget):
    from qtpy.QtWidgets import QDockWidget

    parent = widget.native.parentWidget()
    while not isinstance(parent, QDockWidget):
        parent = parent.parentWidget()
    return parent
