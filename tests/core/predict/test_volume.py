"""3D objects from a 2D instance network: the three views combined, anisotropy, T kept apart, linking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_seglab.core.device import precision_for
from napari_seglab.core.errors import InputError
from napari_seglab.core.events import TileDone, collect, drive
from napari_seglab.core.models import CheckpointMeta, ModelSpec
from napari_seglab.core.predict._image import LoadedModel
from napari_seglab.core.predict._volume import (
    anisotropy_from_pixel_size,
    check_anisotropy,
    describe_axes,
    iter_predict_volume,
)

CPU = torch.device("cpu")


class BrightIsNear(torch.nn.Module):
    """A 'distance head': foreground where the (normalised) input is bright, distance = the input itself."""

    def __init__(self):
        super().__init__()
        self.planes: list[tuple[int, int]] = []

    def forward(self, x):
        self.planes.append(tuple(x.shape[-2:]))
        return torch.cat([20 * (x - 0.3), x], 1)


def _model(head="distance", label_mode="instances", n_classes=2):
    spec = ModelSpec(family="unet", arch="Unet", encoder="resnet18", n_classes=n_classes,
                     options={"head": head} if head != "boundary" else {})
    meta = CheckpointMeta.coerce({"model": spec.to_dict(), "label_mode": label_mode, "n_classes": n_classes,
                                  "normalization": {"per_image": False, "lo": [0.0], "hi": [1.0]}})
    return LoadedModel(BrightIsNear(), meta, CPU, precision_for(CPU))


def _blobs(shape=(12, 48, 48), anisotropy=2.0, centres=((5, 14, 14), (6, 30, 32), (6, 14, 34))):
    """Gaussian nuclei (radius ~6 px laterally) in an anisotropic stack, and their true masks."""
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]].astype(np.float32)
    image = np.zeros(shape, np.float32)
    truth = np.zeros(shape, np.int32)
    for i, (cz, cy, cx) in enumerate(centres, start=1):
        d2 = ((zz - cz) * anisotropy) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2
        image = np.maximum(image, np.exp(-d2 / (2 * 4.0 ** 2)))
        truth[(d2 < 6.0 ** 2) & (truth == 0)] = i
    return image, truth


def test_every_blob_is_one_object_through_its_planes():
    image, truth = _blobs()
    lm = _model()
    events, pred = collect(iter_predict_volume(lm, image, "ZYX", anisotropy=2.0))
    labels = pred.labels
    assert labels.shape == image.shape and labels.dtype == np.int32 and not pred.stopped
    assert int(labels.max()) == 3
    for i in (1, 2, 3):  # one predicted id covers each nucleus on all of its planes
        ids, counts = np.unique(labels[truth == i], return_counts=True)
        assert ids[np.argmax(counts)] > 0 and counts.max() > 0.9 * counts.sum()
        assert len(np.unique(np.nonzero(labels == ids[np.argmax(counts)])[0])) >= 3
    # the network saw YX, ZX and ZY planes of the isotropic (z x 2) stack, padded to multiples of 32
    tiles = [e for e in events if isinstance(e, TileDone)]
    assert tiles[-1].planes == 24 + 48 + 48 == len(lm.model.planes)
    assert lm.model.planes.count((64, 64)) == 24 and lm.model.planes.count((32, 64)) == 96


def test_linked_planes_give_one_id_per_blob_too():
    image, truth = _blobs()
    pred = drive(iter_predict_volume(_model(), image, "ZYX", method="linked"))
    assert int(pred.labels.max()) == 3
    assert set(np.unique(pred.labels[truth > 0])) - {0} == {1, 2, 3}


def test_time_stays_apart_from_depth():
    image, _ = _blobs()
    movie = np.stack([image, image[:, :, ::-1]])  # T, Z, Y, X
    pred = drive(iter_predict_volume(_model(), movie, "TZYX", anisotropy=2.0))
    assert pred.labels.shape == movie.shape
    # each time point numbers its own objects
    assert int(pred.labels[0].max()) == int(pred.labels[1].max()) == 3
    assert np.array_equal(pred.labels[1] > 0, (pred.labels[0] > 0)[:, :, ::-1])


def test_a_stop_returns_what_is_done():
    import threading

    stop = threading.Event()
    stop.set()
    pred = drive(iter_predict_volume(_model(), _blobs()[0], "ZYX", stop=stop))
    assert pred.stopped and not pred.labels.any()


def test_refusals_are_one_line():
    image, _ = _blobs()
    with pytest.raises(InputError, match="Z axis"):
        drive(iter_predict_volume(_model(), image, "TYX"))
    with pytest.raises(InputError, match="instance model"):
        drive(iter_predict_volume(_model(head="boundary", label_mode="scribbles"), image, "ZYX"))
    with pytest.raises(InputError, match="3D method"):
        drive(iter_predict_volume(_model(), image, "ZYX", method="cubes"))
    for bad in (0, -1, float("nan"), "2", True):
        with pytest.raises(InputError, match="anisotropy"):
            check_anisotropy(bad)


def test_anisotropy_from_the_pixel_size_and_the_axes_line():
    assert anisotropy_from_pixel_size((2.0, 0.5, 0.5), "ZYX") == 4.0
    assert anisotropy_from_pixel_size((2.0, 0.5, 0.5), "TZYXC") == 4.0
    assert anisotropy_from_pixel_size((0.5, 0.5), "YX") is None
    assert anisotropy_from_pixel_size(None, "ZYX") is None
    assert describe_axes("TZYX", True) == "T as time, plane by plane, Z as depth (3D objects), YX as the plane"
