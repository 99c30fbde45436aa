"""Microscope files through one read_image: OME-TIFF series and pyramids, LIF, CZI, ND2; axes and pixel sizes.

LIF and CZI files are written by the minimal writers in ``microscope_files`` (neither liffile nor
czifile writes, and their sdists ship no test images); OME-TIFF by tifffile. The nd2 package has no
writer and ships no test file, and the ND2 layout (a chunk map and binary metadata) is no small
file to forge, so the ND2 reader is tested against the nd2 package's ND2File replaced at its
boundary, plus a real parse of a damaged file.
"""

import sys
import types
from collections import namedtuple

import numpy as np
import pytest
import tifffile
from microscope_files import write_czi, write_lif

from napari_seglab.core.errors import InputError
from napari_seglab.core.io import read_image

RNG = np.random.default_rng(0)


def _u16(*shape):
    return RNG.integers(0, 4000, shape).astype(np.uint16)


def test_ome_tiff_series_and_pyramid_levels(tmp_path):
    first, second = _u16(64, 48), _u16(3, 32, 40)
    path = tmp_path / "multi.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(first, subifds=2, tile=(16, 16),
                 metadata={"axes": "YX", "Name": "overview", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
        tw.write(first[::2, ::2], subfiletype=1, tile=(16, 16))
        tw.write(first[::4, ::4], subfiletype=1, tile=(16, 16))
        tw.write(second, metadata={"axes": "ZYX", "Name": "stack", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2,
                                   "PhysicalSizeZ": 1.5})
    image = read_image(path)  # the first series, at its full resolution
    assert image.axes == "YX" and np.array_equal(image.data, first) and image.pixel_size == (0.5, 0.5)
    image = read_image(path, scene=0)
    assert np.array_equal(image.data, first)  # the pyramid's level 0, not a reduced level
    stack = read_image(path, scene=1)
    assert stack.axes == "ZYX" and np.array_equal(stack.data, second)
    assert stack.pixel_size == pytest.approx((1.5, 0.2, 0.2))
    assert np.array_equal(read_image(path, scene="stack").data, second)
    with pytest.raises(InputError, match=r"series 2 asked for, but the file holds 2 \(series 0..1\)"):
        read_image(path, scene=2)


def test_channel_choice(tmp_path):
    rgbish = _u16(2, 24, 32)
    tifffile.imwrite(tmp_path / "c.ome.tif", rgbish, ome=True, metadata={"axes": "CYX"})
    image = read_image(tmp_path / "c.ome.tif", channel=1)
    assert image.axes == "YX" and np.array_equal(image.data, rgbish[1])
    with pytest.raises(InputError, match="channel 2 asked for, but the image has 2"):
        read_image(tmp_path / "c.ome.tif", channel=2)


def test_lif_images_by_index_and_name(tmp_path):
    plane, stack = _u16(24, 32), _u16(3, 2, 20, 28)  # ZCYX
    path = write_lif(tmp_path / "exp.lif", [("overview", plane, "YX", {"X": 0.5, "Y": 0.5}),
                                            ("zstack", stack, "ZCYX", {"X": 0.25, "Y": 0.25, "Z": 2.0})])
    image = read_image(path)
    assert image.axes == "YX" and np.array_equal(image.data, plane)
    assert image.pixel_size == pytest.approx((0.5, 0.5))
    image = read_image(path, scene="zstack")
    assert image.axes == "ZYXC" and np.array_equal(image.data, stack.transpose(0, 2, 3, 1))
    assert image.pixel_size == pytest.approx((2.0, 0.25, 0.25))
    one = read_image(path, scene=1, channel=1)
    assert one.axes == "ZYX" and np.array_equal(one.data, stack[:, 1])
    with pytest.raises(InputError, match="no image named 'nope'; its images: overview, zstack"):
        read_image(path, scene="nope")


def test_czi_scenes_and_channels(tmp_path):
    data = _u16(2, 3, 24, 32)  # SCYX: two scenes of three channels
    path = write_czi(tmp_path / "slide.czi", data, "SCYX", {"X": 0.4, "Y": 0.4})
    image = read_image(path, scene=1)
    assert image.axes == "YXC" and np.array_equal(image.data, data[1].transpose(1, 2, 0))
    assert image.pixel_size == pytest.approx((0.4, 0.4))
    assert np.array_equal(read_image(path).data, data[0].transpose(1, 2, 0))
    stack = _u16(4, 24, 32)
    image = read_image(write_czi(tmp_path / "z.czi", stack, "ZYX", {"X": 0.1, "Y": 0.1, "Z": 0.5}))
    assert image.axes == "ZYX" and np.array_equal(image.data, stack)
    assert image.pixel_size == pytest.approx((0.5, 0.1, 0.1))
    with pytest.raises(InputError, match="scene 5 asked for, but the file holds 2"):
        read_image(path, scene=5)


class _FakeND2:
    """The part of nd2.ND2File the reader uses: sizes, dtype, to_dask, voxel_size, metadata."""

    data = None
    calibrated = True

    def __init__(self, path):
        self.sizes = {"P": 2, "Z": 3, "C": 2, "Y": 16, "X": 20}
        self.dtype = np.dtype(np.uint16)
        volume = types.SimpleNamespace(axesCalibrated=(self.calibrated, self.calibrated, True))
        self.metadata = types.SimpleNamespace(channels=[types.SimpleNamespace(volume=volume)])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def to_dask(self):
        return self.data

    def voxel_size(self):
        size = namedtuple("VoxelSize", "x y z")
        return size(0.65, 0.65, 2.0) if self.calibrated else size(1.0, 1.0, 1.0)


def test_nd2_positions_axes_and_voxel_size(tmp_path, monkeypatch):
    _FakeND2.data = _u16(2, 3, 2, 16, 20)
    monkeypatch.setitem(sys.modules, "nd2", types.SimpleNamespace(ND2File=_FakeND2))
    (tmp_path / "a.nd2").write_bytes(b"fake")
    image = read_image(tmp_path / "a.nd2", scene=1)
    assert image.axes == "ZYXC" and np.array_equal(image.data, _FakeND2.data[1].transpose(0, 2, 3, 1))
    assert image.pixel_size == pytest.approx((2.0, 0.65, 0.65))
    with pytest.raises(InputError, match="position 2 asked for, but the file holds 2"):
        read_image(tmp_path / "a.nd2", scene=2)
    monkeypatch.setattr(_FakeND2, "calibrated", False)  # nd2 says 1 µm where the file records nothing
    assert read_image(tmp_path / "a.nd2").pixel_size is None


@pytest.mark.parametrize("suffix", [".nd2", ".lif", ".czi"])
def test_damaged_files_give_one_line(tmp_path, suffix):
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(b"\x00garbage" * 64)
    with pytest.raises(InputError) as err:
        read_image(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert f"not a readable {suffix[1:].upper()} file" in str(err.value)


def test_other_axes_and_unknown_files(tmp_path):
    tiles = _u16(2, 24, 32)  # a mosaic axis SegLab does not stitch: refused with its name
    path = write_lif(tmp_path / "tiles.lif", [("scan", tiles, "MYX", {"X": 0.5, "Y": 0.5})])
    with pytest.raises(InputError, match=r"a mosaic tile axis \('M'\) of 2"):
        read_image(path)
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 32)
    with pytest.raises(InputError, match=r"not a TIFF, and \.png is no other format"):
        read_image(tmp_path / "x.png")
    tifffile.imwrite(tmp_path / "t.tif", tiles)
    with pytest.raises(InputError, match="scene must be an index from 0"):
        read_image(tmp_path / "t.tif", scene=-1)


def test_axes_given_by_the_user(tmp_path):
    planes = _u16(5, 24, 32)  # a plain TIFF's five planes read as Z; they are channels
    tifffile.imwrite(tmp_path / "p.tif", planes)
    assert read_image(tmp_path / "p.tif").axes == "ZYX"
    image = read_image(tmp_path / "p.tif", axes="cyx")
    assert image.axes == "YXC" and np.array_equal(image.data, planes.transpose(1, 2, 0))
    assert read_image(tmp_path / "p.tif", axes="CYX", channel=2).data.shape == (24, 32)
    with pytest.raises(InputError, match=r"axes 'YX' do not describe its 5x24x32 image"):
        read_image(tmp_path / "p.tif", axes="YX")
    with pytest.raises(InputError, match="one letter of T, Z, C, Y, X"):
        read_image(tmp_path / "p.tif", axes="CCX")
