"""TrainWidget in a real viewer: opened through the manifest, trains, stops, reports bad input."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from widget_helpers import WAIT_MS, click, dock, image_and_scribbles, set_tiny_training

from napari_seglab.core.errors import InputError
from napari_seglab.core.labels import LEGEND


def test_opens_through_manifest_and_follows_the_layers(make_napari_viewer, tiny_nuclei):
    viewer = make_napari_viewer()
    widget = dock(viewer, "Train")
    assert widget._image.value is None
    image_layer, labels_layer = image_and_scribbles(viewer, tiny_nuclei)
    assert widget._image.value is image_layer and widget._labels_combo.value is labels_layer
    viewer.layers.remove(labels_layer)
    assert widget._labels_combo.value is None

    widget._mode.value = "instances"
    assert "each object its own id" in widget._legend.value
    assert "each object" in LEGEND["instances"]
    widget._family.value = "fcn"
    assert "fcn_resnet50" in widget._arch.choices and not widget._encoder.enabled
    assert widget._arch.value == ("fcn_resnet50" if torch.cuda.is_available() else "fcn_resnet18")  # per device
    widget._family.value = "maskrcnn"
    assert widget._mode.value == "instances"


def test_train_end_to_end_adds_the_prediction(make_napari_viewer, qtbot, tmp_path):
    from napari_seglab.core.synthetic import make_nuclei, make_scribbles

    viewer = make_napari_viewer()
    image, instances = make_nuclei((160, 160), seed=3)
    # 12 background and 16 nucleus strokes: enough to hold some out for the validation Dice
    painted = (image, instances, make_scribbles(instances, seed=3, n_objects=16, n_background=16))
    image_layer, labels_layer = image_and_scribbles(viewer, painted, scale=(0.5, 0.5), translate=(3.0, 4.0))
    widget = dock(viewer, "Train")
    set_tiny_training(widget, tmp_path / "model.pt")
    widget._preview.value = 1  # every step: both live previews land in the same layer
    viewer.layers.selection.active = labels_layer
    added, names_at_insertion, updates = [], [], []

    def on_inserted(event):
        added.append(event.value)
        names_at_insertion.append(event.value.name)
        event.value.events.data.connect(lambda _event: updates.append(threading.current_thread()))

    viewer.layers.events.inserted.connect(on_inserted)

    click(widget._controls.run_button)
    assert widget.busy and not widget._controls.run_button.enabled and widget._controls.stop_button.enabled
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    preview = added[0]

    # one layer only: the preview, made at the click, updated by both previews (on the GUI thread),
    # then renamed to hold the final prediction (adding and removing layers stalls the viewer)
    assert names_at_insertion == ["cells preview"]
    assert preview.name == "cells prediction" and preview.metadata["seglab_role"] == "prediction"
    assert preview.data.shape == image_layer.data.shape and np.allclose(preview.scale, image_layer.scale)
    assert len(updates) >= 3 and all(thread is threading.main_thread() for thread in updates)
    assert "cells preview" not in viewer.layers
    assert viewer.layers.selection.active is labels_layer  # the preview never took the user's layer away
    # the cockpit drew both steps and the epoch's validation Dice
    assert widget.plot.loss.count == 2 and [round(x) for x, _ in widget.plot.loss.visible()] == [1, 2]
    assert widget.plot.dice.count == 1 and widget.plot.dice.last[0] == 2

    names = [layer.name for layer in viewer.layers]
    assert names.count("cells prediction") == 1
    pred = viewer.layers["cells prediction"]
    assert pred.data.shape == image_layer.data.shape
    assert np.allclose(pred.scale, image_layer.scale) and np.allclose(pred.translate, image_layer.translate)
    assert widget.last_checkpoint == tmp_path / "model.pt" and widget.last_checkpoint.is_file()
    assert widget.last_result.steps == 2
    assert "done" in widget._controls.status.value
    assert widget._controls.run_button.enabled and not widget._controls.stop_button.enabled
    # the next run gets a fresh default file name only when the user kept the default
    assert widget._save_to.value == tmp_path / "model.pt"

    click(widget._show_uncertainty)
    uncertainty, regions = viewer.layers["cells uncertainty"], viewer.layers["cells paint next"]
    assert uncertainty.data.shape == image_layer.data.shape and uncertainty.colormap.name == "magma"
    assert tuple(uncertainty.contrast_limits) == (0.0, 1.0) and 0.0 <= uncertainty.data.min() <= uncertainty.data.max() <= 1.0
    assert 1 <= regions.nshapes <= 5 and set(regions.shape_type) == {"rectangle"}
    assert np.allclose(regions.scale, image_layer.scale)

    click(widget._use_in_predict)  # opens (or shows) the Predict widget with this model
    _dock, predict = viewer.window.add_plugin_dock_widget("napari-seglab", "Predict")
    assert predict._file.value == tmp_path / "model.pt" and "resnet18" in predict._about.value
    assert predict._image.value == image_layer


def test_stop_returns_control_and_keeps_the_model(make_napari_viewer, qtbot, tiny_nuclei, tmp_path):
    viewer = make_napari_viewer()
    image_and_scribbles(viewer, tiny_nuclei)
    widget = dock(viewer, "Train")
    set_tiny_training(widget, tmp_path / "model.pt", epochs=1000, steps=5)

    click(widget._controls.run_button)
    qtbot.waitUntil(lambda: "step 2" in widget._controls.status.value, timeout=WAIT_MS)
    click(widget._controls.stop_button)
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)

    assert widget.last_result.stopped and widget.last_result.steps < 5000
    assert widget.last_checkpoint.is_file()
    assert "stopped" in widget._controls.status.value
    assert widget._controls.run_button.enabled and widget._inputs[0].enabled
    assert "cells prediction" in viewer.layers


@pytest.mark.parametrize(("labels", "expected"), [
    (np.zeros((10, 10), np.uint8), "does not match the image shape"),
    (np.zeros((64, 96), np.uint8), "empty"),
])
def test_bad_labels_show_an_error_and_the_widget_stays_usable(make_napari_viewer, qtbot, tiny_nuclei, tmp_path,
                                                              errors, labels, expected):
    viewer = make_napari_viewer()
    viewer.add_image(tiny_nuclei[0], name="cells")
    viewer.add_labels(labels, name="paint")
    widget = dock(viewer, "Train")
    set_tiny_training(widget, tmp_path / "model.pt")

    click(widget._controls.run_button)
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)

    assert len(errors) == 1 and expected in errors[0]
    assert expected in widget._controls.status.value
    assert widget._controls.run_button.enabled and widget._inputs[0].enabled
    assert "cells prediction" not in viewer.layers and not (tmp_path / "model.pt").exists()


def test_budget_controls_default_to_auto(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = dock(viewer, "Train")
    assert (widget._patch.value, widget._batch.value, widget._lr.value) == ("auto", "auto", "auto")
    config = widget.config()
    assert (config.patch, config.batch_size, config.lr) == (None, None, None)  # the core picks per mode and device
    widget._patch.value, widget._batch.value, widget._lr.value = "96", " 4 ", "2e-3"
    config = widget.config()
    assert (config.patch, config.batch_size, config.lr) == (96, 4, 2e-3)
    widget._patch.value = "big"
    with pytest.raises(InputError, match="patch 'big' is not a number"):
        widget.config()
    widget._patch.value = "100"  # not a multiple of 32: the core's own check speaks
    with pytest.raises(InputError, match="multiple of 32"):
        widget.config()


def test_settings_errors_are_reported_before_starting(make_napari_viewer, tiny_nuclei, tmp_path, errors):
    viewer = make_napari_viewer()
    image_and_scribbles(viewer, tiny_nuclei)
    widget = dock(viewer, "Train")
    set_tiny_training(widget, tmp_path / "model.pt")
    widget._lr.value = "fast"
    click(widget._controls.run_button)
    assert not widget.busy and "learning rate" in errors[-1]
    widget._lr.value = "1e-3"
    widget._epochs.value = 0
    widget._time.value = 0  # and no time budget
    click(widget._controls.run_button)
    assert not widget.busy and "epochs or a time limit" in errors[-1]


def test_closing_the_viewer_stops_a_running_training(make_napari_viewer, qtbot, tiny_nuclei, tmp_path):
    viewer = make_napari_viewer()
    image_and_scribbles(viewer, tiny_nuclei)
    widget = dock(viewer, "Train")
    set_tiny_training(widget, tmp_path / "model.pt", epochs=1000, steps=5)
    click(widget._controls.run_button)
    qtbot.waitUntil(lambda: "step 1" in widget._controls.status.value, timeout=WAIT_MS)
    job = widget._slot.job

    viewer.close()
    qtbot.waitUntil(job.done_event.is_set, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: not job.running, timeout=WAIT_MS)
    assert job.stop_event.is_set()


def test_model_tab_preset_diameter_and_time_budget(make_napari_viewer, tiny_nuclei):
    viewer = make_napari_viewer()
    widget = dock(viewer, "Train")
    _image, instances, _ = tiny_nuclei
    viewer.add_image(tiny_nuclei[0], name="cells")
    viewer.add_labels(np.asarray(instances), name="objects painted")
    config = widget.config()
    # a new user gets the CPU-fast default: a 2-minute budget, the preset decides the encoder
    assert config.time_limit == 120 and config.epochs is None
    assert config.encoder is None and config.preset is None and config.scale is None
    widget._preset.value = "accurate"
    assert widget.config().preset == "accurate"
    widget._mode.value = "instances"
    assert widget._head.enabled and widget._head.value == "auto" and widget.config().instance_head is None
    assert "painted objects measure" in widget._diameter_note.value
    widget._diameter.value = "12"
    config = widget.config()
    assert config.scale == pytest.approx(2.0) and "resampling by 2" in widget._diameter_note.value
    widget._diameter.value = "0"
    with pytest.raises(InputError, match="object diameter"):
        widget.config()
    widget._diameter.value = "auto"
    widget._encoder.native.setEditText("resnet18")
    assert widget.config().encoder == "resnet18"
    widget._mode.value = "objects"
    assert "whole painted object" in widget._legend.value


def test_too_little_background_for_the_painted_objects_is_a_napari_warning(make_napari_viewer, qtbot, tmp_path,
                                                                          warnings_shown):
    # objects mode: three whole painted nuclei and one background stroke 1 px wide (under a tenth of their area)
    from napari_seglab.core.synthetic import make_nuclei

    image, inst = make_nuclei((128, 128), seed=2)
    paint = np.zeros(inst.shape, np.uint16)
    for k, i in enumerate([i for i in np.unique(inst) if i][:3]):
        paint[inst == i] = k + 2
    paint[126, 2:60] = np.where(inst[126, 2:60] == 0, 1, 0)
    viewer = make_napari_viewer()
    viewer.add_image(image, name="cells")
    viewer.add_labels(paint, name="paint")
    widget = dock(viewer, "Train")
    widget._mode.value = "objects"
    set_tiny_training(widget, tmp_path / "model.pt")

    click(widget._controls.run_button)
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)

    assert any("of the painted objects' area" in text and "Paint more background" in text for text in warnings_shown)
    assert widget.last_checkpoint.is_file()  # a warning, not a refusal: the run went on
