"""Model-assisted annotation in the Train dock, in a real viewer: click to add, accept confident, paint next."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks
from widget_helpers import WAIT_MS, click, dock, set_tiny_training

from napari_seglab._widgets._assist import AssistSource
from napari_seglab.core.objects import assess_objects

#: (centre y, centre x, radius) of the predicted objects: 1, 2 painted; 3, 4 confident; 5 small; 6 unsure
DISCS = ((20, 20, 8), (20, 60, 8), (20, 100, 8), (70, 20, 8), (70, 60, 3), (70, 100, 8))


def scene(shape=(96, 128)):
    """Image, predicted objects, uncertainty and the user's objects-mode painting of one plane."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    predicted = np.zeros(shape, np.uint16)
    for i, (cy, cx, r) in enumerate(DISCS, start=1):
        predicted[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = i
    image = (100 + 80 * (predicted > 0)).astype(np.float32)
    uncertainty = np.where(predicted == 6, 0.9, 0.05).astype(np.float32)
    painted = np.zeros(shape, np.uint8)
    painted[45:48, 5:120] = 1  # a background stroke across the middle
    painted[predicted == 1] = 2
    painted[predicted == 2] = 3
    return image, predicted, uncertainty, painted


@pytest.fixture
def assisted(make_napari_viewer):
    """A viewer (image and labels placed at scale 0.5), the Train dock and its assist panel fed a prediction."""
    viewer = make_napari_viewer()
    image, predicted, uncertainty, painted = scene()
    placement = {"scale": (0.5, 0.5), "translate": (2.0, 3.0)}
    image_layer = viewer.add_image(image, name="cells", **placement)
    labels = viewer.add_labels(painted.copy(), name="paint", **placement)
    widget = dock(viewer, "Train")
    panel = widget.assist
    assert not panel.toggle.enabled and not panel.accept.enabled  # nothing trained yet
    report = assess_objects(predicted, painted, first_id=2, uncertainty=uncertainty)
    panel.set_source(AssistSource(predicted, uncertainty, None, (), image_layer, labels, "objects"), report)
    return viewer, panel, labels, predicted, painted


def world(labels, y, x):
    return tuple(labels.data_to_world((y, x)))


@dataclass
class Mouse:
    """The fields of a napari mouse event that the viewer's own drag callbacks and ours read."""

    type: str
    position: tuple
    button: int = 1
    modifiers: tuple = ()
    is_dragging: bool = False
    dims_displayed: tuple = (0, 1)
    handled: bool = False


def click_at(viewer, position, drag=False):
    """Press and release the left button at a world position (with a move in between when ``drag``)."""
    event = Mouse(type="mouse_press", position=position)
    mouse_press_callbacks(viewer, event)
    if drag:
        event.type = "mouse_move"
        for gen in tuple(viewer._mouse_drag_gen.values()):
            next(gen, None)
    event.type = "mouse_release"
    mouse_release_callbacks(viewer, event)


def test_click_adds_the_object_under_the_point_and_undo_removes_it(assisted, qtbot):
    viewer, panel, labels, predicted, painted = assisted
    labels.mode = "paint"
    panel.toggle.value = True
    assert labels.mode == "pan_zoom"  # a click must not paint a dot as well
    click_at(viewer, world(labels, 20, 100))  # object 3, nothing painted there
    qtbot.waitUntil(lambda: not panel.busy, timeout=WAIT_MS)
    added = labels.data == 4  # a new id above every id of the layer (2 and 3)
    assert np.array_equal(added, predicted == 3)
    assert np.array_equal(labels.data[~added], painted[~added])
    assert "added object 4" in panel.message
    assert "3 objects predicted where nothing is painted: 1 confident, 2 doubtful" in panel.status.value
    labels.undo()
    assert np.array_equal(labels.data, painted)


def test_click_on_painted_or_predicted_background_adds_nothing_and_says_why(assisted, qtbot):
    viewer, panel, labels, _predicted, painted = assisted
    panel.toggle.value = True
    click_at(viewer, world(labels, 20, 20))  # painted object 2
    assert "already painted (value 2)" in panel.message and not panel.busy
    click_at(viewer, world(labels, 90, 40))  # predicted background
    assert "predicts background" in panel.message and not panel.busy
    click_at(viewer, world(labels, 70, 20), drag=True)  # a drag pans: nothing added
    assert np.array_equal(labels.data, painted)


def test_clicks_do_nothing_unless_assist_is_on_or_while_painting(assisted):
    viewer, panel, labels, _predicted, painted = assisted
    click_at(viewer, world(labels, 70, 20))
    assert not panel.busy and np.array_equal(labels.data, painted)
    panel.toggle.value = True
    viewer.layers.selection.active = labels
    labels.mode = "paint"  # the user paints with assist still on: the brush wins
    click_at(viewer, world(labels, 70, 20))
    assert not panel.busy and np.array_equal(labels.data, painted)
    panel.toggle.value = False
    assert panel._on_mouse not in viewer.mouse_drag_callbacks


def test_accept_confident_adds_only_confident_unpainted_objects(assisted, qtbot):
    _viewer, panel, labels, predicted, painted = assisted
    assert "4 objects predicted where nothing is painted: 2 confident, 2 doubtful (1 unsure, 1 small)" \
        in panel.status.value
    click(panel.accept)
    qtbot.waitUntil(lambda: not panel.busy, timeout=WAIT_MS)
    data = labels.data
    assert np.array_equal(data[painted > 0], painted[painted > 0])  # no painted pixel changed
    assert np.array_equal(data == 4, predicted == 3) and np.array_equal(data == 5, predicted == 4)
    assert set(np.unique(data).tolist()) == {0, 1, 2, 3, 4, 5}  # the small and the unsure objects are left
    assert "added 2 confident objects (ids 4-5" in panel.message
    assert "2 objects predicted where nothing is painted: 0 confident, 2 doubtful" in panel.status.value
    labels.undo()  # one undo takes all of them back
    assert np.array_equal(labels.data, painted)


def test_paint_next_boxes_sit_on_the_doubtful_objects(assisted):
    viewer, panel, _labels, predicted, _painted = assisted
    assert panel.paint_next.enabled
    click(panel.paint_next)
    boxes = viewer.layers["cells paint next"]
    assert len(boxes.data) == 2
    centres = sorted(tuple(np.round(rect.mean(0)).astype(int)) for rect in boxes.data)
    assert centres == [(70, 60), (70, 100)]  # the small object 5 and the unsure object 6
    assert "2 boxes on doubtful objects, most doubtful first (unsure 1, small 1)" in panel.message


def test_assist_works_on_the_shown_plane_of_a_stack(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    image, predicted, uncertainty, painted = scene()
    stack = np.stack([image, image, image])
    pred3, unc3, paint3 = (np.stack([a, a, a]) for a in (predicted, uncertainty, painted))
    image_layer = viewer.add_image(stack, name="cells")
    labels = viewer.add_labels(paint3.copy(), name="paint")
    widget = dock(viewer, "Train")
    widget.assist.set_source(AssistSource(pred3, unc3, None, (0,), image_layer, labels, "objects"))
    viewer.dims.set_point(0, 1)
    click(widget.assist.accept)
    qtbot.waitUntil(lambda: not widget.assist.busy, timeout=WAIT_MS)
    assert np.array_equal(labels.data[[0, 2]], paint3[[0, 2]])  # other planes untouched
    assert np.array_equal(labels.data[1] == 4, predicted == 3)
    widget.assist.add_object_at((2, 70, 20))
    qtbot.waitUntil(lambda: not widget.assist.busy, timeout=WAIT_MS)
    assert np.array_equal(labels.data[2] == 6, predicted == 4)  # ids above the whole stack's (4, 5)
    assert "added object 6" in widget._controls.status.value  # the dock's status line says what happened


def test_after_training_objects_mode_offers_assist_and_scribbles_says_why_not(make_napari_viewer, qtbot,
                                                                               tmp_path):
    from painted import discs, partial

    viewer = make_napari_viewer()
    img, inst = discs()
    viewer.add_image(img, name="cells")
    labels = viewer.add_labels(partial(inst), name="paint")
    widget = dock(viewer, "Train")
    set_tiny_training(widget, tmp_path / "model.pt", steps=1)
    widget._mode.value = "objects"
    click(widget._controls.run_button)
    assert not widget.assist.toggle.enabled  # not while training
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    panel = widget.assist
    assert panel.toggle.enabled and panel.accept.enabled
    assert panel._source.labels is labels and panel.report is not None
    assert panel.status.value == panel.report.text()

    widget._mode.value = "scribbles"
    click(widget._controls.run_button)
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    assert not panel.toggle.enabled and not panel.accept.enabled
    assert "needs objects" in panel.status.value


def test_report_follows_painting_and_undo(assisted, qtbot):
    _viewer, panel, labels, predicted, painted = assisted
    before = "4 objects predicted where nothing is painted: 2 confident, 2 doubtful"
    assert before in panel.status.value
    # the user paints object 3 by hand (as napari's brush does: one undoable history item)
    ys, xs = np.nonzero(predicted == 3)
    labels.data_setitem((ys, xs), np.full(ys.size, 7, labels.data.dtype))
    qtbot.waitUntil(lambda: "3 objects predicted where nothing is painted" in panel.status.value, timeout=WAIT_MS)
    assert "1 confident, 2 doubtful" in panel.status.value
    labels.undo()  # napari's undo emits no paint event: the report follows it all the same
    qtbot.waitUntil(lambda: before in panel.status.value, timeout=WAIT_MS)
    assert np.array_equal(labels.data, painted)


def test_refresh_skips_an_unchanged_plane(assisted, qtbot):
    _viewer, panel, labels, _predicted, _painted = assisted
    panel.refresh_report()
    qtbot.waitUntil(lambda: not panel.busy, timeout=WAIT_MS)
    panel.status.value = "sentinel"
    panel.refresh_report()  # nothing painted since: no job, the line is left alone
    assert not panel.busy and panel.status.value == "sentinel"
    labels.data_setitem((np.array([90]), np.array([5])), np.array([1], labels.data.dtype))
    panel.refresh_report()
    qtbot.waitUntil(lambda: panel.status.value != "sentinel", timeout=WAIT_MS)
