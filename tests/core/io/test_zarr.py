"""Lazy 2D input (OME-Zarr, tiled and pyramidal TIFF) and OME-Zarr output published only when complete."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import zarr

from napari_seglab.core.errors import InputError
from napari_seglab.core.io import OmeZarrWriter, open_lazy
from napari_seglab.core.io._zarr import pyramid_shapes


def write_store(path, data, chunk=64, pixel_size=(0.5, 0.5)):
    with OmeZarrWriter(path, data.shape, data.dtype, chunk=chunk, pixel_size=pixel_size) as w:
        w.array[...] = data
        w.finish({"note": "test"})


def test_an_ome_zarr_written_is_read_back_with_levels_axes_and_pixel_size(tmp_path):
    data = np.arange(1300 * 700, dtype=np.int32).reshape(1300, 700)
    out = tmp_path / "labels.ome.zarr"
    write_store(out, data)
    meta = json.loads((out / "zarr.json").read_text())["attributes"]
    ms = meta["ome"]["multiscales"][0]
    assert meta["ome"]["version"] == "0.5" and [a["name"] for a in ms["axes"]] == ["y", "x"]
    assert [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]] == [[0.5, 0.5], [1.0, 1.0],
                                                                                   [2.0, 2.0]]
    group = zarr.open_group(str(out), mode="r")
    assert group["0"].chunks == (64, 64) and group["2"].shape == (325, 175)
    np.testing.assert_array_equal(group["1"][...], data[::2, ::2])  # ids survive downsampling
    lazy = open_lazy(out)
    assert lazy.shape == (1300, 700) and lazy.axes == "YX" and lazy.pixel_size == (0.5, 0.5)
    np.testing.assert_array_equal(lazy.read(slice(100, 200), slice(650, 700)), data[100:200, 650:700])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no hidden folder left
    assert pyramid_shapes((4096, 100)) == [(4096, 100), (2048, 50), (1024, 25), (512, 13)]


def test_a_failed_write_leaves_the_earlier_output_and_no_temporary_folder(tmp_path):
    out = tmp_path / "labels.ome.zarr"
    write_store(out, np.ones((64, 64), np.int32))
    with pytest.raises(KeyboardInterrupt), OmeZarrWriter(out, (64, 64), np.int32, chunk=32) as w:
        w.array[:32] = 7
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.ome.zarr"]
    assert (open_lazy(out).load() == 1).all()
    with pytest.raises(InputError, match="overwrite the input"):
        OmeZarrWriter(out, (64, 64), np.int32, protect=[out])


def test_channels_first_zarr_and_tiffs_are_read_channels_last_window_by_window(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 4000, (3, 300, 200), dtype=np.uint16)
    out = tmp_path / "rgb.ome.zarr"
    write_store(out, rgb)
    lazy = open_lazy(out)
    assert lazy.axes == "YXC" and lazy.shape == (300, 200, 3)
    np.testing.assert_array_equal(lazy.read(slice(10, 20), slice(5, 9)), np.moveaxis(rgb[:, 10:20, 5:9], 0, -1))
    plane = rgb[0]
    tiled = tmp_path / "tiled.tif"
    tifffile.imwrite(tiled, plane, tile=(64, 64), metadata={"axes": "YX"})
    lazy = open_lazy(tiled)
    assert lazy.shape == (300, 200) and lazy.dtype == np.uint16
    np.testing.assert_array_equal(lazy.read(slice(70, 140), slice(0, 200)), plane[70:140])
    pyramid = tmp_path / "pyramid.ome.tif"
    with tifffile.TiffWriter(pyramid) as tif:
        tif.write(plane, tile=(64, 64), subifds=1, metadata={"axes": "YX", "PhysicalSizeX": 0.25,
                                                             "PhysicalSizeY": 0.25})
        tif.write(plane[::2, ::2], tile=(64, 64), subfiletype=1)
    lazy = open_lazy(pyramid)
    assert lazy.shape == (300, 200) and lazy.pixel_size == (0.25, 0.25)
    np.testing.assert_array_equal(lazy.load(), plane)
    # a singleton channel axis is dropped
    single = tmp_path / "single.tif"
    tifffile.imwrite(single, plane[None], metadata={"axes": "CYX"})
    assert open_lazy(single).axes == "YX"


def test_stacks_and_missing_paths_are_refused(tmp_path):
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.zeros((4, 32, 32), np.uint16), metadata={"axes": "ZYX"})
    with pytest.raises(InputError, match="one 2D image"):
        open_lazy(stack)
    with pytest.raises(InputError, match="no such file"):
        open_lazy(tmp_path / "nothing.ome.zarr")
