"""TrainWidget on a large or lazy image layer: it trains on the painted area (plus a patch), never the whole layer."""

from __future__ import annotations

import numpy as np
from widget_helpers import WAIT_MS, Guarded, click, dock, set_tiny_training

from napari_seglab._widgets import _lazy


def _painted(shape=(256, 256), area=(slice(100, 180), slice(60, 150))):
    from napari_seglab.core.synthetic import make_nuclei, make_scribbles

    image, instances = make_nuclei(shape, seed=3)
    strokes = make_scribbles(instances, seed=3, n_objects=40, n_background=40)
    painted = np.zeros_like(strokes)
    painted[area] = strokes[area]
    return image, painted


def test_a_lazy_layer_trains_on_its_painted_area(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    image, painted = _painted()
    rows, cols = np.nonzero(painted)
    guarded = Guarded(image)
    lazy = viewer.add_image(guarded, name="scan", contrast_limits=(0, int(image.max())), scale=(0.5, 0.5),
                            translate=(10.0, 20.0))
    viewer.add_labels(painted, name="paint", scale=(0.5, 0.5), translate=(10.0, 20.0))
    widget = dock(viewer, "Train")
    set_tiny_training(widget, tmp_path / "model.pt")
    assert widget._image.value is lazy

    click(widget._controls.run_button)
    assert "large layer: training on its painted area" in widget._controls.status.value
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)

    # the painted box grown by one 64 px patch, within the image
    y0, y1 = max(0, rows.min() - 64), min(256, rows.max() + 1 + 64)
    x0, x1 = max(0, cols.min() - 64), min(256, cols.max() + 1 + 64)
    assert (y1 - y0) * (x1 - x0) < image.size  # the test means something: the crop is smaller
    assert (y1 - y0) * (x1 - x0) in guarded.worker_reads  # the crop is read by the worker, not the GUI thread
    prediction = viewer.layers["scan prediction"]
    assert prediction.data.shape == (y1 - y0, x1 - x0)
    assert np.allclose(prediction.scale, (0.5, 0.5))
    assert np.allclose(prediction.translate, (10.0 + 0.5 * y0, 20.0 + 0.5 * x0))  # over the crop
    status = widget._controls.status.value
    assert status.startswith("done:") and "the prediction covers the trained crop" in status, status
    assert (tmp_path / "model.pt").is_file()
    assert not widget._correct.enabled  # a crop's prediction is not a correction of the layer


def test_painted_box_reads_bands():
    labels = np.zeros((2500, 40), np.uint8)
    labels[1030, 7] = labels[2100, 30] = 2
    assert _lazy.painted_box(labels) == (slice(1030, 2101), slice(7, 31))
    assert _lazy.painted_box(np.zeros((5, 5), np.uint8)) is None
    assert _lazy.grown((slice(3, 10), slice(0, 4)), 5, (12, 6)) == (slice(0, 12), slice(0, 6))


def test_a_painted_area_too_large_or_empty_is_refused(make_napari_viewer, monkeypatch, errors, tmp_path):
    viewer = make_napari_viewer()
    image, painted = _painted()
    viewer.add_image([Guarded(image), image[::2, ::2]], multiscale=True, name="scan",
                     contrast_limits=(0, int(image.max())))
    labels = viewer.add_labels(painted, name="paint")
    widget = dock(viewer, "Train")
    set_tiny_training(widget, tmp_path / "model.pt")
    monkeypatch.setattr(_lazy, "LARGE_PIXELS", 100 * 100)  # a "large" area at test size

    click(widget._controls.run_button)
    assert not widget.busy
    assert len(errors) == 1 and "the painted area of 'paint' spans" in errors[0], errors
    assert "at most 100x100 pixels" in errors[0]

    labels.data = np.zeros_like(painted)
    click(widget._controls.run_button)
    assert not widget.busy and "nothing painted in 'paint'" in errors[-1]
    assert "scan prediction" not in viewer.layers and not (tmp_path / "model.pt").exists()
