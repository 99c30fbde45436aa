"""The Predict and Batch docks show the settings as ``seglab predict`` / ``seglab batch`` declare them."""

from widget_helpers import dock

from napari_seglab.core.predict import BatchOptions, PredictOptions
from napari_seglab.core.settings import settings_of


def test_predict_dock_tooltips_are_the_declared_settings(make_napari_viewer):
    widget = dock(make_napari_viewer(), "Predict")
    declared = settings_of(PredictOptions)
    for control, name in ((widget._tile, "tile"), (widget._overlap, "overlap"), (widget._split, "split_instances"),
                          (widget._tta, "tta"), (widget._device, "device")):
        assert control.tooltip == declared[name].text
    assert widget._tile.max == declared["tile"].high
    assert widget._threshold.tooltip.startswith(declared["score_threshold"].text)


def test_batch_dock_tooltips_are_the_declared_settings(make_napari_viewer):
    widget = dock(make_napari_viewer(), "Batch")
    declared = settings_of(BatchOptions)
    for control, name in ((widget._pattern, "pattern"), (widget._recursive, "recursive"),
                          (widget._probabilities, "probabilities"), (widget._skip, "skip_existing"),
                          (widget._device, "device")):
        assert control.tooltip == declared[name].text
    assert declared["workers"].auto in widget._workers.tooltip
