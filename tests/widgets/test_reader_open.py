"""napari opens SegLab's OME-Zarr outputs through the plugin's reader: lazy layers, placed by the store."""

from __future__ import annotations

import numpy as np

from napari_seglab.core.io import OmeZarrWriter


def test_viewer_opens_a_labels_store_lazily(make_napari_viewer, tmp_path):
    store = tmp_path / "scan_labels.ome.zarr"
    labels = np.zeros((1100, 700), np.int32)
    labels[100:300, 200:400] = 7
    with OmeZarrWriter(store, labels.shape, np.int32, chunk=256, pixel_size=(0.65, 0.65)) as out:
        out.array[:] = labels
        out.finish({"objects": 1})
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(store), plugin="napari-seglab")
    assert type(layer).__name__ == "Labels" and layer.name == "scan_labels"
    assert layer.multiscale and len(layer.data) == 3 and not isinstance(layer.data[0], np.ndarray)
    assert layer.data[0].shape == labels.shape
    assert np.allclose(layer.scale, (0.65, 0.65))
    assert int(layer.data[1][100, 150]) == 7  # level 1 keeps every second pixel's id
