"""The annotate-then-train loop in a real viewer: several pairs, preview of a stack plane, correct and retrain."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from widget_helpers import WAIT_MS, click, dock, image_and_scribbles, set_tiny_training

from napari_seglab._widgets import train as train_module
from napari_seglab.core.data import scaled_shape
from napari_seglab.core.models import load_checkpoint


def _config_of(path: Path) -> dict:
    return load_checkpoint(path).meta["training"]["config"]


def test_correct_then_continue_trains_a_new_round_from_the_last_model(make_napari_viewer, qtbot, tiny_nuclei,
                                                                      tmp_path):
    viewer = make_napari_viewer()
    image_layer, _ = image_and_scribbles(viewer, tiny_nuclei)
    widget = dock(viewer, "Train")
    set_tiny_training(widget, tmp_path / "first.pt")
    widget._preview.value = 0
    assert not widget._continue.enabled and not widget._correct.enabled
    click(widget._controls.run_button)
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    assert widget._continue.enabled and widget._correct.enabled
    last = tmp_path / "first.last.pt"
    assert last.is_file()

    click(widget._correct)
    corrected = viewer.layers["cells corrected"]
    prediction = viewer.layers["cells prediction"].data
    # scribbles mode: predicted class k becomes scribble k + 1, so every pixel is annotated
    assert np.array_equal(corrected.data, prediction.astype(np.int64) + 1)
    assert viewer.layers.selection.active is corrected and corrected.mode == "paint"
    assert corrected.selected_label == 2 and widget._labels_combo.value is corrected
    corrected.data[:8, :8] = 2  # the user paints fixes (and the untrained model may have seen one class only)
    corrected.data[-8:, -8:] = 1

    widget._save_to.value = tmp_path / "second.pt"
    click(widget._continue)
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)

    assert widget.last_checkpoint == tmp_path / "second.pt"
    meta = load_checkpoint(tmp_path / "second.pt").meta
    second = meta["training"]
    assert second["config"]["init"] == str(last)  # model and optimizer state of the first run's last step
    # trained on the dense correction: every pixel, at the object scale the first run chose
    assert second["data"][0]["annotated_pixels"] == np.prod(scaled_shape(image_layer.data.shape, meta["scale"]))
    assert widget.plot.marks == [2.0] and widget.plot.loss.last[0] == 4  # the plot carries on after step 2


def test_several_pairs_and_imbalance_options_reach_the_training(make_napari_viewer, qtbot, tiny_nuclei, tmp_path):
    viewer = make_napari_viewer()
    image_and_scribbles(viewer, tiny_nuclei)
    flipped = viewer.add_image(np.ascontiguousarray(tiny_nuclei[0][::-1]), name="flipped")
    flipped_labels = viewer.add_labels(np.ascontiguousarray(tiny_nuclei[2][::-1]), name="flipped scribbles")
    viewer.add_labels(np.ones_like(tiny_nuclei[2]), name="flipped labels").metadata["seglab_role"] = "prediction"
    widget = dock(viewer, "Train")
    set_tiny_training(widget, tmp_path / "model.pt", steps=1)
    widget._preview.value = 0
    widget._weights.value = "balanced"
    widget._gamma.value = 2.0

    row = widget._pairs.add_row(flipped, flipped_labels)
    assert [(a.name, b.name) for a, b in widget.pairs()] == [("cells", "paint"), ("flipped", "flipped scribbles")]
    widget._matching.value = True  # finds the same pair again (kept once) and skips the model's output
    assert len(widget.pairs()) == 2
    widget._pairs.remove_row(row)
    assert [(a.name, b.name) for a, b in widget.pairs()] == [("cells", "paint"), ("flipped", "flipped scribbles")]

    click(widget._controls.run_button)
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    meta = load_checkpoint(tmp_path / "model.pt").meta["training"]
    assert len(meta["data"]) == 2
    assert meta["config"]["class_weights"] == "balanced" and meta["config"]["focal_gamma"] == 2.0


def test_preview_of_a_stack_shows_the_plane_on_screen(make_napari_viewer, qtbot, tiny_nuclei, tmp_path, monkeypatch):
    image, _instances, scribbles = tiny_nuclei
    stack = np.stack([image, image[::-1], image[:, ::-1]])
    paint = np.zeros(stack.shape, np.uint8)
    paint[0] = scribbles
    viewer = make_napari_viewer()
    viewer.add_image(stack, name="stack")
    viewer.add_labels(paint, name="paint")
    viewer.dims.set_point(0, 2)
    seen = {}
    original = train_module.train_then_predict

    def spy(data, config, preview_plane, plane, stop, **kwargs):
        seen.update(preview_plane=preview_plane, plane=plane)
        return original(data, config, preview_plane, plane, stop, **kwargs)

    monkeypatch.setattr(train_module, "train_then_predict", spy)
    shown = []
    monkeypatch.setattr(train_module._layers, "show_plane",
                        _recording(train_module._layers.show_plane, shown))
    widget = dock(viewer, "Train")
    set_tiny_training(widget, tmp_path / "model.pt", steps=1)
    widget._preview.value = 1

    click(widget._controls.run_button)
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)

    assert seen["plane"] == (2,) and np.array_equal(seen["preview_plane"], stack[2])
    # the preview layer is made at the click (empty), then one preview (step 1) fills plane 2 only
    assert len(shown) == 2 and [call["plane"] for call in shown] == [(2,), (2,)]
    assert shown[1]["labels"].shape == (64, 96) and shown[1]["layer"] == shown[0]["layer"]
    # at the end the preview layer becomes the prediction of the whole stack
    assert shown[0]["layer"] == viewer.layers["stack prediction"]
    assert viewer.layers["stack prediction"].data.shape == stack.shape


def _recording(function, calls: list):
    def wrapper(viewer, plane_labels, name, spatial, plane=(), **kwargs):
        layer = function(viewer, plane_labels, name, spatial, plane, **kwargs)
        calls.append({"labels": plane_labels, "plane": plane, "layer": layer})
        return layer

    return wrapper


def test_correcting_a_prediction_sets_up_fine_tuning_of_that_model(make_napari_viewer, qtbot, tiny_nuclei,
                                                                   tiny_model, tmp_path):
    viewer = make_napari_viewer()
    image = viewer.add_image(tiny_nuclei[0], name="cells")
    predict = dock(viewer, "Predict")
    predict.set_checkpoint(tiny_model)
    predict._device.value = "cpu"
    predict._split.value = True  # object ids: corrected as one foreground class in scribbles mode
    assert not predict._correct.enabled
    click(predict._controls.run_button)
    qtbot.waitUntil(lambda: not predict.busy, timeout=WAIT_MS)

    click(predict._correct)
    corrected = viewer.layers["cells corrected"]
    objects = viewer.layers["cells labels"].data
    assert np.array_equal(corrected.data, np.where(objects > 0, 2, 1))
    assert viewer.layers.selection.active is corrected and corrected.mode == "paint"
    _dock, train = viewer.window.add_plugin_dock_widget("napari-seglab", "Train")
    assert train._image.value is image and train._labels_combo.value is corrected
    assert train._init.value == tiny_model and train._mode.value == "scribbles"
    assert not train._family.enabled  # the start model brings its own architecture

    corrected.data[:8, :8] = 2
    corrected.data[-8:, -8:] = 1
    set_tiny_training(train, tmp_path / "tuned.pt", steps=1)
    train._preview.value = 0
    click(train._controls.run_button)
    qtbot.waitUntil(lambda: not train.busy, timeout=WAIT_MS)
    assert _config_of(tmp_path / "tuned.pt")["init"] == str(tiny_model)
    assert "done" in train._controls.status.value
