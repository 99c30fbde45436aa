"""The docks' pixel size: typed in µm, or read from an image layer's scale when the user set one."""

import types

import numpy as np
import pytest
from widget_helpers import dock

from napari_seglab._layers import layer_pixel_size
from napari_seglab.core.settings import SettingError


def test_a_layer_scale_is_a_pixel_size_only_when_set():
    assert layer_pixel_size(types.SimpleNamespace(scale=(1.0, 1.0))) is None  # napari's default says nothing
    assert layer_pixel_size(types.SimpleNamespace(scale=(3.0, 0.5, 0.5))) == pytest.approx(0.5)  # a z step is not
    assert layer_pixel_size(types.SimpleNamespace(scale=(0.25, 1.0))) == pytest.approx(0.5)  # geometric mean
    assert layer_pixel_size(None) is None


def test_train_dock_pixel_size_from_the_field_or_the_layer(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = dock(viewer, "Train")
    layer = viewer.add_image(np.zeros((32, 32), np.float32), name="img", scale=(0.65, 0.65))
    widget._image.value = layer
    assert widget.config().pixel_size == pytest.approx(0.65)
    widget._pixel.value = "0.3"  # typed: wins over the layer
    assert widget.config().pixel_size == pytest.approx(0.3)
    widget._pixel.value = "-1"
    with pytest.raises(SettingError, match="pixel size"):
        widget.config()
    widget._pixel.value = "auto"
    layer.scale = (1.0, 1.0)
    assert widget.config().pixel_size is None
