"""The npe2 reader: SegLab's OME-Zarr outputs and NGFF images as lazy layers; None for anything else."""

from __future__ import annotations

import numpy as np
import pytest

from napari_seglab._reader import napari_get_reader, read_ome_zarr
from napari_seglab.core.io import OmeZarrWriter


def _labels_store(path, shape=(1200, 1000), pixel_size=(0.5, 0.5)):
    labels = (np.arange(shape[0] * shape[1]).reshape(shape) // 977 % 5).astype(np.int32)
    with OmeZarrWriter(path, shape, np.int32, chunk=256, pixel_size=pixel_size) as out:
        out.array[:] = labels
        out.finish({"objects": 4, "kind": "semantic"})
    return labels


def test_seglab_labels_come_back_as_lazy_multiscale_labels(tmp_path):
    store = tmp_path / "scan_labels.ome.zarr"
    labels = _labels_store(store)
    reader = napari_get_reader(str(store))
    assert reader is not None
    [(data, meta, kind)] = reader(str(store))
    assert kind == "labels" and meta["multiscale"] and meta["name"] == "scan_labels"
    assert [level.shape for level in data] == [(1200, 1000), (600, 500), (300, 250)]  # halved to <= 512
    assert not isinstance(data[0], np.ndarray)  # the zarr array itself: nothing read yet
    assert np.array_equal(np.asarray(data[0][:]), labels)
    assert np.array_equal(np.asarray(data[1][:]), labels[::2, ::2])
    assert meta["scale"] == [0.5, 0.5] and meta["translate"] == [0.0, 0.0]
    # a list of one path, as napari may pass it
    assert napari_get_reader([str(store)]) is not None


def test_probabilities_are_an_image_per_class(tmp_path):
    store = tmp_path / "p.ome.zarr"
    with OmeZarrWriter(store, (3, 40, 50), np.float32, chunk=32, name="probabilities") as out:
        out.array[1] = 0.25
        out.finish({})
    [(data, meta, kind)] = read_ome_zarr(store)
    assert kind == "image" and meta["channel_axis"] == 0 and meta["name"] == ["p 0", "p 1", "p 2"]
    assert data.shape == (3, 40, 50) and meta["scale"] == [1.0, 1.0]
    assert float(data[1, 0, 0]) == 0.25


def _ngff04(path, image, label):
    """An NGFF 0.4 (zarr format 2) image (c, y, x) at 0.3 µm with a 'labels/cells' label image."""
    import zarr

    axes = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", "unit": "micrometer"},
            {"name": "x", "type": "space", "unit": "micrometer"}]
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.create_array("0", data=image, chunks=(1, 32, 32))
    root.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 0.3, 0.3]},
                                                    {"type": "translation", "translation": [0.0, 3.0, 6.0]}]}]}]
    group = root.create_group("labels")
    group.attrs["labels"] = ["cells"]
    cells = group.create_group("cells")
    cells.create_array("0", data=label, chunks=(32, 32))
    cells.attrs["image-label"] = {"version": "0.4"}
    cells.attrs["multiscales"] = [{"version": "0.4", "axes": axes[1:], "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [0.3, 0.3]}]}]}]


def test_an_ngff_04_image_with_labels(tmp_path):
    image = np.random.default_rng(0).integers(0, 999, (2, 64, 80), dtype=np.uint16)
    label = np.zeros((64, 80), np.uint16)
    label[10:20, 10:30] = 3
    store = tmp_path / "cells.zarr"
    _ngff04(store, image, label)
    layers = napari_get_reader(str(store))(str(store))
    assert [kind for _d, _m, kind in layers] == ["image", "labels"]
    data, meta, _ = layers[0]
    assert meta["channel_axis"] == 0 and meta["name"] == ["cells 0", "cells 1"] and not meta["multiscale"]
    assert meta["scale"] == [0.3, 0.3] and meta["translate"] == [3.0, 6.0]  # the channel axis dropped
    assert np.array_equal(np.asarray(data[:]), image)
    data, meta, _ = layers[1]
    assert meta["name"] == "cells" and np.array_equal(np.asarray(data[:]), label)


@pytest.mark.parametrize("what", ["empty folder", "plain zarr array", "zarr group without metadata", "file",
                                  "missing", "two paths"])
def test_anything_else_is_left_to_other_readers(tmp_path, what):
    import zarr

    path = tmp_path / "x.zarr"
    if what == "empty folder":
        path.mkdir()
    elif what == "plain zarr array":
        zarr.open_array(str(path), mode="w", shape=(8, 8), dtype="u1")
    elif what == "zarr group without metadata":
        zarr.open_group(str(path), mode="w").create_array("0", shape=(8, 8), dtype="u1")
    elif what == "file":
        path.write_bytes(b"not a store")
    if what == "two paths":
        _labels_store(path, shape=(16, 16))
        assert napari_get_reader([str(path), str(path)]) is None
    else:
        assert napari_get_reader(str(path)) is None
    assert read_ome_zarr(tmp_path / "nothing.zarr") == []
