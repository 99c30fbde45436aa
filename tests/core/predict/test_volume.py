"""3D objects from a 2D instance network: the three views combined, anisotropy, T kept apart, linking."""

from __future__ import annotations

import numpy as np
import pytest
from volume3d import blob_model, blobs

from napari_seglab.core.errors import InputError
from napari_seglab.core.events import TileDone, collect, drive
from napari_seglab.core.predict._volume import (
    anisotropy_from_pixel_size,
    check_anisotropy,
    describe_axes,
    iter_predict,
    iter_predict_volume,
)

_model, _blobs = blob_model, blobs


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


def test_the_python_api_takes_a_voxel_size_or_an_anisotropy():
    from napari_seglab.core import api
    from napari_seglab.core.events import Message

    image, truth = _blobs()
    events = []
    pred = api.predict_image(_model(), image, "ZYX", volume=True, voxel_size=(1.0, 0.5, 0.5), on_event=events.append)
    assert pred.anisotropy == 2.0 and int(pred.labels.max()) == 3
    assert not [e for e in events if isinstance(e, Message) and e.level == "warning"]
    pred = api.predict_image(_model(), image, volume=True, on_event=events.append)  # axes guessed: ZYX
    assert pred.anisotropy == 1.0
    assert any(isinstance(e, Message) and "anisotropy 1" in e.text for e in events)
    with pytest.raises(InputError, match="volume=True"):
        api.predict_image(_model(), image, anisotropy=2.0)
    flat = api.predict_image(_model(), image, "ZYX")  # plane by plane, as before
    assert flat.anisotropy is None and flat.labels.shape == image.shape


def test_auto_links_the_planes_of_a_boundary_model():
    image, truth = _blobs()
    lm = _model(head="boundary", n_classes=3)
    pred = drive(iter_predict_volume(lm, image, "ZYX", anisotropy=2.0))  # method "auto"
    assert len(lm.model.planes) == image.shape[0]  # YX planes only: linked, not the three views
    assert int(pred.labels.max()) == 3
    for i in (1, 2, 3):
        ids, counts = np.unique(pred.labels[truth == i], return_counts=True)
        assert ids[np.argmax(counts)] > 0


def test_auto_takes_the_three_views_for_a_boundary_model_that_learnt_zx_zy_planes():
    from dataclasses import replace

    image, truth = _blobs()
    lm = _model(head="boundary", n_classes=3)
    lm.info = replace(lm.info, anisotropy=2.0)  # trained on the ZX/ZY planes of stacks of z step 2
    pred = drive(iter_predict_volume(lm, image, "ZYX", anisotropy=2.0))  # method "auto"
    assert len(lm.model.planes) > image.shape[0]  # the YX, ZX and ZY planes: orthogonal
    assert int(pred.labels.max()) == 3


def test_a_stack_without_a_z_step_takes_the_one_the_model_learnt_its_sections_at():
    from dataclasses import replace

    from napari_seglab.core.events import Message

    image, _ = _blobs()
    lm = _model()
    lm.info = replace(lm.info, anisotropy=2.0)  # trained on the ZX/ZY planes of stacks of z step 2
    events, pred = collect(iter_predict(lm, image, "ZYX", volume=True))
    assert pred.anisotropy == 2.0 and int(pred.labels.max()) == 3
    warned = [e.text for e in events if isinstance(e, Message) and e.level == "warning"]
    assert any("anisotropy 2" in t and "training stacks" in t for t in warned)
    # the file's voxel size, or the user's value, still comes first
    assert drive(iter_predict(lm, image, "ZYX", volume=True, pixel_size=(1.5, 0.5, 0.5))).anisotropy == 3.0
    assert drive(iter_predict(lm, image, "ZYX", volume=True, anisotropy=4.0)).anisotropy == 4.0
