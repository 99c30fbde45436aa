"""Tiled prediction: tiles agree with one whole-image pass; stacks are predicted plane by plane."""

from __future__ import annotations

import numpy as np
import pytest

from napari_seglab.core.events import TileDone
from napari_seglab.core.predict import load_model, predict_image, run_to_completion

MARGIN = 8  # pixels at the image border, where tiles and the whole image pad differently


def drive(gen):
    events = []
    try:
        while True:
            events.append(next(gen))
    except StopIteration as fin:
        return events, fin.value


@pytest.fixture(scope="module")
def lm(tiny_model):
    return load_model(tiny_model, "cpu")


@pytest.fixture(scope="module")
def stack(blobs):
    """(3, 96, 128) float32: the blobs image shifted a little on each plane."""
    img = blobs[0]
    return np.stack([np.roll(img, 6 * z, axis=1) for z in range(3)])


def test_tiles_agree_with_one_pass_away_from_the_border(lm, blobs):
    img = blobs[0]
    whole = run_to_completion(predict_image(lm, img, tile=256, probabilities=True))
    events, tiled = drive(predict_image(lm, img, tile=64, overlap=0.5, probabilities=True))
    tiles = [e for e in events if isinstance(e, TileDone)]
    assert len(tiles) == 6 and tiles[-1].tile == tiles[-1].tiles == 6  # 2 rows x 3 columns of 64 px tiles
    inner = (slice(None), slice(MARGIN, -MARGIN), slice(MARGIN, -MARGIN))
    # a U-Net sees beyond a 64 px tile, so tiles differ a little near their edges; the Hann
    # blending gives those pixels little weight
    diff = np.abs(whole.probabilities[inner] - tiled.probabilities[inner])
    assert diff.mean() < 0.02 and diff.max() < 0.25
    agree = np.mean(whole.labels[inner[1:]] == tiled.labels[inner[1:]])
    assert agree > 0.99


def test_stack_is_predicted_plane_by_plane(lm, stack):
    events, pred = drive(predict_image(lm, stack, "ZYX", tile=64, overlap=0.25))
    assert pred.labels.shape == stack.shape and pred.labels.dtype == np.int32
    assert {e.planes for e in events if isinstance(e, TileDone)} == {3}
    for z in range(3):
        single = run_to_completion(predict_image(lm, stack[z], tile=64, overlap=0.25))
        np.testing.assert_array_equal(pred.labels[z], single.labels)
        assert pred.labels[z].any()


def test_time_series_of_stacks_fills_every_plane(lm, stack):
    movie = np.stack([stack[:2], stack[1:]])  # (T, Z, Y, X) = (2, 2, 96, 128)
    pred = run_to_completion(predict_image(lm, movie, "TZYX"))
    assert pred.labels.shape == movie.shape
    assert all(pred.labels[t, z].any() for t in range(2) for z in range(2))
    np.testing.assert_array_equal(pred.labels[0, 1], pred.labels[1, 0])  # the same plane twice


def test_only_the_requested_planes_are_predicted(lm, stack):
    events, pred = drive(predict_image(lm, stack, "ZYX", planes=[(2,)], probabilities=True))
    assert not pred.labels[:2].any() and pred.labels[2].any()
    assert not pred.probabilities[:, :2].any() and pred.probabilities[:, 2].any()
    assert {e.plane for e in events if isinstance(e, TileDone)} == {0}
