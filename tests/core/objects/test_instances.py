"""Instances from predictions, boundary targets, measurements and boxes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_seglab.core.errors import InputError
from napari_seglab.core.evaluate import match_instances
from napari_seglab.core.objects import (
    boundary_targets,
    boxes_from_labels,
    instances_from_foreground,
    instances_from_probabilities,
    measure_objects,
    otsu_watershed,
    summarize_objects,
)
from napari_seglab.core.synthetic import make_nuclei


def _two_touching_squares():
    lab = np.zeros((20, 30), np.uint16)
    lab[5:15, 5:15] = 1
    lab[5:15, 15:25] = 2
    return lab


def test_boundary_targets_separate_touching_squares():
    lab = _two_touching_squares()
    target = boundary_targets(lab)
    assert target.dtype == np.int64
    assert set(np.unique(target)) == {0, 1, 2}
    assert (target[lab == 0] == 0).all()
    # Both columns either side of the contact line are boundary.
    assert (target[5:15, 14] == 2).all() and (target[5:15, 15] == 2).all()
    # The interiors are two separate components, one per square.
    interiors, n = ndi.label(target == 1)
    assert n == 2
    assert (target[6:14, 6:14] == 1).all()


def _probs_from_instances(instances, blur=0.7):
    target = boundary_targets(instances)
    onehot = np.stack([(target == c).astype(np.float32) for c in range(3)])
    onehot = np.stack([ndi.gaussian_filter(ch, blur) for ch in onehot])
    return (onehot / onehot.sum(0, keepdims=True)).astype(np.float32)


def test_instances_from_probabilities_recovers_objects():
    _image, truth = make_nuclei((96, 128), seed=4)
    labels = instances_from_probabilities(_probs_from_instances(truth))
    assert labels.dtype == np.int32 and labels.shape == truth.shape
    r = match_instances(labels, truth)
    assert r["ap50"] == 1.0
    assert np.array_equal(np.unique(labels), np.arange(labels.max() + 1))


def test_instances_from_probabilities_touching_squares_and_min_size():
    lab = _two_touching_squares()
    lab[0:2, 0:2] = 3  # 4 px object, all boundary: dropped by min_size
    out = instances_from_probabilities(_probs_from_instances(lab, blur=0.3), min_size=8)
    assert out.max() == 2
    assert match_instances(out, (lab * (lab < 3)).astype(np.int32))["ap75"] == 1.0
    with pytest.raises(InputError):
        instances_from_probabilities(np.zeros((2, 8, 8), np.float32))


def test_instances_from_foreground_splits_touching_discs():
    yy, xx = np.mgrid[:40, :60]
    a = (yy - 20) ** 2 + (xx - 20) ** 2 <= 100
    b = (yy - 20) ** 2 + (xx - 38) ** 2 <= 100
    truth = a.astype(np.int32) + 2 * (b & ~a)
    assert ndi.label(a | b)[1] == 1  # they touch
    split = instances_from_foreground(a | b)
    assert split.max() == 2
    assert match_instances(split, truth)["ap75"] == 1.0
    merged = instances_from_foreground((a | b).astype(np.float32) * 0.9, split_touching=False)
    assert merged.max() == 1 and merged.dtype == np.int32
    assert instances_from_foreground(np.zeros((5, 5))).max() == 0


def test_measure_objects_squares():
    lab = np.zeros((20, 30), np.int32)
    lab[2:6, 3:7] = 4  # 4x4
    lab[10:12, 20:26] = 9  # 2x6
    img = np.zeros((20, 30), np.float32)
    img[2:6, 3:7] = 10.0
    img[10:12, 20:23] = 1.0
    img[10:12, 23:26] = 3.0
    rows = measure_objects(lab, img)
    assert [r["label"] for r in rows] == [4, 9]
    r4, r9 = rows
    assert r4["area"] == 16 and r9["area"] == 12
    assert (r4["centroid_y"], r4["centroid_x"]) == pytest.approx((3.5, 4.5))
    assert (r9["centroid_y"], r9["centroid_x"]) == pytest.approx((10.5, 22.5))
    assert (r4["bbox_y0"], r4["bbox_x0"], r4["bbox_y1"], r4["bbox_x1"]) == (2, 3, 6, 7)
    assert r4["mean_intensity"] == pytest.approx(10.0)
    assert r9["mean_intensity"] == pytest.approx(2.0)
    assert (r9["min_intensity"], r9["max_intensity"]) == (1.0, 3.0)
    assert r4["solidity"] == pytest.approx(1.0)
    assert r4["eccentricity"] == pytest.approx(0.0, abs=1e-6)
    assert {"perimeter"} <= r4.keys()

    summary = summarize_objects(rows)
    assert summary["object_count"] == 2
    assert summary["total_area"] == 28.0 and summary["mean_area"] == 14.0
    assert summary["mean_intensity"] == pytest.approx(6.0)
    assert measure_objects(np.zeros((5, 5), np.uint8)) == []
    assert summarize_objects([])["object_count"] == 0


def test_measure_objects_channels_and_3d():
    lab = np.zeros((10, 10), np.uint8)
    lab[2:4, 2:4] = 1
    img = np.zeros((10, 10, 2), np.float32)
    img[..., 1] = 5.0
    (row,) = measure_objects(lab, img)
    assert row["mean_intensity_0"] == 0.0 and row["mean_intensity_1"] == 5.0
    with pytest.raises(InputError):
        measure_objects(lab, np.zeros((10, 11)))

    vol = np.zeros((4, 6, 6), np.uint16)
    vol[1:3, 1:3, 2:5] = 7
    (row,) = measure_objects(vol, vol.astype(np.float32))
    assert row["area"] == 12
    assert (row["centroid_z"], row["centroid_y"], row["centroid_x"]) == pytest.approx(
        (1.5, 1.5, 3.0)
    )
    assert (row["bbox_z0"], row["bbox_z1"]) == (1, 3)
    assert "perimeter" not in row and row["mean_intensity"] == 7.0


def test_boxes_from_labels():
    lab = np.zeros((20, 30), np.int32)
    lab[2:6, 3:7] = 4
    lab[10:12, 20:26] = 900
    boxes, ids = boxes_from_labels(lab)
    assert boxes.dtype == np.float32 and boxes.shape == (2, 4)
    assert ids.tolist() == [4, 900]
    assert boxes.tolist() == [[2, 3, 6, 7], [10, 20, 12, 26]]
    empty, no_ids = boxes_from_labels(np.zeros((3, 3), np.uint8))
    assert empty.shape == (0, 4) and no_ids.size == 0


def test_otsu_watershed_baseline_runs():
    image, truth = make_nuclei((128, 128), seed=5)
    labels = otsu_watershed(image)
    assert labels.dtype == np.int32 and labels.shape == image.shape
    r = match_instances(labels, truth)
    assert r["dice"] > 0.5 and 0.1 < r["ap50"] < 0.9
    assert otsu_watershed(np.zeros((8, 8), np.uint16)).max() == 0
