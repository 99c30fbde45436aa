import numpy as np
import pytest

from napari_seglab.core.objects import entropy_map, margin_map, suggest_regions


def test_entropy_and_margin_extremes():
    certain = np.zeros((3, 2, 2), np.float32)
    certain[1] = 1
    unsure = np.full((3, 2, 2), 1 / 3, np.float32)
    assert np.allclose(entropy_map(certain), 0, atol=1e-5)
    assert np.allclose(entropy_map(unsure), 1, atol=1e-5)
    assert np.allclose(margin_map(certain), 0) and np.allclose(margin_map(unsure), 1)


def test_binary_compact_probability():
    p = np.array([[[0.5, 1.0]]], np.float32)
    assert entropy_map(p)[0].tolist() == pytest.approx([1.0, 0.0], abs=1e-5)


def test_suggest_regions_finds_the_unsure_patch():
    u = np.zeros((128, 128), np.float32)
    u[80:100, 20:40] = 1
    u[10:14, 100:104] = 0.5
    regions = suggest_regions(u, n=2, box=16)
    y0, x0, y1, x1 = regions[0]
    assert 70 <= y0 <= 100 and 10 <= x0 <= 40
    assert len(regions) == 2 and regions[1][0] < 30


def test_paint_next_on_a_stack_plane():
    from napari_seglab.core.objects import default_box, paint_next

    probs = np.zeros((2, 3, 64, 64), np.float32)
    probs[1] = 1.0  # certain everywhere ...
    probs[:, 1, 40:56, 8:24] = 0.5  # ... except one patch of plane 1
    entropy, rows = paint_next(probs, plane=(1,), n=2, box=16)
    assert entropy.shape == (3, 64, 64)
    assert rows[0]["plane"] == "1" and rows[0]["score"] > 0.9
    assert 32 <= rows[0]["y0"] <= 48 and 0 <= rows[0]["x0"] <= 16
    assert paint_next(probs, n=0)[1] == []
    assert default_box((4, 1000, 2000)) == 125 and default_box((50, 60)) == 16
