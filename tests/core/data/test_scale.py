"""The object size read from the image at scribbles, and the resampling it sets for a scribbles run."""

import numpy as np
import pytest

from napari_seglab.core.data import (
    STROKE_TARGET_DIAMETER,
    TARGET_DIAMETER,
    estimate_scale,
    stroke_diameter,
    target_diameter,
)
from napari_seglab.core.labels import IGNORE
from napari_seglab.core.synthetic import make_nuclei
from napari_seglab.core.train import prepare_training_data


def _discs(radius: int, shape=(192, 192), dark=False, spacing=3.0):
    """Bright (or dark) discs of ``radius`` on a grid; a stroke through each centre, background strokes between."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    image = np.zeros(shape, np.float32)
    target = np.full(shape, IGNORE, np.int64)
    step = int(spacing * radius)
    for cy in range(step // 2, shape[0] - radius, step):
        for cx in range(step // 2, shape[1] - radius, step):
            image[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = 1.0
            target[cy, cx - radius // 2:cx + radius // 2 + 1] = 1  # a stroke along the middle
            target[cy + step // 2 - 1, cx - 2:cx + 3] = 0  # background between the discs
    image = 1.0 - image if dark else image
    return image[None], target


@pytest.mark.parametrize("radius", [5, 10, 16])
def test_the_diameter_is_read_at_the_strokes(radius):
    d = stroke_diameter([_discs(radius)])
    assert d == pytest.approx(2 * radius, rel=0.25)


def test_dark_objects_on_a_bright_background_measure_the_same():
    assert stroke_diameter([_discs(8, dark=True)]) == pytest.approx(stroke_diameter([_discs(8)]))


def test_no_foreground_stroke_gives_no_size():
    image, target = _discs(8)
    assert stroke_diameter([(image, np.where(target == 1, IGNORE, target))]) is None


def test_a_large_plane_is_measured_on_block_means(monkeypatch):
    # a plane over the limit is measured on 2 x 2 block means (the limit lowered: 1200 x 1200 took 11 s)
    monkeypatch.setattr("napari_seglab.core.data._scale._MAX_PIXELS", 1 << 16)
    image, target = _discs(12, shape=(400, 400))
    assert stroke_diameter([(image, target)]) == pytest.approx(24, rel=0.3)


def test_scribbles_aim_at_a_larger_size_than_whole_objects():
    assert target_diameter("scribbles") == STROKE_TARGET_DIAMETER > TARGET_DIAMETER
    assert target_diameter("instances") == target_diameter("objects") == TARGET_DIAMETER


def test_a_scribbles_run_resamples_by_the_estimate_and_typed_scales_win():
    image, instances = make_nuclei((256, 256), seed=3)
    scribbles = np.zeros(instances.shape, np.uint8)
    scribbles[(instances > 0) & (np.roll(instances, 3, 0) == instances) & (np.roll(instances, -3, 0) == instances)
              & (np.arange(256)[None, :] % 6 == 0)] = 2
    scribbles[(instances == 0) & (np.arange(256)[:, None] % 16 == 0)] = 1
    chw = image[None].astype(np.float32) / image.max()
    scale, diameter = estimate_scale([(chw, scribbles)], "scribbles")
    assert diameter is not None and 8 < diameter < 40
    assert scale > 1  # the synthetic nuclei are smaller than the scribbles target
    samples, _norm, _c, used, _area = prepare_training_data([image], [scribbles], "scribbles")
    assert used == scale and samples[0].image.shape[-2:] == tuple(round(256 * scale) for _ in range(2))
    _s, _n, _c, typed, _area = prepare_training_data([image], [scribbles], "scribbles", scale=1.0)
    assert typed == 1.0
