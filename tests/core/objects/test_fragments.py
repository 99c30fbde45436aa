"""Decoding the boundary head: weak borders merge, fragments of a typical object's size are dropped."""

from __future__ import annotations

import numpy as np
import pytest

from napari_seglab.core.objects import (
    FRAGMENT_FRACTION,
    WEAK_BORDER,
    instances_from_probabilities,
    merge_weak_borders,
)


def _probs(interior: np.ndarray, boundary: np.ndarray) -> np.ndarray:
    """(3, Y, X) softmax-like channels from interior and boundary maps; the rest is background."""
    interior, boundary = interior.astype(np.float32), boundary.astype(np.float32)
    return np.stack([np.clip(1 - interior - boundary, 0, 1), interior, boundary])


def _halves(border_probability: float):
    """One 12 x 24 object cut into two 12 x 12 ids, and a boundary map along their shared border."""
    labels = np.zeros((20, 32), np.int32)
    labels[4:16, 4:16], labels[4:16, 16:28] = 1, 2
    boundary = np.zeros(labels.shape, np.float32)
    boundary[4:16, 15:17] = border_probability
    return labels, boundary


def test_objects_whose_shared_border_the_model_does_not_see_become_one():
    labels, boundary = _halves(0.1)
    merged = merge_weak_borders(labels, boundary)
    assert len(np.unique(merged[labels > 0])) == 1
    assert (merged[labels == 0] == 0).all()


def test_a_border_the_model_predicts_keeps_the_objects_apart():
    labels, boundary = _halves(0.9)
    np.testing.assert_array_equal(merge_weak_borders(labels, boundary), labels)


def test_merges_chain_and_a_contact_of_a_pixel_or_two_is_left_alone():
    labels = np.zeros((10, 40), np.int32)
    labels[2:8, 2:12], labels[2:8, 12:22], labels[2:8, 22:32] = 1, 2, 3
    labels[8, 31], labels[9, 31] = 3, 4  # id 4 touches id 3 by a single pixel pair
    merged = merge_weak_borders(labels, np.zeros(labels.shape, np.float32))
    assert len(np.unique(merged[2:8, 2:32])) == 1  # 1-2 and 2-3 are weak: one object
    assert merged[9, 31] != merged[8, 31]


def test_a_speck_far_below_the_typical_area_is_dropped_and_a_real_object_kept():
    interior = np.zeros((64, 64), np.float32)
    interior[10:30, 10:30] = 0.9  # 400 px: the typical object
    interior[45:49, 45:49] = 0.9  # a 16 px speck, as a young model leaves on textured nuclei
    boundary = np.zeros_like(interior)
    probs = _probs(interior, boundary)
    assert instances_from_probabilities(probs).max() == 2  # the fixed 8 px floor keeps the speck
    labels = instances_from_probabilities(probs, object_area=400.0)
    assert labels.max() == 1 and labels[20, 20] == 1 and labels[47, 47] == 0
    assert FRAGMENT_FRACTION * 400 > 16  # the speck is a fragment by the rule, not by accident


def test_two_nuclei_split_by_a_predicted_boundary_stay_two():
    interior = np.zeros((40, 60), np.float32)
    boundary = np.zeros_like(interior)
    interior[10:30, 8:29], interior[10:30, 31:52] = 0.9, 0.9
    boundary[10:30, 29:31] = 0.8
    labels = instances_from_probabilities(_probs(interior, boundary), object_area=420.0)
    assert labels.max() == 2 and labels[20, 15] != labels[20, 45]


@pytest.mark.parametrize("weak_border", [None, WEAK_BORDER])
def test_decoding_without_a_typical_area_keeps_small_objects(weak_border):
    interior = np.zeros((32, 32), np.float32)
    interior[4:8, 4:8] = 0.9
    labels = instances_from_probabilities(_probs(interior, np.zeros_like(interior)), weak_border=weak_border)
    assert labels.max() == 1


def test_a_boundary_model_records_its_objects_typical_area_and_prediction_uses_it(tmp_path, monkeypatch):
    from painted import discs, partial

    import napari_seglab.core.objects as objects
    from napari_seglab.core.events import drive
    from napari_seglab.core.predict import iter_predict_image, load_model
    from napari_seglab.core.train import TrainConfig, iter_train

    img, inst = discs()
    cfg = TrainConfig(label_mode="objects", instance_head="boundary", preset="fast", epochs=1, steps_per_epoch=1,
                      patch=64, batch_size=2, device="cpu", scale=1.0, model_out=str(tmp_path / "m.pt"),
                      save_last=False)
    result = drive(iter_train([img], [partial(inst)], cfg))
    typical = np.median([np.count_nonzero(inst == i) for i in (1, 3)])  # the two objects painted whole
    model = load_model(result.path, "cpu")
    assert model.info.object_area == pytest.approx(typical)
    seen = {}
    decode = objects.instances_from_probabilities

    def spy(probs, *args, **kwargs):
        seen.update(kwargs)
        return decode(probs, *args, **kwargs)

    monkeypatch.setattr(objects, "instances_from_probabilities", spy)
    drive(iter_predict_image(model, img))
    assert seen["object_area"] == pytest.approx(typical)


def test_objects_split_from_a_scribbles_foreground_drop_fragments_of_the_typical_area():
    from napari_seglab.core.predict import labels_from_probabilities

    fg = np.zeros((64, 64), np.float32)
    fg[8:28, 8:28] = 0.95  # 400 px
    fg[50:54, 50:54] = 0.95  # a 16 px speck
    probs = np.stack([1 - fg, fg])
    assert labels_from_probabilities(probs, "scribbles", split_instances=True).max() == 2
    kept = labels_from_probabilities(probs, "scribbles", split_instances=True, object_area=400.0)
    assert kept.max() == 1 and kept[52, 52] == 0
    # without splitting into objects the classes are left as painted: nothing is dropped
    assert labels_from_probabilities(probs, "scribbles", object_area=400.0)[52, 52] == 1


def test_a_scribbles_model_records_the_area_of_the_objects_its_strokes_measured(tiny_model):
    from napari_seglab.core.predict import load_model

    info = load_model(tiny_model, "cpu").info
    # blobs: discs of radius 15 and 12 px (areas 707 and 452), resampled by the model's scale
    assert info.object_area is not None
    assert 0.4 * 452 * info.scale**2 < info.object_area < 2.5 * 707 * info.scale**2
