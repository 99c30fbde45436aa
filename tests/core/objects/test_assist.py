"""Model-assisted annotation in the core: the object under a click, confident and doubtful objects."""

from __future__ import annotations

import numpy as np
import pytest

from napari_seglab.core.errors import InputError
from napari_seglab.core.objects import assess_objects, flow_agreement, new_objects, object_at


def square(arr, y, x, r, value):
    arr[y - r:y + r, x - r:x + r] = value


@pytest.fixture
def case():
    """Predicted objects 1-6 on a (80, 120) plane and the user's painting (objects mode).

    1: painted whole as object 2 (covered); 2: unpainted, typical size, sure (confident);
    3: unpainted, typical size, unsure (doubtful: unsure); 4: tiny (doubtful: small);
    5: touches painted object 3 (doubtful: touches painted); 6: half on a background stroke.
    """
    pred = np.zeros((80, 120), np.int32)
    painted = np.zeros((80, 120), np.uint16)
    unc = np.full(pred.shape, 0.05, np.float32)
    square(pred, 15, 15, 6, 1)
    square(painted, 15, 15, 6, 2)  # object 1 painted as id 2
    square(pred, 15, 50, 6, 2)
    square(pred, 15, 90, 6, 3)
    square(unc, 15, 90, 6, 0.8)
    square(pred, 50, 15, 2, 4)
    square(painted, 50, 60, 6, 3)  # a painted object no prediction covers
    pred[44:56, 66:78] = 5  # right next to painted object 3 (columns 54..65)
    square(pred, 50, 100, 6, 6)
    painted[44:50, 94:106] = 1  # a background stroke over half of object 6
    return pred, painted, unc


def test_object_at_returns_the_whole_unpainted_object(case):
    pred, painted, _ = case
    ys, xs = object_at(pred, painted, (15, 50))
    assert set(zip(ys.tolist(), xs.tolist(), strict=True)) == set(zip(*np.nonzero(pred == 2), strict=True))


def test_object_at_leaves_out_painted_pixels_and_cut_off_pieces():
    pred = np.zeros((20, 30), np.int32)
    pred[5:15, 5:25] = 1
    painted = np.zeros_like(pred)
    painted[:, 14:16] = 1  # a background stroke cuts the object in two
    ys, xs = object_at(pred, painted, (10, 8))
    assert painted[ys, xs].max() == 0
    assert xs.max() == 13 and xs.min() == 5 and ys.size == 10 * 9


@pytest.mark.parametrize(("point", "why"), [((15, 15), "already painted"), ((70, 5), "background"),
                                            ((100, 5), "outside")])
def test_object_at_says_why_there_is_nothing_to_add(case, point, why):
    pred, painted, _ = case
    with pytest.raises(InputError, match=why):
        object_at(pred, painted, point)


def test_report_counts_and_reasons(case):
    pred, painted, unc = case
    report = assess_objects(pred, painted, first_id=2, uncertainty=unc, plane=(3,))
    assert report.predicted == 6
    assert [r["id"] for r in report.unpainted] == [2, 3, 4, 5, 6]
    assert report.confident_ids == [2]
    reasons = {r["id"]: r["reasons"] for r in report.doubtful}
    assert reasons == {3: ["unsure"], 4: ["small"], 5: ["touches painted"], 6: ["on background"]}
    assert report.reason_counts() == {"unsure": 1, "small": 1, "touches painted": 1, "on background": 1}
    assert report.reference_area == 144.0  # the median painted object (two 12 x 12 squares)
    assert "5 objects predicted where nothing is painted: 1 confident, 4 doubtful" in report.text()


