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


def test_the_predict_dock_shows_a_store_as_a_multiscale_layer_over_the_image(make_napari_viewer, tmp_path):
    from napari_seglab._widgets._predict_blocks import show_store

    store = tmp_path / "out.ome.zarr"
    with OmeZarrWriter(store, (1100, 700), np.int32, chunk=256) as out:
        out.finish({"objects": 0})
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((1, 1100, 700), np.uint8), name="scan", scale=(5.0, 0.5, 0.25),
                             translate=(0.0, 8.0, 4.0))
    earlier = viewer.add_labels(np.zeros((1, 1100, 700), np.uint8), name="scan labels",
                                metadata={"seglab_layer": "scan labels"})  # an earlier output of SegLab's
    layer = show_store(viewer, store, "scan labels", image, colors="semantic")
    assert earlier not in viewer.layers and [lay.name for lay in viewer.layers].count("scan labels") == 1
    assert layer.multiscale and [level.shape for level in layer.data] == [(1100, 700), (550, 350), (275, 175)]
    assert np.allclose(layer.scale, (0.5, 0.25)) and np.allclose(layer.translate, (8.0, 4.0))
    assert layer.metadata["seglab_store"] == str(store)
