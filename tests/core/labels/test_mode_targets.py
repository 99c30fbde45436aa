"""Label modes as objects: targets, ignore masks, class names, legends, corrections; shared label helpers."""

import numpy as np
import pytest

from napari_seglab.core.errors import InputError
from napari_seglab.core.labels import (
    IGNORE,
    LABEL_MODES,
    MODES,
    boxes_to_rectangles,
    compact_labels,
    get_mode,
    label_box_rows,
)

# two touching 4x4 objects on a 12x12 background
OBJECTS = np.zeros((12, 12), np.uint16)
OBJECTS[2:6, 2:6] = 1
OBJECTS[2:6, 6:10] = 2


def test_lookup_by_name_lists_the_modes_when_unknown():
    assert [get_mode(name).name for name in LABEL_MODES] == list(LABEL_MODES)
    assert get_mode(MODES["objects"]) is MODES["objects"]
    with pytest.raises(InputError, match="unknown label mode 'scribble'; choose one of scribbles, instances, "
                                         "objects, classes"):
        get_mode("scribble")
    with pytest.raises(InputError, match="unknown label mode"):
        get_mode(None)


def test_scribbles_targets_shift_by_one_and_ignore_zero():
    mode = get_mode("scribbles")
    lab = mode.validate(np.array([[0, 1, 2], [3, 0, 1]], np.uint8), (2, 3))
    target = mode.targets(lab)
    np.testing.assert_array_equal(target, [[IGNORE, 0, 1], [2, IGNORE, 0]])
    np.testing.assert_array_equal(mode.ignore_mask(lab), lab == 0)
    np.testing.assert_array_equal(mode.decode(target), lab)  # the undo of the shift, ignored pixels back to 0
    assert mode.n_classes([lab]) == mode.target_classes([target]) == 3
    assert mode.class_names(3) == ("background", "class 1", "class 2")
    assert mode.sparse and mode.self_training and not mode.instances and mode.new_label(lab) == 2


def test_classes_targets_are_the_values_and_nothing_is_ignored():
    mode = get_mode("classes")
    lab = mode.validate(np.array([[0, 1], [2, 2]], np.uint8), (2, 2))
    np.testing.assert_array_equal(mode.targets(lab), lab)
    assert not mode.ignore_mask(lab).any()
    np.testing.assert_array_equal(mode.decode(mode.targets(lab)), lab)
    assert mode.target_classes([mode.targets(lab)]) == 3 and mode.new_label(lab) == 1


def test_instances_targets_part_touching_objects_with_a_boundary():
    mode = get_mode("instances")
    lab = mode.validate(OBJECTS, OBJECTS.shape)
    target = mode.targets(lab)
    assert set(np.unique(target)) == {0, 1, 2} and not mode.ignore_mask(lab).any()
    assert (target[2:6, 5:7] == 2).all()  # the shared edge is boundary
    np.testing.assert_array_equal(mode.objects(lab), lab)
    np.testing.assert_array_equal(mode.detector_objects(lab), lab)  # Mask R-CNN learns whole objects
    assert mode.class_names(3) == ("background", "interior", "boundary")
    assert mode.class_names(2, "flows") == ("background", "object")
    assert mode.whole_objects and mode.new_label(lab) == 3


def test_objects_mode_ignores_the_unpainted_pixels_beyond_the_margin():
    mode = get_mode("objects")
    painted = np.zeros((12, 12), np.uint16)
    painted[:, 10:] = 1  # background strokes
    painted[OBJECTS == 1] = 2  # one whole painted object; the other is left unpainted
    lab = mode.validate(painted, painted.shape)
    target = mode.targets(lab)
    np.testing.assert_array_equal(target == IGNORE, mode.with_margin(lab) == 0)
    assert (target == IGNORE).any() and ((target == 0) & (painted == 0)).any()  # a margin, then nothing
    assert (target[:, 10:] == 0).all() and (target[3:5, 3:5] == 1).all()
    np.testing.assert_array_equal(mode.objects(lab), np.where(painted >= 2, painted, 0))
    assert mode.detector_objects(lab) is None  # partial annotations cannot teach a detector
    with pytest.raises(InputError, match="no background strokes"):
        mode.validate(np.where(painted == 1, 0, painted), painted.shape)


@pytest.mark.parametrize("name", LABEL_MODES)
def test_every_mode_has_a_legend_and_refuses_empty_labels(name):
    mode = get_mode(name)
    assert mode.legend.startswith("0 = ")
    with pytest.raises(InputError, match="empty"):
        mode.validate(np.zeros((4, 4), np.uint8), (4, 4))


@pytest.mark.parametrize("name", ["scribbles", "classes"])
def test_semantic_prediction_round_trips_through_a_correction(name):
    mode = get_mode(name)
    prediction = np.array([[0, 1, 2], [2, 1, 0]])  # 0 = background, k = class k
    corrected = mode.correction(prediction, "semantic")
    lab = mode.validate(corrected, corrected.shape)
    np.testing.assert_array_equal(mode.targets(lab), prediction)  # every pixel annotated, classes kept


@pytest.mark.parametrize("name", ["instances", "objects"])
def test_object_prediction_round_trips_through_a_correction(name):
    mode = get_mode(name)
    corrected = mode.correction(OBJECTS, "instances")
    lab = mode.validate(corrected, corrected.shape)
    np.testing.assert_array_equal(mode.objects(lab) > 0, OBJECTS > 0)
    assert len(np.unique(mode.objects(lab))) == 3  # the two objects keep their own ids
    # a semantic foreground becomes one object per connected piece
    pieces = mode.correction((OBJECTS > 0).astype(np.uint8), "semantic")
    assert len(np.unique(mode.objects(mode.validate(pieces, pieces.shape)))) == 2


def test_compact_labels_is_one_helper_for_files_and_docks():
    assert compact_labels(np.array([0, 3], np.int64)).dtype == np.uint16
    assert compact_labels(np.array([0, 3], np.int64), np.uint8).dtype == np.uint8
    assert compact_labels(np.array([0, 70_000], np.int64)).dtype == np.uint32  # files: uint32 above 65535
    assert compact_labels(np.array([0, 70_000], np.int32), widest=np.uint16).dtype == np.int32  # docks
    assert compact_labels(np.array([-1, 3], np.int32)).dtype == np.int32


def test_boxes_from_labels_per_object_or_per_class_region():
    stack = np.stack([OBJECTS, np.zeros_like(OBJECTS)])
    rows = label_box_rows(stack, "ZYX", "instances")
    assert [(r["y0"], r["x0"], r["y1"], r["x1"], r["class"], r["plane"]) for r in rows] == \
        [(2, 2, 6, 6, 1, "0"), (2, 6, 6, 10, 1, "0")]
    semantic = label_box_rows((OBJECTS > 0).astype(np.uint8) * 2, "YX", "semantic")
    assert [(r["y0"], r["x0"], r["y1"], r["x1"], r["class"], r["plane"]) for r in semantic] == [(2, 2, 6, 10, 2, "")]
    corners = boxes_to_rectangles(rows, ndim=3)
    assert corners[1].tolist() == [[0, 2, 6], [0, 2, 10], [0, 6, 10], [0, 6, 6]]
