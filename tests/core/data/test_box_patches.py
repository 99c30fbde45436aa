"""Box-aware patch sampling: boxes follow every crop, zoom, transpose and flip of the image exactly."""

from __future__ import annotations

import numpy as np
import pytest

from napari_seglab.core.data import (
    MIN_VISIBLE,
    PatchSampler,
    Sample,
    clip_boxes,
    transform_boxes,
    zoom_boxes,
)
from napari_seglab.core.errors import InputError
from napari_seglab.core.labels import IGNORE, get_mode
from napari_seglab.core.objects import transform
from napari_seglab.core.train import prepare_box_data, split_boxes

SQUARES = ((10, 12, 14), (50, 70, 12), (60, 20, 10), (20, 90, 16))


def square_sample(shape=(96, 128), squares=SQUARES):
    """A sample whose image is 1 inside each square and 0 elsewhere, with the squares' exact boxes."""
    img = np.zeros((1, *shape), np.float32)
    boxes = []
    for y, x, side in squares:
        img[0, y:y + side, x:x + side] = 1.0
        boxes.append([y, x, y + side, x + side, 1])
    return Sample(img, np.zeros(shape, np.int64), boxes=np.array(boxes, np.float32))


def bright_boxes(img: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Bounding boxes (y0, x0, y1, x1) of the connected bright regions of a (P, P) patch."""
    from scipy import ndimage as ndi

    labels, _ = ndi.label(img > 0.5)
    return [(s[0].start, s[1].start, s[0].stop, s[1].stop) for s in ndi.find_objects(labels)]


def encloses(box, region, slack=0.0) -> bool:
    y0, x0, y1, x1 = box[:4]
    return y0 - slack <= region[0] and x0 - slack <= region[1] and y1 + slack >= region[2] and x1 + slack >= region[3]


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("flip_y", [False, True])
@pytest.mark.parametrize("flip_x", [False, True])
def test_each_of_the_8_symmetries_moves_boxes_like_the_image(transpose, flip_y, flip_x):
    sample = square_sample((40, 64), ((3, 5, 7), (20, 40, 9)))
    draws = {"transpose": transpose, "flip_y": flip_y, "flip_x": flip_x}
    image = transform(sample.image, **draws)[0]
    boxes = transform_boxes(sample.boxes, (40, 64), **draws)
    # every box is exactly the bounding box of its square in the transformed image
    assert sorted(map(tuple, boxes[:, :4].astype(int).tolist())) == sorted(bright_boxes(image))
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()


def test_a_box_around_a_bright_square_encloses_it_in_every_draw_with_zoom():
    """Crops, zooms (scale jitter 1.5), transposes and flips: each visible square lies inside a box of the patch."""
    sampler = PatchSampler([square_sample()], 48, np.random.default_rng(1), favour=0.7, scale_jitter=1.5)
    checked = 0
    for _ in range(120):
        img, _tgt, _ins, _reg, boxes = sampler._draw_all()
        assert boxes.dtype == np.float32 and boxes.shape[1] == 5
        assert (boxes[:, :4] >= 0).all() and (boxes[:, :4] <= 48).all()
        # intensity augmentation scales the image: a square is where the patch is brighter than its median
        patch = img[0] - np.median(img[0])
        bright = patch > 0.5 * patch.max() if patch.max() > 0.2 else np.zeros_like(patch, bool)
        for region in bright_boxes(bright.astype(np.float32)):
            area = (region[2] - region[0]) * (region[3] - region[1])
            kept = [b for b in boxes if encloses(b, region, slack=1.0)]
            if area >= 16 and region[0] > 0 and region[1] > 0 and region[2] < 48 and region[3] < 48:
                assert kept, (region, boxes)  # a whole square in the patch always has its box
                checked += 1
        for b in boxes:  # and no box lies where nothing is bright
            y0, x0, y1, x1 = np.round(b[:4]).astype(int)
            assert bright[max(0, y0):y1, max(0, x0):x1].any()
    assert checked > 30


def test_boxes_cut_by_the_border_are_clipped_or_dropped_by_visible_fraction():
    boxes = np.array([[0, 0, 10, 10, 1],     # inside
                      [5, 15, 15, 25, 2],    # 5 of 10 columns visible: kept (exactly MIN_VISIBLE), clipped
                      [5, 17, 15, 27, 1],    # 3 of 10 visible: dropped
                      [30, 0, 40, 10, 1]], np.float32)  # outside
    out = clip_boxes(boxes, 0, 0, 20, 20)
    assert MIN_VISIBLE == 0.5
    np.testing.assert_array_equal(out, [[0, 0, 10, 10, 1], [5, 15, 15, 20, 2]])
    # a sliver under 2 px is dropped even when most of a thin box is visible
    assert len(clip_boxes(np.array([[0, 18.5, 10, 20.5, 1]], np.float32), 0, 0, 20, 20)) == 0
    # the window's origin moves the boxes into its pixels
    np.testing.assert_array_equal(clip_boxes(boxes[:1], 2, 3, 20, 20), [[0, 0, 8, 7, 1]])
    np.testing.assert_allclose(zoom_boxes(boxes[:1], 2.0)[0], [0, 0, 20, 20, 1])


def test_negative_samples_give_empty_box_arrays():
    empty = Sample(np.random.default_rng(0).random((1, 64, 64), np.float32), np.zeros((64, 64), np.int64),
                   boxes=np.zeros((0, 5), np.float32))
    sampler = PatchSampler([empty], 32, np.random.default_rng(0))
    imgs, tgts, boxes = sampler.box_batch(3)
    assert imgs.shape == (3, 1, 32, 32) and tgts.shape == (3, 32, 32)
    assert all(b.shape == (0, 5) and b.dtype == np.float32 for b in boxes)


def test_box_aware_sampling_favours_boxes_but_draws_background_too():
    sample = square_sample((256, 256), ((10, 10, 12),))
    sampler = PatchSampler([sample], 32, np.random.default_rng(0), favour=0.7, augment=False)
    counts = [len(b) for b in sampler.box_batch(200)[2]]
    with_box = np.mean([c > 0 for c in counts])
    assert 0.6 < with_box < 0.9  # uniform patches would hold the box about 2 % of the time


def test_a_sample_smaller_than_the_patch_is_padded_with_zeros_not_reflected():
    sample = square_sample((20, 20), ((2, 2, 6),))
    sampler = PatchSampler([sample], 32, np.random.default_rng(0), augment=False)
    img, tgt, _, _, boxes = sampler._draw_all()
    assert img[0, 20:].max() == 0 and img[0, :, 20:].max() == 0  # a reflection would copy the square there
    assert (tgt[20:] == IGNORE).all()
    np.testing.assert_array_equal(boxes, [[2, 2, 8, 8, 1]])


def test_patches_are_cut_inside_the_annotated_area_only():
    """Two annotated rectangles: each becomes a sample; a box outside both is not used (and said so)."""
    img = np.full((100, 160), 50.0, np.float32)  # outside the area: far brighter than anything inside
    area = np.zeros((100, 160), np.uint8)
    area[10:50, 10:70] = 1
    area[60:95, 100:150] = 1
    img[area > 0] = np.random.default_rng(0).normal(0, 1, int(area.sum()))
    rows = [{"y0": 20, "x0": 20, "y1": 30, "x1": 30}, {"y0": 70, "x0": 110, "y1": 80, "x1": 125, "class": 2},
            {"y0": 5, "x0": 80, "y1": 15, "x1": 90}]  # the last one lies outside the area
    samples, _norm, channels, scale, notes = prepare_box_data([img], [area], [rows], "boxes")
    assert channels == 1 and scale == 1.0
    assert [s.image.shape for s in samples] == [(1, 40, 60), (1, 35, 50)]
    np.testing.assert_array_equal(samples[0].boxes, [[10, 10, 20, 20, 1]])
    np.testing.assert_array_equal(samples[1].boxes, [[10, 10, 20, 25, 2]])
    assert any("1 box(es) lie outside the annotated area" in n.text for n in notes)
    sampler = PatchSampler(samples, 32, np.random.default_rng(0), augment=False)
    for _ in range(50):  # every patch comes from inside a region: no pixel of the bright outside
        img_p, _, _, _, _ = sampler._draw_all()
        assert img_p.shape == (1, 32, 32) and img_p.max() < 3


def test_without_an_area_the_whole_image_is_annotated_and_a_box_free_image_is_a_negative():
    img = np.random.default_rng(0).normal(0, 1, (64, 64)).astype(np.float32)
    samples, *_ = prepare_box_data([img, img], None, [[{"y0": 1, "x0": 2, "y1": 9, "x1": 12}], None], "boxes")
    assert [s.boxes.shape for s in samples] == [(1, 5), (0, 5)]
    assert all(s.image.shape == (1, 64, 64) for s in samples)


def test_boxes_mode_validates_the_area():
    mode = get_mode("boxes")
    assert mode.validate(None, (4, 4)) is None
    area = mode.validate(np.array([[0, 3], [0, 0]], np.uint16), (2, 2))
    np.testing.assert_array_equal(mode.targets(area), [[IGNORE, 0], [IGNORE, IGNORE]])
    with pytest.raises(InputError, match="annotated area is empty"):
        mode.validate(np.zeros((2, 2), np.uint8), (2, 2))
    with pytest.raises(InputError, match="does not match"):
        mode.validate(np.ones((3, 2), np.uint8), (2, 2))
    with pytest.raises(InputError, match="dtype float"):
        mode.validate(np.ones((2, 2), np.float32), (2, 2))
    assert "annotated area" in mode.legend


def test_the_hold_out_is_a_strip_with_its_boxes_cut_where_no_box_crosses():
    squares = [(8 + 30 * (k // 4), 8 + 30 * (k % 4), 12) for k in range(12)]  # 3 rows of 4 squares
    sample = square_sample((96, 128), squares)
    kept, held, why = split_boxes([sample], 0.25, np.random.default_rng(0))
    assert why == "" and len(kept) == len(held) == 1
    assert kept[0].image.shape[-1] + held[0].image.shape[-1] == 128  # cut across the longer side (X)
    n_kept, n_held = len(kept[0].boxes), len(held[0].boxes)
    assert n_kept + n_held == 12 and n_held >= 1  # the cut crosses no box: none is lost or doubled
    # too few boxes: no hold-out, and why
    kept, held, why = split_boxes([square_sample()], 0.25, np.random.default_rng(0))
    assert held == [] and "fewer than 10 boxes" in why


def test_many_regions_hold_out_whole_regions():
    samples = [square_sample((40, 40), ((5, 5, 10), (20, 20, 10), (5, 25, 8))) for _ in range(6)]
    kept, held, why = split_boxes(samples, 0.15, np.random.default_rng(0))
    assert why == "" and len(held) == 1 and len(kept) == 5
