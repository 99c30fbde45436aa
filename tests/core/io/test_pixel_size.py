"""Physical pixel sizes read from the metadata microscopes and ImageJ write, and kept by checkpoints."""

import numpy as np
import pytest
import tifffile

from napari_seglab.core.io import read_image, read_pixel_sizes, spatial_pixel_size
from napari_seglab.core.models import CheckpointMeta, ModelSpec


def test_imagej_stack_gives_z_step_and_xy_size(tmp_path):
    stack = np.zeros((4, 32, 40), np.uint16)
    tifffile.imwrite(tmp_path / "ij.tif", stack, imagej=True, resolution=(1 / 0.325, 1 / 0.325),
                     metadata={"spacing": 2.0, "unit": "um", "axes": "ZYX"})
    image = read_image(tmp_path / "ij.tif")
    assert image.axes == "ZYX"
    assert image.pixel_size == pytest.approx((2.0, 0.325, 0.325), rel=1e-3)


def test_ome_tiff_sizes_in_other_units(tmp_path):
    tifffile.imwrite(tmp_path / "o.tif", np.zeros((32, 40), np.uint8), ome=True,
                     metadata={"axes": "YX", "PhysicalSizeX": 650.0, "PhysicalSizeXUnit": "nm",
                               "PhysicalSizeY": 0.65, "PhysicalSizeYUnit": "µm"})
    assert read_image(tmp_path / "o.tif").pixel_size == pytest.approx((0.65, 0.65))


def test_plain_tiff_dpi_is_not_a_pixel_size(tmp_path):
    # a scanner's 300 dpi is no microscope calibration: the size stays unknown
    tifffile.imwrite(tmp_path / "p.tif", np.zeros((32, 40), np.uint8), resolution=(300, 300),
                     resolutionunit="INCH")
    assert read_image(tmp_path / "p.tif").pixel_size is None
    assert read_pixel_sizes(tmp_path / "missing.tif") == {}


def test_a_stack_without_z_step_has_no_size():
    assert spatial_pixel_size({"X": 0.5, "Y": 0.5}, "ZYX") is None
    assert spatial_pixel_size({"X": 0.5, "Y": 0.5}, "TYXC") == (0.5, 0.5)


def test_checkpoint_meta_round_trips_the_pixel_size():
    meta = CheckpointMeta(model=ModelSpec(), pixel_size=(2.0, 0.325, 0.325))
    on_disk = meta.to_dict()
    assert on_disk["pixel_size"] == [2.0, 0.325, 0.325]
    assert CheckpointMeta.from_dict(on_disk).pixel_size == (2.0, 0.325, 0.325)
    assert "pixel_size" not in CheckpointMeta(model=ModelSpec()).to_dict()
