"""Tiled prediction: tiles agree with one whole-image pass; stacks are predicted plane by plane."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_seglab.core.events import TileDone, collect, drive
from napari_seglab.core.models import ModelSpec
from napari_seglab.core.predict import LoadedModel, iter_predict_image, load_model, wrap_model

MARGIN = 8  # pixels at the image border, where tiles and the whole image pad differently


@pytest.fixture(scope="module")
def lm(tiny_model):
    return load_model(tiny_model, "cpu")


@pytest.fixture(scope="module")
def stack(blobs):
    """(3, 96, 128) float32: the blobs image shifted a little on each plane."""
    img = blobs[0]
    return np.stack([np.roll(img, 6 * z, axis=1) for z in range(3)])


def per_pixel_model() -> LoadedModel:
    """A random network of 1x1 convolutions: every output pixel depends on its input pixel only."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 1), nn.ReLU(), nn.Conv2d(8, 1, 1)).eval()
    spec = ModelSpec(family="unet", arch="Unet", encoder="resnet18", in_channels=1, n_classes=2)
    return wrap_model(net, {"model": spec.to_dict(), "label_mode": "scribbles"}, torch.device("cpu"))


def test_blended_tiles_reproduce_the_whole_image_exactly_for_a_local_model(blobs):
    img = blobs[0][:90, :125]  # uneven tile positions and padding to a multiple of 32
    lm = per_pixel_model()
    whole = drive(iter_predict_image(lm, img, tile=256, probabilities=True))
    events, tiled = collect(iter_predict_image(lm, img, tile=64, overlap=0.3, probabilities=True))
    assert sum(isinstance(e, TileDone) for e in events) == 6  # 2 rows x 3 columns
    np.testing.assert_allclose(tiled.probabilities, whole.probabilities, atol=1e-5)
    np.testing.assert_array_equal(tiled.labels, whole.labels)


def test_unet_tiles_agree_with_one_pass_away_from_the_border(lm, blobs):
    img = blobs[0]
    whole = drive(iter_predict_image(lm, img, tile=256, probabilities=True))
    events, tiled = collect(iter_predict_image(lm, img, tile=96, overlap=0.5, probabilities=True))
    tiles = [e for e in events if isinstance(e, TileDone)]
    assert len(tiles) == 2 and tiles[-1].tile == tiles[-1].tiles == 2  # 1 row x 2 columns of 96 px tiles
    # a U-Net sees further than a 96 px tile, so tiles differ a little near their edges;
    # the Hann blending gives those pixels little weight
    inner = (slice(MARGIN, -MARGIN), slice(MARGIN, -MARGIN))
    p_whole, p_tiled = whole.probabilities[1][inner], tiled.probabilities[1][inner]
    diff = np.abs(p_whole - p_tiled)
    assert diff.mean() < 0.03 and np.percentile(diff, 99) < 0.15
    confident = np.abs(p_whole - 0.5) > 0.1
    assert np.mean(whole.labels[inner][confident] == tiled.labels[inner][confident]) > 0.99


@pytest.mark.slow
def test_stack_is_predicted_plane_by_plane(lm, stack):
    events, pred = collect(iter_predict_image(lm, stack, "ZYX"))
    assert pred.labels.shape == stack.shape and pred.labels.dtype == np.int32
    assert {e.planes for e in events if isinstance(e, TileDone)} == {3}
    for z in range(3):
        single = drive(iter_predict_image(lm, stack[z]))
        np.testing.assert_array_equal(pred.labels[z], single.labels)
        assert pred.labels[z].any()


@pytest.mark.slow
def test_time_series_of_stacks_fills_every_plane(lm, stack):
    movie = np.stack([stack[:2], stack[1:]])  # (T, Z, Y, X) = (2, 2, 96, 128)
    pred = drive(iter_predict_image(lm, movie, "TZYX"))
    assert pred.labels.shape == movie.shape
    assert all(pred.labels[t, z].any() for t in range(2) for z in range(2))
    np.testing.assert_array_equal(pred.labels[0, 1], pred.labels[1, 0])  # the same plane twice


def test_only_the_requested_planes_are_predicted(lm, stack):
    events, pred = collect(iter_predict_image(lm, stack, "ZYX", planes=[(2,)], probabilities=True))
    assert not pred.labels[:2].any() and pred.labels[2].any()
    assert not pred.probabilities[:, :2].any() and pred.probabilities[:, 2].any()
    assert {e.plane for e in events if isinstance(e, TileDone)} == {0}
