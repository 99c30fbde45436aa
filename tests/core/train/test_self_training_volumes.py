"""3D self-training: a z-stack painted on a few planes learns its other planes from the model's 3D objects."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_seglab.core.events import Message, collect
from napari_seglab.core.labels import IGNORE
from napari_seglab.core.synthetic import make_nuclei_3d
from napari_seglab.core.train import TrainConfig, _selftrain, iter_train
from napari_seglab.core.train._data import prepare_training_data, volume_sources

TINY = dict(patch=32, batch_size=2, lr=3e-3, device="cpu", bf16="off", threads=1, save_last=False, scale=1.0)


@pytest.fixture(scope="module")
def stack():
    image, instances = make_nuclei_3d((12, 40, 36), seed=3, anisotropy=2.0)
    return image, instances.astype(np.int32)


def test_volume_sources_know_which_samples_are_their_planes_and_sections(stack):
    image, instances = stack
    lab = np.zeros_like(instances)
    lab[0], lab[2:] = instances[0], instances[2:]  # a plane, and a run deep enough for sections
    samples, *_ = prepare_training_data([image], [lab], "instances", axes=["ZYX"], scale=1.0, head="flows",
                                        anisotropy=[2.0])
    (v,) = volume_sources([image], [lab], ["ZYX"], [2.0], "instances")
    assert v.planes == [(0, 0)] + [(k - 1, k) for k in range(2, 12)] and v.axes == "ZYX"
    # the sections of the run 2-11 follow the YX planes: 20 ZX planes then 18 ZY planes, 20 rows each
    assert [j for j, _ in v.sections] == list(range(11, len(samples))) and len(v.sections) == 38
    assert v.sections[0][1] == (2, 12, 1, 0) and v.sections[-1][1] == (2, 12, 2, 34)
    assert samples[v.sections[0][0]].image.shape[-2:] == (20, 36)
    # a fully painted stack, an unknown z step or sparse labels have nothing to self-train
    assert volume_sources([image], [instances], ["ZYX"], [2.0], "instances") == []
    assert volume_sources([image], [lab], ["ZYX"], [None], "instances") == []
    assert volume_sources([image], [lab], ["ZYX"], [2.0], "objects") == []


def test_a_time_series_gives_one_source_per_partly_painted_stack(stack):
    image, instances = stack
    lab = np.zeros((2, *instances.shape), np.int32)
    lab[0, 3] = instances[3]
    lab[1] = instances  # all painted: nothing to add
    (v,) = volume_sources([np.stack([image, image])], [lab], ["TZYX"], [2.0], "instances")
    assert v.image.shape == image.shape and v.planes == [(0, 3)] and v.sections == []


def _source(instances, painted_planes, held_shape=None):
    lab = np.zeros_like(instances)
    lab[painted_planes] = instances[painted_planes]
    (v,) = volume_sources([instances.astype(np.float32)], [lab], ["ZYX"], [2.0], "instances")
    return v


def test_the_pseudo_stack_keeps_painted_planes_and_one_id_per_object(stack):
    _, instances = stack
    v = _source(instances, [3, 8])
    predicted = instances.copy()
    predicted[predicted > 0] += 100  # the model finds every nucleus, under its own ids
    oid = int(instances[3][instances[3] > 0][0])
    predicted[3][instances[3] == oid] = 0  # ... but misses one object on a painted plane
    held = [np.zeros(instances.shape[1:], bool), np.zeros(instances.shape[1:], bool)]
    held[1][:5, :5] = True  # plane 8's held-out corner
    labels, ignore = _selftrain._pseudo_stack(predicted, v, held)
    # painted planes keep what was painted; their objects take the predicted object's id through the stack
    assert np.array_equal(labels[3] > 0, instances[3] > 0) and np.array_equal(labels[8] > 0, instances[8] > 0)
    other = int(instances[8][instances[8] > 0][0])
    assert np.unique(labels[instances == other]).tolist() == [other + 100]
    assert labels[3][instances[3] == oid].min() > predicted.max()  # unmatched: a new id
    # unpainted planes are the prediction; only the held-out pixels are ignored (the band comes per sample)
    assert np.array_equal(labels[0], predicted[0])
    assert ignore[8][:5, :5].all() and ignore.sum() == 25


def test_the_round_labels_unpainted_planes_and_sections_only_when_the_model_finds_the_painted_ones(stack,
                                                                                                 monkeypatch):
    image, instances = stack
    lab = np.zeros_like(instances)
    lab[[2, 6, 10]] = instances[[2, 6, 10]]
    samples, norm, _, scale, _ = prepare_training_data([image], [lab], "instances", axes=["ZYX"], scale=1.0,
                                                       head="flows", anisotropy=[2.0])
    (v,) = volume_sources([image], [lab], ["ZYX"], [2.0], "instances")
    v.scale, v.norm = scale, norm
    held = [np.zeros(s.target.shape, bool) for s in samples]
    lm = SimpleNamespace(spec=SimpleNamespace(head="flows"))
    config = TrainConfig(label_mode="instances")
    found = {"labels": instances}
    monkeypatch.setattr(_selftrain, "iter_predict_volume", lambda *a, **k: k)  # the 3D prediction's options
    monkeypatch.setattr(_selftrain, "drive", lambda k: SimpleNamespace(
        labels=found["labels"], stopped=k["stop"] is not None and k["stop"].is_set()))
    out, note = _selftrain._with_predicted_volumes(lm, samples, held, [v], config)
    planes = [z for z in range(12) if z not in (2, 6, 10) and instances[z].any()]
    assert len(out) == 3 + len(planes) + 20 + 18  # the painted planes, the unpainted ones, the sections
    assert f"on {len(planes)} unpainted planes join the painted ones, with 38 ZX/ZY planes" in note
    assert "finds 100% of the painted objects" in note
    # an unpainted plane is taught the predicted objects, the 1 px band round their outlines ignored
    z = planes[0]
    new = out[3]
    inside = ndi.binary_erosion(instances[z] > 0, iterations=2)
    outside = ~ndi.binary_dilation(instances[z] > 0, iterations=2)
    assert (new.target[inside] == 1).all() and (new.target[outside] == 0).all()
    band = (instances[z] > 0) & ~ndi.binary_erosion(instances[z] > 0, border_value=1)
    assert (new.target[band] == IGNORE).all()
    assert not (out[0].target == IGNORE).any()  # painted planes keep every pixel
    zx = out[3 + len(planes) + 2]  # the ZX plane of row 4: every plane labelled now
    assert zx.target.shape == (24, 36) and (zx.target == 1).any() and (zx.target == IGNORE).any()
    # its rows from painted planes (z 2, 6, 10 -> rows 4-5, 12-13, 20-21) have no band
    painted_rows = zx.target[[4, 5, 12, 13, 20, 21]]
    assert not (painted_rows == IGNORE).any()
    # Stop during the 3D prediction: nothing added, the training samples as they were
    stop = threading.Event()
    stop.set()
    same, note = _selftrain._with_predicted_volumes(lm, samples, held, [v], config, stop)
    assert same is samples and "stopped" in note
    # a model that finds too few of the painted objects adds nothing yet
    found["labels"] = np.zeros_like(instances)
    out, note = _selftrain._with_predicted_volumes(lm, samples, held, [v], config)
    assert len(out) == 3 and "nothing added yet" in note


def test_training_a_few_painted_planes_self_trains_in_3d(stack, monkeypatch):
    image, instances = stack
    lab = np.zeros_like(instances)
    lab[[2, 6, 10]] = instances[[2, 6, 10]]
    monkeypatch.setattr(_selftrain, "MIN_PAINTED_FOUND", 0.0)  # a tiny run finds little; let its round label
    cfg = TrainConfig(label_mode="instances", anisotropy=2.0, instance_head="flows", epochs=2, steps_per_epoch=2,
                      self_training_at=(0.5,), **TINY)
    events, result = collect(iter_train([image], [lab], cfg, axes=["ZYX"]))
    notes = [e.text for e in events if isinstance(e, Message)]
    assert any("3D self-training: the 9 unpainted planes of 1 stack(s)" in t for t in notes)
    assert sum(t.startswith("self-training: 3D prediction of 1 stack") for t in notes) == 1
    assert result.steps == 4
    assert result.checkpoint.info.anisotropy == 2.0  # its ZX/ZY planes were learnt
    # off, nothing is predicted
    events, _ = collect(iter_train([image], [lab], TrainConfig(**{**cfg.__dict__, "self_training": False}),
                                   axes=["ZYX"]))
    assert not any("3D" in e.text for e in events if isinstance(e, Message))


def test_the_boundary_head_cannot_self_train_a_stack(stack):
    image, instances = stack
    lab = np.zeros_like(instances)
    lab[[2, 6, 10]] = instances[[2, 6, 10]]
    cfg = TrainConfig(label_mode="instances", anisotropy=2.0, instance_head="boundary", epochs=1, steps_per_epoch=1,
                      **TINY)
    events, _ = collect(iter_train([image], [lab], cfg, axes=["ZYX"]))
    assert any("needs the flows or distance instance head" in e.text for e in events if isinstance(e, Message))


def _state(monkeypatch):
    import torch

    from napari_seglab.core.train import _state

    monkeypatch.setattr(_state, "Checkpoint", lambda **kw: kw)
    meta = SimpleNamespace(training={}, replace=lambda **kw: kw)
    budget = SimpleNamespace(step=0, elapsed=lambda: 0.0)
    return _state.RunState(torch.nn.Linear(1, 1), meta, SimpleNamespace(model_out=None, save_last=False), budget)


def _epoch(state, epoch, ema):
    state.ema = ema
    return state.end_epoch(epoch, [ema], None, "cpu", None)[1].is_best


def test_without_validation_the_best_model_is_chosen_again_after_a_round(monkeypatch):
    # chosen by training loss, which new samples (predicted labels, more planes) raise: an earlier, weaker
    # model would otherwise stay the best to the end
    state = _state(monkeypatch)
    assert _epoch(state, 1, 0.5) and not _epoch(state, 2, 0.9)
    state.new_training_data(validated=False)
    assert state.ema is None and _epoch(state, 3, 0.9) and state.best_epoch == 3
    assert not _epoch(state, 4, 1.0)
    # validation scores held-out painted pixels, which a round does not change: the choice goes on
    state.new_training_data(validated=True)
    assert state.best_epoch == 3 and not _epoch(state, 5, 1.2)


def test_objects_wider_than_the_painted_ones_shrink_on_the_unpainted_planes(stack):
    # the model's foreground is too wide: the painted planes show by how much, the rim of its objects on the
    # other planes is then ignored rather than taught
    _, instances = stack
    v = _source(instances, [3, 8])
    wide = np.stack([ndi.grey_dilation(p, size=(5, 5)) for p in instances])
    held = [np.zeros(instances.shape[1:], bool)] * 2
    ratio = np.count_nonzero(wide[[3, 8]]) / np.count_nonzero(instances[[3, 8]])
    assert ratio > 1.2
    labels, ignore = _selftrain._pseudo_stack(wide, v, held)
    other = [z for z in range(12) if z not in (3, 8)]
    kept = np.count_nonzero(labels[other])
    assert kept == pytest.approx(np.count_nonzero(wide[other]) / ratio, rel=0.1)
    assert np.array_equal(ignore[other], (wide[other] > 0) & (labels[other] == 0))
    # what goes is the objects' rim: no ignored voxel lies deeper in its 3D object (z steps of 2) than a kept one
    before = wide.copy()
    before[[3, 8]] = instances[[3, 8]]  # the pseudo stack before the shrink: the painted planes as painted
    depth = np.zeros(wide.shape)
    for i in np.unique(before[before > 0]):
        inside = before == i
        depth[inside] = ndi.distance_transform_edt(inside, sampling=(2.0, 1.0, 1.0))[inside]
    kept_depth = depth[other][labels[other] > 0]
    assert depth[other][ignore[other]].max() <= kept_depth.min() < kept_depth.max()
    assert np.array_equal(labels[3] > 0, instances[3] > 0) and not ignore[3].any()
    # a model as wide as the painting changes nothing
    labels, ignore = _selftrain._pseudo_stack(instances, v, held)
    assert np.array_equal(labels > 0, instances > 0) and not ignore.any()


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _timed_run(stack, monkeypatch, predict_seconds: float, limit: float = 100.0, user_stop_at: float | None = None):
    """A time-limited run of a stack painted on 3 planes whose 3D predictions 'take' ``predict_seconds`` each
    (steps 1 s); returns (messages, steps, the clock's elapsed seconds at the end)."""
    from napari_seglab.core.events import TrainStep

    image, instances = stack
    lab = np.zeros_like(instances)
    lab[[2, 6, 10]] = instances[[2, 6, 10]]
    clock = _Clock()
    user_stop = threading.Event()

    def predict(*a, stop=None, **k):  # the truth, found after predict_seconds unless stopped first
        for _ in range(int(predict_seconds)):
            if user_stop_at is not None and clock.now - 1000.0 >= user_stop_at:
                user_stop.set()  # the user presses Stop during the round
            if stop.is_set():
                return SimpleNamespace(labels=instances, stopped=True)
            clock.now += 1.0
        return SimpleNamespace(labels=instances, stopped=False)

    monkeypatch.setattr(_selftrain, "iter_predict_volume", lambda *a, **k: (a, k))
    monkeypatch.setattr(_selftrain, "drive", lambda ak: predict(*ak[0], **ak[1]))
    cfg = TrainConfig(label_mode="instances", anisotropy=2.0, instance_head="flows", time_limit=limit,
                      steps_per_epoch=5, **TINY)
    gen, notes, steps = iter_train([image], [lab], cfg, axes=["ZYX"], clock=clock, stop=user_stop), [], 0
    try:
        while True:
            ev = next(gen)
            if isinstance(ev, TrainStep):
                steps += 1
                clock.now += 1.0
            elif isinstance(ev, Message) and ev.text.startswith("self-training"):
                notes.append(ev.text)
    except StopIteration:
        pass
    return notes, steps, clock.now - 1000.0


def test_a_round_that_would_not_fit_the_time_left_is_skipped(stack, monkeypatch):
    # the first round (35 % of 100 s) takes 40 s; the second would end past 85 % of the budget
    notes, steps, elapsed = _timed_run(stack, monkeypatch, predict_seconds=40)
    assert notes[0] == "self-training (35% of the budget): the model predicts 1 stack(s) in 3D..."
    assert notes[1].startswith("self-training: 3D prediction of 1 stack")
    assert notes[2].startswith("self-training (65% of the budget): skipped; the last round took 40 s")
    assert len(notes) == 3
    assert elapsed <= 100 and steps >= 20  # the budget kept, its rest spent training


def test_a_round_that_reaches_the_end_of_the_budget_is_cut_short(stack, monkeypatch):
    notes, steps, elapsed = _timed_run(stack, monkeypatch, predict_seconds=200)
    assert notes[-1] == "self-training: the time limit came during the round: nothing added"
    assert elapsed <= 100  # not 35 + 200 s
    assert steps < 40
    # Stop pressed during the round: nothing added, the run ends there
    notes, steps, elapsed = _timed_run(stack, monkeypatch, predict_seconds=40, user_stop_at=50)
    assert notes[-1] == "self-training: stopped during the round: nothing added"
    assert elapsed < 60 and steps < 40
