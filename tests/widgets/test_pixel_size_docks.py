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


def test_predict_dock_resamples_a_layer_at_another_pixel_size(make_napari_viewer, qtbot, tiny_nuclei, tiny_model,
                                                             tmp_path):
    from widget_helpers import WAIT_MS, click

    from napari_seglab.core.models import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(tiny_model)  # the session's model, said to have learnt at 1 µm per pixel
    path = save_checkpoint(tmp_path / "at1um.pt", ckpt.build("cpu"), ckpt.info.replace(pixel_size=(1.0, 1.0)))
    viewer = make_napari_viewer()
    image = np.repeat(np.repeat(tiny_nuclei[0], 2, axis=0), 2, axis=1)
    viewer.add_image(image, name="fine", scale=(0.5, 0.5))  # placed in µm: half the model's pixel size
    widget = dock(viewer, "Predict")
    widget.set_checkpoint(path)
    widget._device.value = "cpu"
    said = []
    say = widget._controls.say
    widget._controls.say = lambda text, level="info": (said.append(text), say(text, level))
    click(widget._controls.run_button)
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    assert "pixel size 0.5 µm, the model's 1 µm: resampling the image by 0.5" in said
    assert viewer.layers["fine labels"].data.shape == image.shape


def test_train_dock_anisotropy_from_the_field_or_the_stack_layer(make_napari_viewer):
    from napari_seglab._layers import layer_anisotropy

    assert layer_anisotropy(types.SimpleNamespace(ndim=3, scale=(1.0, 1.0, 1.0))) is None  # napari's default
    assert layer_anisotropy(types.SimpleNamespace(ndim=2, scale=(0.5, 0.5))) is None  # a plane has no z step
    viewer = make_napari_viewer()
    widget = dock(viewer, "Train")
    layer = viewer.add_image(np.zeros((8, 32, 32), np.float32), name="stack", scale=(2.0, 0.5, 0.5))
    widget._image.value = layer
    # the stack's z step over its pixel size: its painted runs also teach ZX/ZY planes
    assert widget.config().anisotropy == pytest.approx(4.0)
    widget._anisotropy.value = 2.5  # typed: wins over the layer
    assert widget.config().anisotropy == pytest.approx(2.5)
    widget._anisotropy.value = 0.0
    layer.scale = (1.0, 1.0, 1.0)
    assert widget.config().anisotropy is None  # unknown: the core trains on YX planes and says so
