import numpy as np
import pytest

from napari_seglab.core.errors import InputError
from napari_seglab.core.labels import make_target, n_classes_for, to_correction, validate_labels


def test_scribbles_target_ignores_unannotated():
    lab = np.array([[0, 1, 2], [3, 0, 1]], np.uint8)
    v = validate_labels(lab, (2, 3), "scribbles")
    t = make_target(v, "scribbles")
    np.testing.assert_array_equal(t, [[-1, 0, 1], [2, -1, 0]])
    assert n_classes_for([v], "scribbles") == 3


def test_classes_and_instances_targets():
    lab = np.zeros((12, 12), np.uint16)
    lab[2:6, 2:6] = 1
    lab[2:6, 6:10] = 2  # touching objects
    t = make_target(validate_labels(lab, lab.shape, "instances"), "instances")
    assert set(np.unique(t)) == {0, 1, 2}
    # the touching edge is boundary, so interiors of the two objects are separated
    assert (t[2:6, 5:7] == 2).all()
    c = make_target(validate_labels(lab, lab.shape, "classes"), "classes")
    assert n_classes_for([c], "classes") == 3


@pytest.mark.parametrize("labels,mode,message", [
    (np.zeros((4, 4), np.float32), "scribbles", "floating point"),
    (np.zeros((4, 5), np.uint8), "scribbles", "does not match"),
    (np.zeros((4, 4), np.uint8), "scribbles", "empty"),
    (np.ones((4, 4), np.uint8), "scribbles", "single class"),
    (np.full((4, 4), 2, np.uint8), "classes", "single class"),
    (np.full((4, 4), -1, np.int32), "classes", "negative"),
    (np.where(np.eye(4) > 0, 255, 0).astype(np.uint8), "instances", "0/255"),
    (np.ones((4, 4), np.uint8), "nonsense", "unknown label mode"),
])
def test_bad_labels_are_refused_with_reason(labels, mode, message):
    with pytest.raises(InputError, match=message):
        validate_labels(labels, (4, 4), mode)


def test_255_mask_read_as_foreground_when_asked():
    lab = np.where(np.eye(4) > 0, 255, 0).astype(np.uint8)
    v = validate_labels(lab, (4, 4), "classes", read_255_as_foreground=True)
    assert set(np.unique(v)) == {0, 1}
    s = validate_labels(lab, (4, 4), "scribbles", read_255_as_foreground=True)
    assert set(np.unique(s)) == {1, 2}


def test_correction_roundtrip_for_scribbles():
    pred = np.array([[0, 1], [2, 0]])
    corr = to_correction(pred, "scribbles")
    np.testing.assert_array_equal(make_target(validate_labels(corr, (2, 2), "scribbles"), "scribbles"), pred)


def test_correction_of_object_ids_depends_on_the_mode():
    ids = np.array([[0, 7], [300, 0]])
    # semantic modes: every object is the one foreground class, not one class per id
    np.testing.assert_array_equal(to_correction(ids, "scribbles", "instances"), [[1, 2], [2, 1]])
    np.testing.assert_array_equal(to_correction(ids, "classes", "instances"), [[0, 1], [1, 0]])
    corrected = to_correction(ids, "instances", "instances")
    np.testing.assert_array_equal(corrected, ids)
    assert corrected is not ids  # a copy: painting the correction never edits the prediction
    with pytest.raises(InputError, match="unknown prediction kind"):
        to_correction(ids, "scribbles", "boxes")
