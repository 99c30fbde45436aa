"""Predict dock, 3D objects: one id per nucleus through the stack, the anisotropy as the layer's scale, features."""

from __future__ import annotations

import numpy as np
from volume3d import blob_model, blobs
from widget_helpers import WAIT_MS, click, dock

import napari_seglab._widgets.predict as predict_dock


def test_3d_objects_get_the_anisotropy_as_scale_and_volumes_as_features(make_napari_viewer, qtbot, monkeypatch,
                                                                        random_unet):
    monkeypatch.setattr(predict_dock, "load_model", lambda *a, **k: blob_model())
    viewer = make_napari_viewer()
    image, truth = blobs()
    stack = viewer.add_image(image, name="stack", scale=(1.0, 0.5, 0.5))  # 1 µm z step, 0.5 µm pixels
    widget = dock(viewer, "Predict")
    widget.set_checkpoint(random_unet)
    widget._device.value = "cpu"
    widget._volume.value = True

    click(widget._controls.run_button)
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)

    layer = viewer.layers["stack labels"]
    assert widget.last_prediction.anisotropy == 2.0  # read from the layer's scale
    assert np.allclose(layer.scale, (1.0, 0.5, 0.5)) and np.allclose(stack.scale, layer.scale)
    labels = layer.data
    assert int(labels.max()) == 3
    for i in (1, 2, 3):
        ids, counts = np.unique(labels[truth == i], return_counts=True)
        assert ids[np.argmax(counts)] > 0 and counts.max() > 0.9 * counts.sum()
    features = layer.features
    assert sorted(features["index"]) == [1, 2, 3]
    assert np.allclose(features["volume_um3"], features["area"] * 0.25)
    assert (features["extent_z"] >= 3).all()
    assert "3 objects" in widget._controls.status.value


def test_the_block_field_sets_the_3d_blocks(make_napari_viewer, qtbot, monkeypatch, random_unet):
    monkeypatch.setattr(predict_dock, "load_model", lambda *a, **k: blob_model())
    seen = []
    real = predict_dock.iter_predict

    def spy(*args, **kwargs):
        seen.append(kwargs.get("block"))
        return (yield from real(*args, **kwargs))

    monkeypatch.setattr(predict_dock, "iter_predict", spy)
    viewer = make_napari_viewer()
    image, truth = blobs()
    viewer.add_image(image, name="stack", scale=(1.0, 0.5, 0.5))
    widget = dock(viewer, "Predict")
    widget.set_checkpoint(random_unet)
    widget._device.value = "cpu"
    widget._volume.value = True
    widget._block.value = 16  # a 24x48x48 decoding grid: 18 blocks

    click(widget._controls.run_button)
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)

    assert seen == [16]
    labels = viewer.layers["stack labels"].data
    assert int(labels.max()) == 3  # the same nuclei as the whole volume gives
    for i in (1, 2, 3):
        ids, counts = np.unique(labels[truth == i], return_counts=True)
        assert ids[np.argmax(counts)] > 0 and counts.max() > 0.9 * counts.sum()

    widget._block.value = 4  # below the 3D blocks' smallest side: refused, the dock stays usable
    click(widget._controls.run_button)
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    assert "at least 8 voxels" in widget._controls.status.value


def test_a_given_anisotropy_scales_both_layers_for_the_3d_view(make_napari_viewer, qtbot, monkeypatch, random_unet):
    monkeypatch.setattr(predict_dock, "load_model", lambda *a, **k: blob_model())
    viewer = make_napari_viewer()
    stack = viewer.add_image(blobs()[0], name="stack")  # napari's default scale: the z step is unknown
    widget = dock(viewer, "Predict")
    widget.set_checkpoint(random_unet)
    widget._device.value = "cpu"
    widget._volume.value = True
    widget._anisotropy.value = 2.0

    click(widget._controls.run_button)
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)

    layer = viewer.layers["stack labels"]
    assert np.allclose(layer.scale, (2.0, 1.0, 1.0)) and np.allclose(stack.scale, (2.0, 1.0, 1.0))
    assert int(layer.data.max()) == 3 and "volume_um3" not in layer.features  # no µm without a voxel size


def test_the_batch_dock_writes_3d_objects_and_their_volumes(make_napari_viewer, qtbot, monkeypatch, tmp_path,
                                                            random_unet):
    import csv

    import tifffile

    import napari_seglab.core.predict as predict_pkg

    monkeypatch.setattr(predict_pkg, "load_model", lambda *a, **k: blob_model())
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    image, truth = blobs()
    tifffile.imwrite(src / "stack.tif", (image * 1000).astype(np.uint16))  # no pixel size in the file
    viewer = make_napari_viewer()
    widget = dock(viewer, "Batch")
    widget._input.value, widget._output.value, widget._model.value = src, out, random_unet
    widget._device.value = "cpu"
    widget._scheduler.value = "sync"
    widget._volume.value = True
    widget._anisotropy.value = 2.0

    click(widget._controls.run_button)
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)

    assert widget.summary is not None and widget.summary.ok == 1, widget._controls.status.value
    labels = tifffile.imread(out / "stack_labels.tif")
    assert int(labels.max()) == 3 and labels.shape == truth.shape
    with open(out / "stack_objects.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 3  # one row per nucleus


def test_an_unknown_z_step_is_a_warning_notification(make_napari_viewer, qtbot, monkeypatch, random_unet,
                                                     warnings_shown):
    monkeypatch.setattr(predict_dock, "load_model", lambda *a, **k: blob_model())
    viewer = make_napari_viewer()
    viewer.add_image(blobs()[0], name="stack")  # no scale, no anisotropy set: 1 is assumed
    widget = dock(viewer, "Predict")
    widget.set_checkpoint(random_unet)
    widget._device.value = "cpu"
    widget._volume.value = True

    click(widget._controls.run_button)
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)

    assert int(viewer.layers["stack labels"].data.max()) == 3  # it still predicts
    assert any("anisotropy 1" in text and "z step" in text for text in warnings_shown)
