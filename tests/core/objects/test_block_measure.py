"""Object measurements block by block equal the whole image's: sums combine exactly, shapes per object."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_seglab.core.events import Stopped
from napari_seglab.core.objects import measure_blocks, measure_objects
from napari_seglab.core.synthetic import make_nuclei


def assert_same_rows(whole: list[dict], blocked: list[dict]) -> None:
    assert [list(r) for r in blocked] == [list(r) for r in whole]  # same columns, same order
    for a, b in zip(whole, blocked, strict=True):
        for key, value in a.items():
            assert b[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key


@pytest.mark.parametrize("block", [16, 33, 64, 1000])
def test_block_wise_table_equals_the_whole_image_table(block):
    image, labels = make_nuclei((150, 170), seed=3)
    labels = labels.astype(np.int32)
    assert labels.max() > 20
    whole = measure_objects(labels, image, pixel_size=(0.5, 0.25))
    rows, note = measure_blocks(labels, lambda ys, xs: image[ys, xs], block=block, pixel_size=(0.5, 0.25))
    assert note == ""
    assert_same_rows(whole, rows)


def test_several_channels_and_ids_with_gaps():
    image, labels = make_nuclei((96, 80), seed=5)
    labels = np.where(labels > 0, labels * 7 + 100, 0).astype(np.int64)  # sparse, large ids
    rgb = np.stack([image, image // 2, 65535 - image], -1)
    whole = measure_objects(labels, rgb)
    rows, _ = measure_blocks(labels, lambda ys, xs: rgb[ys, xs], block=24, channels=3)
    assert_same_rows(whole, rows)
    assert "mean_intensity_2" in rows[0]


def test_objects_wider_than_the_limit_keep_their_sums_and_lose_only_shape_columns():
    labels = np.zeros((64, 200), np.int32)
    labels[10:20, 5:190] = 1  # 185 px wide
    labels[40:50, 40:50] = 2
    rows, note = measure_blocks(labels, None, block=32, max_side=100)
    whole = measure_objects(labels)
    assert "1 object(s) wider than 100 px" in note
    assert rows[0]["area"] == whole[0]["area"] and rows[0]["bbox_x1"] == 190
    assert np.isnan(rows[0]["perimeter"]) and np.isnan(rows[0]["eccentricity"])
    assert rows[1]["perimeter"] == pytest.approx(whole[1]["perimeter"])


def test_empty_labels_and_a_stop():
    assert measure_blocks(np.zeros((40, 40), np.int32), None, block=16) == ([], "")
    stop = threading.Event()
    stop.set()
    with pytest.raises(Stopped):
        measure_blocks(np.ones((40, 40), np.int32), None, block=16, stop=stop)
