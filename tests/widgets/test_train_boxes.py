"""The Train dock with a box detector: Shapes rectangles as annotations (the fake box family of tests/core)."""

from __future__ import annotations

import numpy as np
import pytest
from boxfamily import NAME, bright_squares, register
from widget_helpers import WAIT_MS, click, dock

from napari_seglab._widgets._train_job import area_from_shapes, shapes_rows
from napari_seglab.core.models import FAMILIES

SCALE, TRANSLATE = (0.5, 0.5), (3.0, 4.0)


def shown(control) -> bool:
    """Not hidden (the viewer's window itself is not shown in tests, so ``visible`` is False for every control)."""
    return not control.native.isHidden()


def world(y, x):
    """World coordinates of image pixel edge (y, x) of an image placed at SCALE / TRANSLATE."""
    return [TRANSLATE[0] + SCALE[0] * y, TRANSLATE[1] + SCALE[1] * x]


def rectangle(row):
    return [world(row["y0"], row["x0"]), world(row["y1"], row["x1"])]


@pytest.fixture
def box_dock(make_napari_viewer, monkeypatch):
    register(monkeypatch)
    viewer = make_napari_viewer()
    img, rows = bright_squares()
    image = viewer.add_image(img, name="cells", scale=SCALE, translate=TRANSLATE)
    # drawn in world coordinates on a Shapes layer of its own placement (napari's default one)
    shapes = viewer.add_shapes([rectangle(r) for r in rows], shape_type="rectangle", name="boxes",
                               features={"class": [1, 2, 1]})
    widget = dock(viewer, "Train")
    widget._family.choices = lambda _widget=None: (*FAMILIES, NAME)  # kept through reset_choices
    widget._family.value = NAME
    return viewer, widget, image, shapes, rows


def test_a_box_family_offers_shapes_layers_and_reads_rectangles_as_boxes(box_dock):
    viewer, widget, image, shapes, rows = box_dock
    assert widget._mode.value == "boxes" and set(widget._mode.choices) == {"boxes", "instances"}
    assert shown(widget._boxes_combo) and shown(widget._area_combo) and not shown(widget._labels_combo)
    assert "annotated area" in widget._legend.value
    assert widget._boxes_combo.value is shapes
    [(picked_image, picked_boxes, area)] = widget.pairs()
    assert picked_image is image and picked_boxes is shapes and area is None  # (whole image)
    got = shapes_rows(shapes, like=image)
    assert [[r[k] for k in ("y0", "x0", "y1", "x1", "class")] for r in got] == \
        [[r["y0"], r["x0"], r["y1"], r["x1"], c] for r, c in zip(rows, (1, 2, 1), strict=True)]
    # the annotated area: a rectangle over the left half marks those pixels
    area_layer = viewer.add_shapes([[world(0, 0), world(96, 64)]], shape_type="rectangle", name="area")
    widget._area_combo.reset_choices()
    widget._area_combo.value = area_layer
    assert widget.pairs()[0][2] is area_layer
    area = area_from_shapes(area_layer, image, (96, 128))
    assert area[:, :64].all() and not area[:, 64:].any()
    # back to a dense family: labels again
    widget._family.value = "unet"
    assert shown(widget._labels_combo) and not shown(widget._boxes_combo) and "boxes" not in widget._mode.choices


def test_an_ellipse_is_refused_with_a_notification_naming_the_layer(box_dock, errors):
    viewer, widget, image, shapes, rows = box_dock
    shapes.add_ellipses([world(40, 40), world(50, 60)])
    click(widget._controls.run_button)
    assert not widget.busy
    assert any("layer 'boxes', shape 4 is a ellipse" in e for e in errors), errors
    assert "rectangle" in widget._controls.status.value


def test_a_rotated_rectangle_is_refused(box_dock, errors):
    viewer, widget, image, shapes, rows = box_dock
    c = np.array(world(60, 60))
    shapes.add_rectangles(np.array([c + [-5, 0], c + [0, 5], c + [5, 0], c + [0, -5]]))  # a diamond
    assert shapes.shape_type[-1] == "rectangle"
    click(widget._controls.run_button)
    assert not widget.busy
    assert any("layer 'boxes', shape 4 is rotated" in e for e in errors), errors


def test_training_from_rectangles_shows_the_boxes_found(box_dock, qtbot, tmp_path):
    viewer, widget, image, shapes, rows = box_dock
    widget._patch.value, widget._batch.value = "32", "2"
    widget._device.value = "cpu"
    widget._epochs.value, widget._steps.value = 1, 2
    widget._save_to.value = tmp_path / "det.pt"
    click(widget._controls.run_button)
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    assert "boxes found" in widget._controls.status.value, widget._controls.status.value
    assert "cells boxes" in viewer.layers
    found = viewer.layers["cells boxes"]
    assert tuple(found.scale) == SCALE and len(found.data) == 3  # the stand-in boxes each bright square
    assert (tmp_path / "det.pt").is_file() and widget.last_checkpoint == tmp_path / "det.pt"


def test_a_box_outside_the_image_is_named_by_its_layer_and_shape(box_dock, qtbot, tmp_path):
    viewer, widget, image, shapes, rows = box_dock
    shapes.add_rectangles(np.array([world(200, 10), world(210, 20)]))
    widget._save_to.value = tmp_path / "det.pt"
    click(widget._controls.run_button)
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    status = widget._controls.status.value
    assert "layer 'boxes', shape 4: the box" in status and "outside the image (96 x 128" in status, status
    assert not (tmp_path / "det.pt").exists()


def test_rectangles_on_a_stack_name_their_plane_in_the_image_pixels():
    from napari.layers import Image, Shapes

    image = Image(np.zeros((4, 40, 60), np.float32), scale=(2.0, 0.5, 0.5), translate=(0.0, 3.0, 4.0))
    # a rectangle on plane 2 (world z = 4), drawn on a layer of its own placement
    shapes = Shapes([np.array([[4.0, *world(10, 12)], [4.0, *world(10, 26)], [4.0, *world(24, 26)],
                               [4.0, *world(24, 12)]])], shape_type="rectangle", name="boxes")
    [row] = shapes_rows(shapes, like=image)
    assert row["plane"] == "2" and [row[k] for k in ("y0", "x0", "y1", "x1")] == [10, 12, 24, 26]
    area = area_from_shapes(shapes, image, (4, 40, 60))
    assert area[2, 10:24, 12:26].all() and area.sum() == 14 * 14
