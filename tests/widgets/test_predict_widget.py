"""PredictWidget in a real viewer: aligned labels, one plane of a stack, boxes and their threshold."""

from __future__ import annotations

import re

import numpy as np
from widget_helpers import WAIT_MS, click, dock

from napari_seglab import _layers
from napari_seglab.core.predict import Prediction


def test_predict_adds_labels_aligned_with_the_image(make_napari_viewer, qtbot, tiny_nuclei, tiny_model):
    viewer = make_napari_viewer()
    image = viewer.add_image(tiny_nuclei[0], name="cells", scale=(0.5, 0.25), translate=(10.0, -3.0))
    widget = dock(viewer, "Predict")
    widget.set_checkpoint(tiny_model)
    assert "unet Unet/resnet18" in widget._about.value and "scribbles" in widget._about.value
    widget._probabilities.value = True
    widget._device.value = "cpu"
    widget._threshold.value = 0.8  # a box model's setting: a U-Net scores nothing, and is not refused for it

    click(widget._controls.run_button)
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)

    labels = viewer.layers["cells labels"]
    assert labels.data.shape == image.data.shape and np.issubdtype(labels.data.dtype, np.integer)
    assert np.allclose(labels.scale, image.scale) and np.allclose(labels.translate, image.translate)
    probability = viewer.layers["cells probability"]
    assert probability.data.shape == image.data.shape
    assert probability.data.min() >= 0.0 and probability.data.max() <= 1.0
    status = widget._controls.status.value
    assert re.fullmatch(r"done in [\d.]+ s: (1 class|[02-9]\d* classes|1\d+ classes)", status), status
    assert widget._controls.run_button.enabled

    # a second run replaces the layers instead of stacking copies, and reuses the loaded model
    model = widget._model_cache[1]
    click(widget._controls.run_button)
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    assert [layer.name for layer in viewer.layers].count("cells labels") == 1
    assert widget._model_cache[1] is model


def test_only_the_plane_shown_is_predicted(make_napari_viewer, qtbot, tiny_nuclei, tiny_model):
    viewer = make_napari_viewer()
    stack = np.stack([tiny_nuclei[0]] * 3)
    viewer.add_image(stack, name="stack", scale=(3.0, 1.0, 1.0))
    # an earlier prediction of this dock (SegLab's role mark: a user's own layer would be left alone)
    earlier = viewer.add_labels(np.full(stack.shape, 7, np.int32), name="stack labels",
                                metadata={_layers.ROLE: "prediction"})
    viewer.dims.set_point(0, 3.0)  # world z = 3 is plane 1 at a z-scale of 3
    widget = dock(viewer, "Predict")
    widget.set_checkpoint(tiny_model)
    widget._device.value = "cpu"
    widget._only_plane.value = True
    widget._suggest.value = True  # boxes on the plane shown

    click(widget._controls.run_button)
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    regions = viewer.layers["stack paint next"]
    assert regions.ndim == 3 and regions.nshapes >= 1 and all(np.all(box[:, 0] == 1) for box in regions.data)
    assert "stack uncertainty" not in viewer.layers  # not asked for
    data = viewer.layers["stack labels"].data
    assert viewer.layers["stack labels"] is earlier
    assert np.all(data[0] == 7) and np.all(data[2] == 7)  # untouched planes keep their labels
    assert set(np.unique(data[1])) <= {0, 1}  # the shown plane holds the new prediction
    assert widget.last_prediction.labels[[0, 2]].max() == 0


def test_uncertainty_map_and_where_to_paint_next(make_napari_viewer, qtbot, tiny_nuclei, tiny_model):
    viewer = make_napari_viewer()
    image = viewer.add_image(tiny_nuclei[0], name="cells", scale=(2.0, 2.0))
    widget = dock(viewer, "Predict")
    widget.set_checkpoint(tiny_model)
    widget._device.value = "cpu"
    widget._uncertainty.value = True
    widget._suggest.value = True

    click(widget._controls.run_button)
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)

    uncertainty = viewer.layers["cells uncertainty"]
    assert uncertainty.data.shape == image.data.shape and uncertainty.data.dtype == np.float32
    assert uncertainty.colormap.name == "magma" and tuple(uncertainty.contrast_limits) == (0.0, 1.0)
    assert uncertainty.data.min() >= 0.0 and uncertainty.data.max() <= 1.0
    assert np.allclose(uncertainty.scale, image.scale)
    regions = viewer.layers["cells paint next"]
    assert 1 <= regions.nshapes <= 5 and set(regions.shape_type) == {"rectangle"}
    assert list(regions.features["rank"]) == list(range(1, regions.nshapes + 1))
    # the probabilities were only needed for the map: no layers for them, none kept in memory
    assert "cells probability" not in viewer.layers and widget.last_prediction.probabilities is None
    # labels come in a dtype napari draws without re-mapping
    assert viewer.layers["cells labels"].data.dtype in (np.uint8, np.uint16)


