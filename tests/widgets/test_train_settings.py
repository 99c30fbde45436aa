"""The Train dock's settings come from TrainConfig's declarations, like ``seglab train --help``."""

import pytest
from widget_helpers import dock

from napari_seglab.core.settings import SettingError, settings_of
from napari_seglab.core.train import DIAMETER, TrainConfig

SETTINGS = settings_of(TrainConfig)


def test_tooltips_and_ranges_are_the_declared_ones(make_napari_viewer):
    from napari_seglab.cli import build_parser

    widget = dock(make_napari_viewer(), "Train")
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    cli_help = {a.dest: a.help for a in sub.choices["train"]._actions}
    for control, name in ((widget._patch, "patch"), (widget._batch, "batch_size"), (widget._lr, "lr"),
                          (widget._preset, "preset"), (widget._head, "instance_head"),
                          (widget._weights, "class_weights"), (widget._self_training, "self_training")):
        assert control.tooltip == SETTINGS[name].text
        assert SETTINGS[name].help in cli_help[name]  # the same words in the dock and in --help
    assert widget._diameter.tooltip == DIAMETER.text
    assert (widget._steps.min, widget._steps.max) == (SETTINGS["steps_per_epoch"].low, SETTINGS["steps_per_epoch"].high)
    assert widget._gamma.max == SETTINGS["focal_gamma"].high and widget._epochs.max == SETTINGS["epochs"].high
    assert widget._time.max == SETTINGS["time_limit"].high
    assert tuple(widget._head.choices) == ("auto", *SETTINGS["instance_head"].choices)


def test_the_dock_refuses_what_the_core_refuses(make_napari_viewer):
    widget = dock(make_napari_viewer(), "Train")
    widget._lr.value = "2"
    with pytest.raises(SettingError) as from_dock:
        widget.config()
    with pytest.raises(SettingError) as from_python:
        TrainConfig(lr=2.0).check()
    assert str(from_dock.value) == str(from_python.value) == "learning rate must be a finite number in (0, 1); got 2.0"
    widget._lr.value = "auto"
    widget._diameter.value = "0"
    with pytest.raises(SettingError, match="object diameter must be a finite number from 1 to 10000 pixels"):
        widget.config()


def test_a_typed_encoder_replaces_the_preset_in_the_dock(make_napari_viewer):
    widget = dock(make_napari_viewer(), "Train")
    widget._preset.value = "accurate"
    widget._encoder.native.setEditText("resnet18")
    config = widget.config()
    assert (config.preset, config.encoder) == (None, "resnet18")


def test_self_training_follows_the_label_mode_and_family(make_napari_viewer):
    widget = dock(make_napari_viewer(), "Train")
    widget._mode.value = "objects"
    assert widget._self_training.enabled and widget.config().self_training is None  # auto: the core decides
    assert widget.config().resolve("cpu").self_training  # on for painted objects
    widget._self_training.value = "off"
    assert widget.config().self_training is False
    widget._mode.value = "scribbles"
    assert widget._self_training.enabled and not widget.config().resolve("cpu").self_training
    widget._self_training.value = "on"
    assert widget.config().self_training is True
    widget._mode.value = "instances"  # dense labels: z-stacks painted on some planes self-train in 3D
    assert widget._self_training.enabled and widget.config().self_training is True
    widget._self_training.value = "auto"
    assert widget.config().resolve("cpu").self_training
    widget._mode.value = "classes"  # nothing to add: the control is greyed out
    assert not widget._self_training.enabled and widget.config().self_training is None
