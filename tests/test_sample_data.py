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