def _job_never_runs(make_napari_viewer, tiny_nuclei, tiny_model, monkeypatch):
    """Predict (with the uncertainty map) docked on "cells", its job replaced by a note of the layers there."""
    viewer = make_napari_viewer()
    viewer.add_image(tiny_nuclei[0], name="cells")
    widget = dock(viewer, "Predict")
    widget.set_checkpoint(tiny_model)
    widget._device.value = "cpu"
    widget._uncertainty.value = True
    started = []  # the layers there were when the job was started
    monkeypatch.setattr(widget._slot, "start", lambda *args, **kwargs: started.append(
        [layer.name for layer in viewer.layers]))
    return viewer, widget, started


def test_output_layers_are_made_one_per_turn_of_the_event_loop(make_napari_viewer, qtbot, tiny_nuclei,
                                                               tiny_model, monkeypatch):
    """The click adds the labels layer only; the maps follow in later turns, so the viewer repaints between."""
    viewer, widget, started = _job_never_runs(make_napari_viewer, tiny_nuclei, tiny_model, monkeypatch)
    widget._suggest.value = True

    click(widget._controls.run_button)
    assert [layer.name for layer in viewer.layers] == ["cells", "cells labels"] and widget.busy
    qtbot.waitUntil(lambda: bool(started), timeout=WAIT_MS)
    # the job starts once every output layer exists, so it does not compete with their creation
    assert set(started[0]) == {"cells", "cells labels", "cells uncertainty", "cells paint next"}
    assert not viewer.layers["cells uncertainty"].data.any()

    # a job that fails takes every empty layer it was given away again
    widget._on_error(RuntimeError("out of memory"))
    assert [layer.name for layer in viewer.layers] == ["cells"]


def test_stop_before_the_job_starts_adds_nothing(make_napari_viewer, tiny_nuclei, tiny_model, monkeypatch):
    viewer, widget, started = _job_never_runs(make_napari_viewer, tiny_nuclei, tiny_model, monkeypatch)

    click(widget._controls.run_button)
    click(widget._controls.stop_button)
    assert not widget.busy and widget._controls.run_button.enabled
    assert [layer.name for layer in viewer.layers] == ["cells"] and "nothing was added" in widget._controls.status.value
    widget._reserve_next()  # the turn that was already queued finds the job called off
    assert not started and [layer.name for layer in viewer.layers] == ["cells"]


def _boxes_prediction(shape, rows):
    labels = np.zeros(shape, np.int32)
    return Prediction(labels=labels, boxes=rows, kind="instances")


ROWS = [
    {"y0": 2, "x0": 3, "y1": 12, "x1": 20, "class": 1, "score": 0.9, "plane": ""},
    {"y0": 30, "x0": 40, "y1": 50, "x1": 60, "class": 2, "score": 0.6, "plane": ""},
    {"y0": 5, "x0": 70, "y1": 15, "x1": 90, "class": 1, "score": 0.3, "plane": ""},
]


def test_boxes_become_rectangles_and_the_threshold_refilters_them(make_napari_viewer, tiny_nuclei):
    viewer = make_napari_viewer()
    image = viewer.add_image(tiny_nuclei[0], name="cells", scale=(2.0, 2.0))
    widget = dock(viewer, "Predict")
    widget._threshold.value = 0.0
    widget.show_prediction(_boxes_prediction(image.data.shape, ROWS), image)

    boxes = viewer.layers["cells boxes"]
    assert boxes.nshapes == 3 and set(boxes.shape_type) == {"rectangle"}
    assert list(boxes.features["score"]) == [0.9, 0.6, 0.3] and list(boxes.features["class"]) == [1, 2, 1]
    assert np.allclose(boxes.data[0].min(0), [2, 3]) and np.allclose(boxes.data[0].max(0), [12, 20])
    assert np.allclose(boxes.scale, image.scale)
    assert "{class}" in boxes.text.string.format

    widget._threshold.value = 0.5  # re-filters the stored rows; nothing is predicted again
    assert boxes.nshapes == 2 and list(boxes.features["score"]) == [0.9, 0.6]
    assert widget._slot.job is None
    widget._threshold.value = 0.0
    assert boxes.nshapes == 3