def test_paint_next_boxes_are_centred_on_doubtful_objects(case):
    pred, painted, unc = case
    report = assess_objects(pred, painted, uncertainty=unc, plane=(3,), n_next=10)
    assert len(report.paint_next) == 4
    for row in report.paint_next:
        assert row["plane"] == "3"
        assert 0 <= row["y0"] < row["y1"] <= 80 and 0 <= row["x0"] < row["x1"] <= 120
    centres = {((r["y0"] + r["y1"]) // 2, (r["x0"] + r["x1"]) // 2) for r in report.paint_next}
    # the most unsure object first; each doubtful object's centre is inside its box
    assert report.paint_next[0]["why"] == "unsure"
    for row in report.doubtful:
        assert any(abs(cy - row["y"]) <= 1 and abs(cx - row["x"]) <= 1 for cy, cx in centres)
    assert len(assess_objects(pred, painted, uncertainty=unc, n_next=2).paint_next) == 2


def test_size_is_judged_against_the_painted_objects():
    pred = np.zeros((60, 60), np.int32)
    painted = np.zeros((60, 60), np.uint16)
    square(painted, 10, 10, 3, 2)  # painted objects of 36 px
    square(pred, 40, 40, 9, 1)  # 324 px: 9x the painted size
    assert assess_objects(pred, painted).doubtful[0]["reasons"] == ["large"]
    square(painted, 10, 30, 9, 3)
    square(painted, 30, 10, 9, 4)  # now the median painted object is 324 px
    assert assess_objects(pred, painted).confident_ids == [1]


def test_instances_mode_has_no_background_strokes():
    pred = np.zeros((40, 40), np.int32)
    square(pred, 10, 10, 4, 1)
    square(pred, 30, 30, 4, 2)
    painted = np.zeros((40, 40), np.uint16)
    square(painted, 10, 10, 4, 1)  # instances: id 1 is an object
    report = assess_objects(pred, painted, first_id=1)
    assert report.confident_ids == [2] and len(report.unpainted) == 1


def test_new_objects_never_overwrite_painted_pixels(case):
    pred, painted, _ = case
    ys, xs, values = new_objects(pred, painted, [2, 6], start=4)
    assert painted[ys, xs].max() == 0
    assert set(values.tolist()) == {4, 5}
    assert (values == 4).sum() == (pred == 2).sum()
    assert (values == 5).sum() == ((pred == 6) & (painted == 0)).sum()
    with pytest.raises(InputError, match="no predicted object 9"):
        new_objects(pred, painted, [9], start=4)


def test_flow_agreement_is_low_for_flows_that_fit_the_shape():
    from napari_seglab.core.objects._flows import FLOW_SCALE, flow_field

    pred = np.zeros((40, 40), np.int32)
    square(pred, 12, 12, 6, 1)
    square(pred, 28, 28, 6, 2)
    own = flow_field(pred)
    outputs = np.concatenate([np.where(pred > 0, 5.0, -5.0)[None], FLOW_SCALE * own]).astype(np.float32)
    outputs[1:, pred == 2] *= -1  # object 2's flows point outwards
    errors = flow_agreement(pred, outputs)
    assert errors[0] < 0.01 and errors[1] > 2
    report = assess_objects(pred, np.zeros_like(pred), flow_errors=errors)
    assert report.confident_ids == [1] and report.doubtful[0]["reasons"] == ["flows"]


def test_mismatched_planes_are_refused():
    with pytest.raises(InputError, match="same"):
        assess_objects(np.zeros((4, 4), np.int32), np.zeros((4, 5), np.int32))


def test_prediction_keeps_the_flow_head_outputs_for_the_flow_check(flows_model):
    from painted import discs

    from napari_seglab.core.events import drive
    from napari_seglab.core.predict import iter_predict_image, load_model

    img, _inst = discs()
    model = load_model(flows_model, "cpu")
    plain = drive(iter_predict_image(model, img))
    pred = drive(iter_predict_image(model, img, head_outputs=True))
    assert plain.head_outputs is None
    # the raw [logit, dy, dx] of the whole image (the model resamples by 1.5: mapped back to the image)
    assert pred.head_outputs.shape == (3, *img.shape) and pred.head_outputs.dtype == np.float32
    assert np.array_equal(pred.labels, plain.labels)
    errors = flow_agreement(pred.labels, pred.head_outputs)
    assert errors.shape == (int(pred.labels.max()),)
