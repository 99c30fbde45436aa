"""The Predict dock takes a bioimage.io model package as its model file."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from packages import build_package, expected_foreground, require_bioimageio
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