def test_boxes_of_a_stack_sit_on_their_plane(make_napari_viewer, tiny_nuclei):
    viewer = make_napari_viewer()
    stack = viewer.add_image(np.stack([tiny_nuclei[0]] * 3), name="stack")
    widget = dock(viewer, "Predict")
    rows = [dict(ROWS[0], plane="2"), dict(ROWS[1], plane="0")]
    widget.show_prediction(_boxes_prediction(stack.data.shape, rows), stack)
    boxes = viewer.layers["stack boxes"]
    assert boxes.ndim == 3 and boxes.nshapes == 2
    assert np.all(boxes.data[0][:, 0] == 2) and np.all(boxes.data[1][:, 0] == 0)


def test_too_many_boxes_keep_the_best_and_warn(make_napari_viewer, tiny_nuclei, monkeypatch):
    from napari.utils import notifications

    from napari_seglab import _layers

    warnings = []
    monkeypatch.setattr(notifications, "show_warning", warnings.append)
    monkeypatch.setattr(_layers, "MAX_BOXES", 2)
    viewer = make_napari_viewer()
    image = viewer.add_image(tiny_nuclei[0], name="cells")
    widget = dock(viewer, "Predict")
    widget._threshold.value = 0.0
    widget.show_prediction(_boxes_prediction(image.data.shape, ROWS), image)
    boxes = viewer.layers["cells boxes"]
    assert boxes.nshapes == 2 and sorted(boxes.features["score"]) == [0.6, 0.9]
    assert len(warnings) == 1 and "best-scoring" in warnings[0]


def test_a_bad_model_file_is_explained(make_napari_viewer, tiny_nuclei, tmp_path, errors):
    viewer = make_napari_viewer()
    viewer.add_image(tiny_nuclei[0], name="cells")
    widget = dock(viewer, "Predict")
    bad = tmp_path / "notes.pt"
    bad.write_text("not a model")
    widget.set_checkpoint(bad)
    assert "cannot use this file" in widget._about.value

    click(widget._controls.run_button)
    assert not widget.busy and len(errors) == 1 and "corrupt" in errors[0]
    assert widget._controls.run_button.enabled


def _stock_fcn_on_cells(make_napari_viewer, qtbot, tiny_nuclei, about: str):
    """Predict with the stock VOC FCN on "cells" (its description must say ``about``); returns viewer, widget."""
    viewer = make_napari_viewer()
    viewer.add_image(tiny_nuclei[0], name="cells")
    widget = dock(viewer, "Predict")
    widget._stock.value = "fcn_resnet50_voc"
    assert about in widget._about.value
    click(widget._controls.run_button)
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    return viewer, widget


def test_stock_model_without_cached_weights_is_explained(make_napari_viewer, qtbot, tiny_nuclei, tmp_path,
                                                         errors, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    widget = _stock_fcn_on_cells(make_napari_viewer, qtbot, tiny_nuclei, "NOT in the torch cache")[1]
    assert len(errors) == 1 and "not in the torch cache" in errors[0]
    # it says how to get the weights, and offers no option that does not exist ("allow downloading")
    assert "get_weight('FCN_ResNet50_Weights.DEFAULT')" in errors[0] and "allow" not in errors[0]
    assert widget._controls.run_button.enabled


def test_cached_stock_model_predicts(make_napari_viewer, qtbot, tiny_nuclei, tmp_path, monkeypatch):
    import torch
    from torchvision.models.segmentation import FCN_ResNet50_Weights, fcn_resnet50

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    model = fcn_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    torch.save(model.state_dict(), cache / FCN_ResNet50_Weights.DEFAULT.url.rsplit("/", 1)[-1])
    viewer = _stock_fcn_on_cells(make_napari_viewer, qtbot, tiny_nuclei, "in the torch cache")[0]
    labels = viewer.layers["cells labels"].data
    assert labels.shape == tiny_nuclei[0].shape and labels.max() < 21


def test_correcting_a_stock_prediction_starts_train_without_a_bogus_file(make_napari_viewer, qtbot, tiny_nuclei,
                                                                          tmp_path, monkeypatch):
    """Regression: "Correct this prediction" after a stock model handed Path("stock") to Train as its start."""
    import torch
    from torchvision.models.segmentation import FCN_ResNet50_Weights, fcn_resnet50

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    model = fcn_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    torch.save(model.state_dict(), cache / FCN_ResNet50_Weights.DEFAULT.url.rsplit("/", 1)[-1])
    viewer, widget = _stock_fcn_on_cells(make_napari_viewer, qtbot, tiny_nuclei, "in the torch cache")
    train = dock(viewer, "Train")
    before = train._init.value
    corrected = widget.correct_prediction()
    assert corrected.name == "cells corrected"
    assert "stock" not in str(train._init.value) and train._init.value == before
    assert train._labels_combo.value.name == corrected.name
