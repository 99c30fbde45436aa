"""npe2 sample-data functions return valid LayerDataTuples."""

from __future__ import annotations

import numpy as np

from napari_seglab import _sample_data


def _check_tuples(layers, kinds):
    assert [t[2] for t in layers] == kinds
    for data, meta, kind in layers:
        assert isinstance(data, np.ndarray) and isinstance(meta, dict) and "name" in meta
        if kind == "labels":
            assert np.issubdtype(data.dtype, np.integer)
    shapes = {t[0].shape for t in layers}
    assert len(shapes) == 1
    return layers


def test_nuclei_with_scribbles():
    (img, meta, _), (scr, smeta, _) = _check_tuples(
        _sample_data.nuclei_with_scribbles(), ["image", "labels"]
    )
    assert img.shape == (256, 512) and meta["name"] == "nuclei"
    assert smeta["name"] == "scribbles" and set(np.unique(scr)) <= {0, 1, 2}


def test_nuclei_with_instances():
    (img, _, _), (inst, meta, _) = _check_tuples(
        _sample_data.nuclei_with_instances(), ["image", "labels"]
    )
    assert meta["name"] == "instances" and inst.max() > 50


def test_nuclei_stack():
    ((stack, meta, kind),) = _sample_data.nuclei_stack()
    assert kind == "image" and stack.shape == (8, 128, 128) and stack.dtype == np.uint16
    assert len(meta["scale"]) == stack.ndim


def test_generates_when_files_are_missing(monkeypatch):
    monkeypatch.setattr(_sample_data, "_read_sample", lambda name: None)
    _check_tuples(_sample_data.nuclei_with_scribbles(), ["image", "labels"])
    ((stack, _, _),) = _sample_data.nuclei_stack()
    assert stack.shape == (8, 128, 128)


def test_samples_name_their_axes_and_colour_the_scribbles():
    (_img, meta, _), (_scr, smeta, _) = _sample_data.nuclei_with_scribbles()
    assert meta["axis_labels"] == ("y", "x") and smeta["axis_labels"] == ("y", "x")
    colors = smeta["colormap"]
    assert colors[0] == "transparent" and colors[1] != colors[2]  # background and nucleus strokes differ
    ((_stack, stack_meta, _),) = _sample_data.nuclei_stack()
    assert stack_meta["axis_labels"] == ("z", "y", "x")


def test_the_stack_sample_shows_named_axes_in_napari(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-seglab", "nuclei_stack")
    assert tuple(viewer.dims.axis_labels) == ("z", "y", "x")
