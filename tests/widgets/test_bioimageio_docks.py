"""bioimage.io in the docks: Train exports the kept model as a tested package; Predict takes a package."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from packages import build_package, expected_foreground, require_bioimageio, tiny_checkpoint
from widget_helpers import WAIT_MS, click, dock

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")


def test_predict_dock_runs_a_bioimageio_package(make_napari_viewer, qtbot, tmp_path):
    require_bioimageio()
    package = build_package(tmp_path / "pkg")
    image = tifffile.imread("sample_data/nuclei_test.tif")[:100, :130]
    viewer = make_napari_viewer()
    viewer.add_image(image, name="cells")
    widget = dock(viewer, "Predict")
    widget.set_checkpoint(package)
    assert "bioimage.io package 'bright pixels' (torchscript weights)" in widget._about.value
    widget._device.value = "cpu"

    click(widget._controls.run_button)
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)

    labels = viewer.layers["cells labels"].data
    assert np.mean((labels > 0) == expected_foreground(image.astype(np.float64))) > 0.999


def test_train_dock_exports_the_kept_model_as_a_tested_package(make_napari_viewer, qtbot, tmp_path):
    require_bioimageio()
    image = tifffile.imread("sample_data/nuclei_test.tif")[:100, :130]
    viewer = make_napari_viewer()
    layer = viewer.add_image(image, name="cells")
    widget = dock(viewer, "Train")
    assert not widget.export.button.enabled  # nothing trained yet
    widget.last_checkpoint = tiny_checkpoint(tmp_path / "model.pt")
    widget._target = (layer, "YX", (), image.shape, None)  # what a run leaves: the image it trained on
    widget.export_package()
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)

    status = widget._controls.status.value
    assert status.startswith("bioimage.io test passed") and str(tmp_path / "model.zip") in status
    assert (tmp_path / "model.zip").is_file() and widget.export.button.enabled
