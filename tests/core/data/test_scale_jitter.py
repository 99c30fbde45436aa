"""Scale jitter: patches zoomed in and out around the painted object size, targets kept aligned."""

import numpy as np
import pytest

from napari_seglab.core.data import PatchSampler, Sample
from napari_seglab.core.errors import InputError
from napari_seglab.core.objects import targets

PATCH = 32


def one_disc_sample():
    """A 96 px plane with one bright disc of radius 12 and its flow-head targets."""
    yy, xx = np.mgrid[:96, :96]
    objects = ((yy - 48) ** 2 + (xx - 48) ** 2 <= 144).astype(np.int64)
    image = np.where(objects > 0, 1.0, 0.0).astype(np.float32)[None]
    reg, ignore = targets(objects, mode="instances", kind="flows")
    target = np.where(ignore, -1, objects).astype(np.int64)
    return Sample(image, target, objects, reg, "flows")


def disc_patches(jitter, n=60, seed=0):
    sampler = PatchSampler([one_disc_sample()], PATCH, np.random.default_rng(seed), favour=1.0, augment=True,
                           scale_jitter=jitter)
    return [sampler._draw() for _ in range(n)]


def test_jitter_shows_the_object_larger_and_smaller_than_painted():
    plain = [int((t > 0).sum()) for _, t, _, _ in disc_patches(1.0)]
    zoomed = [int((t > 0).sum()) for _, t, _, _ in disc_patches(2.0)]
    assert max(plain) <= PATCH * PATCH and all(p.shape == (1, PATCH, PATCH) for p, *_ in disc_patches(2.0, n=5))
    # without jitter the disc never covers more than its own area; with it, a zoomed-in crop can
    assert max(plain) <= np.pi * 144 * 1.05
    assert max(zoomed) > np.pi * 144 * 1.3
    # zoomed-out crops hold the whole disc at under its painted area
    whole = [a for a in zoomed if 0 < a < np.pi * 144 * 0.8]
    assert whole


def test_zoomed_patches_keep_image_and_targets_aligned():
    for img, tgt, ins, reg in disc_patches(2.0, n=30, seed=3):
        bright = img[0] > 0.5  # gain / offset / noise leave the disc far above the background
        fg = tgt == 1
        assert (bright == fg).mean() > 0.97
        assert set(np.unique(reg[0])) <= {0.0, 1.0}
        np.testing.assert_array_equal(reg[0] > 0, fg)
        np.testing.assert_array_equal(ins > 0, fg)
        # flow vectors live inside the object only
        assert np.abs(reg[1:, ~fg]).max() == 0


def test_jitter_below_one_is_refused():
    with pytest.raises(InputError, match="scale jitter"):
        PatchSampler([one_disc_sample()], PATCH, np.random.default_rng(0), scale_jitter=0.5)
