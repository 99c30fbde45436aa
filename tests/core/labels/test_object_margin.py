"""The ``objects`` mode reads a thin margin around each whole painted object as background."""

from __future__ import annotations

import numpy as np
import pytest

from napari_seglab.core.labels import IGNORE, OBJECT_MARGIN, get_mode, head_targets, make_target


def painted_plane():
    """A 40x60 plane: one painted disc (id 2), a background stroke (1) far from it, the rest unpainted."""
    yy, xx = np.mgrid[:40, :60]
    labels = np.zeros((40, 60), np.uint16)
    labels[(yy - 20) ** 2 + (xx - 15) ** 2 <= 8**2] = 2
    labels[5:8, 40:58] = 1
    return labels, np.hypot(yy - 20, xx - 15)


def test_unpainted_pixels_next_to_a_painted_object_are_background_far_ones_stay_ignored():
    labels, radius = painted_plane()
    target = make_target(labels, "objects")
    ring = (radius > 8.5) & (radius <= 8 + OBJECT_MARGIN - 0.5)
    far = (radius > 8 + OBJECT_MARGIN + 1.5) & (labels == 0)
    assert (target[ring] == 0).all()  # background class
    assert (target[far] == IGNORE).all()
    assert (target[labels == 1] == 0).all()  # the stroke is background as painted
    assert set(np.unique(target[labels == 2])) == {1, 2}  # interior and outline as before


def test_the_margin_never_paints_over_a_stroke_or_another_object():
    labels, _ = painted_plane()
    labels[20, 25:27] = 3  # a second object touching the first one's margin
    out = get_mode("objects").with_margin(labels)
    assert (out[labels >= 1] == labels[labels >= 1]).all()
    assert ((out == 1) & (labels == 0)).any()


@pytest.mark.parametrize("head", ["flows", "distance"])
def test_instance_heads_learn_the_margin_as_background(head):
    labels, radius = painted_plane()
    fg, regression = head_targets(labels, "objects", head)
    ring = (radius > 8.5) & (radius <= 8 + OBJECT_MARGIN - 0.5)
    assert (fg[ring] == 0).all() and (regression[1:, ring] == 0).all()
    assert (fg[(radius > 8 + OBJECT_MARGIN + 1.5) & (labels == 0)] == IGNORE).all()


def test_dense_instances_are_left_as_painted():
    labels, _ = painted_plane()
    dense = np.where(labels == 2, 1, 0)
    assert (get_mode("instances").with_margin(dense) == dense).all()
