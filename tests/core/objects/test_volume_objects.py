"""3D objects: linking 2D objects across planes, decoding 3D flow / distance / boundary fields."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_seglab.core.errors import InputError
from napari_seglab.core.evaluate import match_instances
from napari_seglab.core.objects import boundary_targets
from napari_seglab.core.objects._flows import FLOW_SCALE
from napari_seglab.core.objects._volume import decode_volume, link_planes
from napari_seglab.core.synthetic import make_nuclei_3d


@pytest.fixture(scope="module")
def truth():
    return make_nuclei_3d((16, 64, 64), seed=2, anisotropy=1.0)[1].astype(np.int64)


def test_linking_gives_one_id_through_the_planes():
    stack = np.zeros((5, 20, 20), np.int32)
    stack[0:4, 2:8, 2:8] = 1          # a column
    stack[1:5, 10:16, 10:16] = 2      # another
    per_plane = np.where(stack > 0, stack + 10 * np.arange(5)[:, None, None], 0)  # unrelated ids per plane
    linked = link_planes(per_plane)
    assert int(linked.max()) == 2
    assert match_instances(linked, stack)["ap90"] == 1.0


def test_linking_needs_overlap_and_is_one_to_one():
    stack = np.zeros((2, 20, 20), np.int32)
    stack[0, 2:12, 2:12] = 1           # one large object above
    stack[1, 2:12, 2:7] = 2            # two halves below: only one continues it
    stack[1, 2:12, 7:12] = 3
    linked = link_planes(stack)
    assert int(linked.max()) == 2  # one half continues the object above, the other starts a new one
    assert len(np.unique(linked[1][linked[1] > 0])) == 2
    shifted = np.zeros((2, 20, 20), np.int32)
    shifted[0, 0:4, 0:4] = 1
    shifted[1, 3:7, 3:7] = 1           # touches by one pixel: IoU far below 0.25
    assert int(link_planes(shifted).max()) == 2
    with pytest.raises(InputError):
        link_planes(np.zeros((4, 4), np.int32))


def _centre_flows(truth):
    out = np.zeros((4, *truth.shape), np.float32)
    out[0] = np.where(truth > 0, 8.0, -8.0)
    centres = np.array(ndi.center_of_mass(truth > 0, truth, np.arange(1, truth.max() + 1)))
    zz, yy, xx = np.nonzero(truth)
    v = centres[truth[zz, yy, xx] - 1] - np.stack([zz, yy, xx], 1)
    v /= np.linalg.norm(v, axis=1, keepdims=True) + 1e-6
    out[1:, zz, yy, xx] = v.T * FLOW_SCALE
    return out


def _distance(truth):
    d = np.zeros(truth.shape, np.float32)
    for i, sl in enumerate(ndi.find_objects(truth), start=1):
        m = truth[sl] == i
        e = ndi.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1, 1:-1]
        d[sl][m] = e[m] / e.max()
    return np.stack([np.where(truth > 0, 8.0, -8.0), d]).astype(np.float32)


@pytest.mark.parametrize("head", ["flows", "distance", "boundary"])
def test_perfect_3d_fields_decode_to_the_touching_nuclei(truth, head):
    if head == "flows":
        field = _centre_flows(truth)
    elif head == "distance":
        field = _distance(truth)
    else:
        b = boundary_targets(truth)
        field = np.stack([b == k for k in range(3)]).astype(np.float32)
    decoded = decode_volume(field, head)
    assert decoded.shape == truth.shape and decoded.dtype == np.int32
    score = match_instances(decoded, truth)
    assert score["ap75"] > 0.9, score


def test_linking_the_true_planes_gives_the_touching_nuclei_back(truth):
    # the truth cut into planes with unrelated ids: caps (a nucleus' small first and last sections) must
    # continue their nucleus, and touching neighbours must not take each other's ids
    per_plane = np.where(truth > 0, truth + 1000 * np.arange(truth.shape[0])[:, None, None], 0)
    assert match_instances(link_planes(per_plane), truth)["ap75"] > 0.9


def test_bad_fields_are_refused():
    with pytest.raises(InputError):
        decode_volume(np.zeros((3, 4, 4, 4), np.float32), "flows")
    with pytest.raises(InputError):
        decode_volume(np.zeros((2, 4, 4, 4), np.float32), "stars")


def test_3d_measurements_volume_centroid_extent():
    from napari_seglab.core.objects import measure_objects

    lab = np.zeros((6, 10, 12), np.int32)
    lab[1:4, 2:6, 3:8] = 5  # 3 x 4 x 5 voxels
    (row,) = measure_objects(lab, pixel_size=(2.0, 0.5, 0.5))
    assert row["label"] == 5 and row["area"] == 60
    assert row["volume_um3"] == pytest.approx(60 * 0.5)
    assert (row["extent_z"], row["extent_y"], row["extent_x"]) == (3, 4, 5)
    assert (row["centroid_z"], row["centroid_y"], row["centroid_x"]) == pytest.approx((2.0, 3.5, 5.0))
    assert "volume_um3" not in measure_objects(lab)[0]  # unknown voxel size: voxels only
    assert "volume_um3" not in measure_objects(lab, pixel_size=(0.5, 0.5))[0]  # no z step: no µm³
    assert "extent_z" not in measure_objects(lab[2])[0]  # 2D objects keep their 2D columns
    with pytest.raises(InputError):
        measure_objects(lab, pixel_size=(2.0, -0.5, 0.5))


def test_following_the_flows_in_chunks_of_points_changes_nothing(truth, monkeypatch):
    from napari_seglab.core.objects import _volume

    rng = np.random.default_rng(0)
    field = _centre_flows(truth)
    field[1:] += ndi.gaussian_filter(rng.normal(size=field[1:].shape), (0, 2, 2, 2)).astype(np.float32) * 10
    field_before = field.copy()
    at_once = decode_volume(field, "flows")
    monkeypatch.setattr(_volume, "FOLLOW_CHUNK", 997)  # many chunks, the last one short
    assert np.array_equal(decode_volume(field, "flows"), at_once)
    assert np.array_equal(field, field_before)  # the caller's field is left as it was
    assert int(at_once.max()) > 5
