"""Self-training in the ``objects`` mode: the model's confident objects become painted objects during training."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_seglab.core.errors import InputError
from napari_seglab.core.events import Message, collect
from napari_seglab.core.labels import IGNORE
from napari_seglab.core.train import TrainConfig, _selftrain, iter_train, prepare_training_data

TINY = dict(preset="fast", patch=64, batch_size=2, lr=3e-3, device="cpu")


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


@pytest.fixture
def plane():
    """A 96x96 plane: one painted object (2) and background strokes (1); what the model predicts on it."""
    shape = (96, 96)
    painted = np.zeros(shape, np.int64)
    painted[_disc(shape, 20, 20, 8)] = 2
    painted[88:, :] = 1  # background strokes along the bottom
    predicted = np.zeros(shape, np.int32)
    predicted[_disc(shape, 20, 20, 8)] = 1  # the painted object, found again
    predicted[_disc(shape, 20, 70, 8)] = 2  # unpainted, the painted one's size: confident
    predicted[_disc(shape, 60, 70, 8)] = 3  # as confident, but on held-out pixels
    predicted[_disc(shape, 60, 20, 2)] = 4  # far smaller than the painted object: doubtful
    predicted[_disc(shape, 89, 45, 7)] = 5  # lies on the background strokes: doubtful
    probs = np.where(predicted > 0, 0.99, 0.01)[None].astype(np.float32)  # sure everywhere
    image = np.random.default_rng(0).random((1, *shape)).astype(np.float32)
    held = np.zeros(shape, bool)
    held[50:70, 60:80] = True
    return image, painted, predicted, probs, held


def test_confident_unpainted_objects_are_painted_and_held_out_pixels_stay_out(plane, monkeypatch):
    image, painted, predicted, probs, held = plane
    monkeypatch.setattr(_selftrain, "_predicted_objects", lambda lm, img: (predicted, probs, None, "boundary"))
    samples, _, _, _, _ = prepare_training_data([image[0]], [painted], "objects", scale=1.0)
    sample = samples[0]
    sample.target[held] = IGNORE  # as the hold-out leaves the training sample
    config = TrainConfig(label_mode="objects", self_training=True)
    new, added = _selftrain._with_confident_objects(SimpleNamespace(), sample, held, config)
    assert added == 1
    # object 2 of the prediction is painted as a new object (id 3), with its margin of background
    np.testing.assert_array_equal(np.unique(new.labels[predicted == 2]), [3])
    assert (new.target[_disc(painted.shape, 20, 70, 6)] > 0).all()
    # its outline may be a pixel off: the band round it is ignored, the margin beyond is background
    outline = (predicted == 2) & ~_disc(painted.shape, 20, 70, 7.5)
    assert outline.any() and (new.target[outline] == IGNORE).all()
    just_outside = ndi.binary_dilation(predicted == 2) & (predicted != 2)
    assert (new.target[just_outside] == IGNORE).all()
    ring = _disc(painted.shape, 20, 70, 10.5) & ~_disc(painted.shape, 20, 70, 9.5)
    assert (new.target[ring] == 0).all() and (sample.target[ring] == IGNORE).all()
    # what the user painted is unchanged; the doubtful and held-out objects teach nothing
    np.testing.assert_array_equal(new.labels[painted > 0], painted[painted > 0])
    for oid in (3, 4):
        assert (new.labels[predicted == oid] == 0).all()
    assert (new.target[held] == IGNORE).all()
    assert (new.target[predicted == 4] == IGNORE).all()


def test_nothing_confident_leaves_the_sample_as_it_was(plane, monkeypatch):
    image, painted, predicted, probs, held = plane
    unsure = np.full_like(probs, 0.5)
    monkeypatch.setattr(_selftrain, "_predicted_objects", lambda lm, img: (predicted, unsure, None, "boundary"))
    samples, *_ = prepare_training_data([image[0]], [painted], "objects", scale=1.0)
    config = TrainConfig(label_mode="objects", self_training=True)
    new, added = _selftrain._with_confident_objects(SimpleNamespace(), samples[0], held, config)
    assert added == 0 and new is samples[0]


@pytest.mark.slow
@pytest.mark.parametrize("head", ["boundary", "flows"])
def test_objects_training_with_self_training_runs_its_rounds(head):
    from napari_seglab.core.synthetic import make_nuclei, make_scribbles

    img, inst = make_nuclei(shape=(96, 96), seed=5)
    strokes = make_scribbles(inst, seed=5, n_objects=0, n_background=6)
    ann = np.where(strokes == 1, 1, 0).astype(np.uint16)
    for k, i in enumerate(np.unique(inst)[1:4]):
        ann[inst == i] = k + 2
    cfg = TrainConfig(label_mode="objects", epochs=2, steps_per_epoch=2, self_training=True,
                      self_training_at=(0.5,), instance_head=head, **TINY)
    events, result = collect(iter_train([img], [ann], cfg))
    notes = [e.text for e in events if isinstance(e, Message) and e.text.startswith("self-training")]
    # the round is announced before its predictions (they can take a while), then says what it added
    assert len(notes) == 2 and notes[0] == "self-training (50% of the budget): the model predicts its 1 " \
        "training plane(s)..."
    assert "objects added to the painted ones" in notes[1]
    assert result.steps == 4


def test_self_training_is_refused_for_class_labels():
    with pytest.raises(InputError, match="scribbles, objects or instances labels"):
        TrainConfig(label_mode="classes", self_training=True).check()
