"""Two touching nuclei decoded as one object are split in two; convex objects, and shapes like the painted
ones, are left whole."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk

from napari_seglab.core.evaluate import match_instances
from napari_seglab.core.objects import (
    SPLIT_SOLIDITY,
    assess_objects,
    instances_from_probabilities,
    solidity,
    split_non_convex,
    split_solidity,
    typical_solidity,
)


def _pair(gap: int = 21, shape=(40, 70)) -> tuple[np.ndarray, np.ndarray]:
    """(one object made of two touching discs of radius 10, the two discs as separate ids)."""
    truth = np.zeros(shape, np.int32)
    truth[disk((20, 20), 10, shape=shape)] = 1
    truth[disk((20, 20 + gap), 10, shape=shape)] = 2
    truth[19:22, 30:20 + gap - 9] = 1  # a bridge, so that the two discs are one connected object
    return (truth > 0).astype(np.int32), truth


def test_two_touching_nuclei_taken_as_one_are_split_into_the_two():
    merged, truth = _pair()
    assert solidity(merged > 0) < SPLIT_SOLIDITY
    out = split_non_convex(merged)
    assert len(np.unique(out[out > 0])) == 2
    assert match_instances(out, truth)["ap75"] == 1.0  # each piece is one disc, at IoU 0.75 or better
    assert (out > 0).sum() == (merged > 0).sum()  # no pixel lost or added


def test_convex_objects_stay_whole_and_other_objects_keep_their_ids():
    labels = np.zeros((60, 120), np.int32)
    labels[disk((30, 20), 12)] = 3
    rr, cc = np.mgrid[:60, :120]
    labels[((rr - 30) / 10) ** 2 + ((cc - 70) / 25) ** 2 <= 1] = 7  # an elongated ellipse: convex
    np.testing.assert_array_equal(split_non_convex(labels), labels)


def test_no_split_when_switched_off_or_not_a_plane():
    merged, _ = _pair()
    for off in (None, 0):
        np.testing.assert_array_equal(split_non_convex(merged, off), merged)
    stack = np.stack([merged, merged])
    np.testing.assert_array_equal(split_non_convex(stack), stack)


def test_boundary_decoding_splits_a_merged_pair_when_the_model_records_convex_objects():
    merged, truth = _pair()
    # the model sees one blob: interior everywhere, no boundary between the discs
    probs = np.stack([(merged == 0).astype(np.float32), (merged > 0).astype(np.float32) * 0.9,
                      np.zeros(merged.shape, np.float32)])
    probs[0] += 0.1 * (merged > 0)
    whole = instances_from_probabilities(probs)
    assert whole.max() == 1  # without the rule: one object
    split = instances_from_probabilities(probs, min_solidity=split_solidity(0.95))
    assert split.max() == 2 and match_instances(split, truth)["ap50"] == 1.0


def test_the_painted_objects_set_how_convex_an_object_must_be():
    discs = np.zeros((60, 60), np.int32)
    discs[disk((15, 15), 8)] = 1
    discs[disk((40, 40), 10)] = 2
    assert typical_solidity([discs]) > 0.9
    assert typical_solidity([np.zeros((10, 10), np.int32)]) is None
    assert split_solidity(None) is None  # scribbles, older checkpoints: never split
    assert split_solidity(0.97) == SPLIT_SOLIDITY  # convex nuclei: the default bar
    assert split_solidity(0.7) == 0.7  # objects painted less convex: only what is less convex still

    merged, _ = _pair()
    assert split_non_convex(merged, split_solidity(0.7)).max() == 1  # solidity 0.87 is like those painted


def _assist_case(painted_shape: str):
    """A merged pair predicted where nothing is painted, next to four painted objects of ``painted_shape``."""
    pred = np.zeros((120, 160), np.int32)
    merged, _ = _pair(shape=(40, 70))
    pred[70:110, 80:150] = merged * 9
    painted = np.zeros(pred.shape, np.uint16)
    for k, (y, x) in enumerate(((20, 20), (20, 60), (20, 100), (60, 20))):
        if painted_shape == "discs":
            painted[disk((y, x), 10, shape=painted.shape)] = k + 2
        else:  # two touching discs, as irregular cells would be
            piece = np.zeros(pred.shape, bool)
            piece[disk((y, x - 9), 7, shape=pred.shape)] = True
            piece[disk((y, x + 9), 7, shape=pred.shape)] = True
            piece[y, x - 9:x + 9] = True
            painted[piece] = k + 2
    return pred, painted


@pytest.mark.parametrize("painted_shape, doubtful", [("discs", True), ("pairs", False)])
def test_assist_doubts_an_object_less_convex_than_the_painted_ones(painted_shape, doubtful):
    pred, painted = _assist_case(painted_shape)
    row = next(r for r in assess_objects(pred, painted).objects if r["id"] == 9)
    assert row["unpainted"]
    assert ("not convex" in row["reasons"]) is doubtful
    # switched off, the same object is never doubted for its shape
    row = next(r for r in assess_objects(pred, painted, min_solidity=0).objects if r["id"] == 9)
    assert "not convex" not in row["reasons"]


def test_training_records_how_convex_the_painted_objects_are_and_decoding_reads_it(tmp_path):
    from napari_seglab.core.errors import InputError
    from napari_seglab.core.events import drive
    from napari_seglab.core.models import (
        CheckpointMeta,
        load_checkpoint,
        parse_meta,
        save_checkpoint,
    )
    from napari_seglab.core.synthetic import make_nuclei, make_scribbles
    from napari_seglab.core.train import TrainConfig, iter_train

    image, instances = make_nuclei((64, 64), seed=1)
    strokes = make_scribbles(instances, seed=1)
    painted = np.where(strokes == 1, 1, 0).astype(np.int32)
    for k, i in enumerate(np.unique(instances)[1:5]):
        painted[instances == i] = k + 2
    tiny = dict(patch=32, batch_size=2, device="cpu", bf16="off", threads=1, save_last=False, scale=1.0,
                epochs=1, steps_per_epoch=2, time_limit=None, self_training=False)
    objects = drive(iter_train([image], [painted], TrainConfig(label_mode="objects", **tiny))).checkpoint
    expected = typical_solidity([np.where(painted >= 2, painted, 0)])
    assert objects.info.object_solidity == pytest.approx(expected, abs=0.02)
    scribbles = drive(iter_train([image], [strokes], TrainConfig(label_mode="scribbles", **tiny))).checkpoint
    assert scribbles.info.object_solidity is None  # strokes say nothing of the objects' shape
    # it survives the file, and a value out of (0, 1] is refused on load
    path = tmp_path / "m.pt"
    save_checkpoint(path, objects.build(), objects.info)
    assert load_checkpoint(path).info.object_solidity == objects.info.object_solidity
    assert CheckpointMeta.from_dict(objects.info.to_dict()).object_solidity == objects.info.object_solidity
    with pytest.raises(InputError, match="object_solidity"):
        parse_meta({**objects.info.to_dict(), "object_solidity": 1.5}, "m.pt")
