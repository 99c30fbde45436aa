"""The first minute on a laptop: presets, the time budget, object scale, partial objects, interrupts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from painted import discs, partial

from napari_seglab.core.data import median_diameter, resample_labels, scale_for
from napari_seglab.core.errors import InputError
from napari_seglab.core.events import EpochEnd, Message, TrainStep, collect, drive
from napari_seglab.core.labels import get_mode, make_target, to_correction, validate_labels
from napari_seglab.core.models import PRESETS, ModelSpec, build_model, load_checkpoint, preset_spec
from napari_seglab.core.predict import iter_predict_image, load_model
from napari_seglab.core.train import ThreadTuner, TrainConfig, cost_note, iter_train

TINY = dict(patch=64, batch_size=2, lr=3e-3, device="cpu", bf16="off", threads=1, save_last=False)


# ----------------------------------------------------------------------------- presets


def test_fast_preset_is_the_cpu_default_and_is_recorded(tmp_path):
    img, inst = discs()
    cfg = TrainConfig(label_mode="instances", epochs=1, steps_per_epoch=1, model_out=str(tmp_path / "m.pt"),
                      scale=1.0, **TINY)
    events, result = collect(iter_train([img], [inst], cfg))
    spec = load_checkpoint(tmp_path / "m.pt").spec
    fast = PRESETS["fast"]
    assert spec.encoder == fast.encoder and spec.options["encoder_depth"] == fast.encoder_depth
    assert any(isinstance(e, Message) and "'fast' preset" in e.text for e in events)
    # the checkpoint rebuilds the same shallow network for prediction
    pred = drive(iter_predict_image(load_model(tmp_path / "m.pt", "cpu"), img))
    assert pred.labels.shape == img.shape


@pytest.mark.slow
def test_fast_preset_has_fewer_levels_than_accurate():
    fast, _ = build_model(preset_spec("fast", 1, 3))
    accurate, _ = build_model(preset_spec("accurate", 1, 3))
    n = sum(p.numel() for p in fast.parameters())
    assert n < sum(p.numel() for p in accurate.parameters())
    x = torch.zeros(1, 1, 64, 64)
    assert fast(x).shape == accurate(x).shape == (1, 3, 64, 64)


def test_checkpoints_without_options_keep_the_five_level_unet():
    model, _ = build_model(ModelSpec(family="unet", arch="Unet", encoder="resnet18", n_classes=2))
    assert len(model.decoder.blocks) == 5


@pytest.mark.parametrize("options", [{"encoder_depth": 9}, {"encoder_depth": 3, "decoder_channels": [16]},
                                     {"encoder_depth": 3, "decoder_channels": [10**9, 2, 2]},
                                     {"encoder_depth": "3"}])
def test_absurd_unet_options_are_refused(options):
    with pytest.raises(InputError, match="encoder_depth|decoder_channels"):
        build_model(ModelSpec(family="unet", encoder="resnet18", options=options))


def test_unknown_preset_lists_the_known_ones():
    img, inst = discs()
    with pytest.raises(InputError, match="fast"):
        collect(iter_train([img], [inst], TrainConfig(label_mode="instances", preset="turbo", epochs=1, **TINY)))


# ----------------------------------------------------------------------------- the time budget


class FakeClock:
    """A clock the test moves: every training step 'takes' ``step`` seconds."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_time_limit_stops_before_a_step_that_would_overrun():
    img, inst = discs()
    clock = FakeClock()
    cfg = TrainConfig(label_mode="instances", time_limit=10.5, scale=1.0, **TINY)
    gen = iter_train([img], [inst], cfg, clock=clock)
    steps = []
    try:
        while True:
            ev = next(gen)
            if isinstance(ev, TrainStep):
                steps.append(ev)
                clock.now += 1.0  # the time the step took is charged after it: the next one costs 1 s too
    except StopIteration as fin:
        result = fin.value
    # budget 10.5 s and 1 s per step: a step starts only while elapsed + one step fits
    assert result.steps == len(steps) == 10
    assert steps[-1].elapsed <= 10.5
    assert [e.step for e in steps] == list(range(1, 11))


@pytest.mark.slow
def test_time_limited_epochs_validate_several_times_in_a_short_run():
    img, inst = discs()
    clock = FakeClock()
    cfg = TrainConfig(label_mode="instances", time_limit=36, steps_per_epoch=1000, scale=1.0, **TINY)
    gen = iter_train([img], [inst], cfg, clock=clock)
    ends = 0
    try:
        while True:
            ev = next(gen)
            if isinstance(ev, TrainStep):
                clock.now += 1.0
            ends += isinstance(ev, EpochEnd)
    except StopIteration:
        pass
    assert ends >= 10  # a twelfth of the budget (3 s) per epoch, not 1000 steps


def test_default_budget_is_two_minutes_unless_epochs_are_given():
    assert TrainConfig().time_limit == 120 and TrainConfig().epochs is None
    assert TrainConfig(epochs=3).time_limit is None


def test_cost_note_warns_when_the_budget_is_far_too_small_and_names_what_would_work():
    spec = ModelSpec(family="maskrcnn", arch="maskrcnn_resnet50_fpn", n_classes=2)
    text, level = cost_note(spec, torch.device("cpu"), 60)
    assert level == "warning" and "too short" in text and "maskrcnn_resnet18_fpn architecture is useful" in text
    # the family's light architecture is too slow as well: the U-Net's fast preset is named
    text, level = cost_note(ModelSpec(family="retinanet", arch="retinanet_resnet18_fpn", n_classes=2),
                            torch.device("cpu"), 60)
    assert level == "warning" and "'fast' preset" in text
    # a heavy architecture whose light sibling fits the budget: the sibling is named
    text, level = cost_note(ModelSpec(family="fcn", arch="fcn_resnet50", n_classes=3), torch.device("cpu"), 120)
    assert level == "warning" and "fcn_resnet18 architecture is useful" in text
    text, level = cost_note(ModelSpec(family="fcn", arch="fcn_resnet18", n_classes=3), torch.device("cpu"), 120)
    assert level == "info" and "per step" in text
    text, level = cost_note(preset_spec("fast", 1, 3), torch.device("cpu"), 120)
    assert level == "info" and "per step" in text


def test_thread_tuner_keeps_the_faster_thread_count(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    tuner = ThreadTuner(2, None, probe=2, every=100)
    seconds = {2: 0.8, 1: 0.3}  # a busy machine: one thread wins
    note, step = None, 0
    while note is None:
        tuner.before_step(step)
        step += 1
        note = tuner.after_step(step, seconds[tuner.current])
    assert tuner.best == 1 and calls[-1] == 1 and "1 thread" in note
    fixed = ThreadTuner(2, 2)
    fixed.before_step(5)
    assert fixed.after_step(6, 1.0) is None and fixed.current == 2


# ----------------------------------------------------------------------------- interrupts


@pytest.mark.parametrize("how", ["ctrl-c", "close"])
def test_interrupt_before_the_first_validation_leaves_a_loadable_model(tmp_path, how):
    img, inst = discs()
    out = tmp_path / "m.pt"
    cfg = TrainConfig(label_mode="instances", epochs=5, steps_per_epoch=50, model_out=str(out), scale=1.0, **TINY)
    gen = iter_train([img], [inst], cfg)
    for ev in gen:
        if isinstance(ev, TrainStep) and ev.step == 2:
            break
    assert not out.exists()
    if how == "ctrl-c":
        with pytest.raises(KeyboardInterrupt):
            gen.throw(KeyboardInterrupt)
    else:
        gen.close()
    ckpt = load_checkpoint(out)
    assert ckpt.meta["metrics"]["note"] == "stopped before the first validation"
    drive(iter_predict_image(load_model(out, "cpu"), img))


# ----------------------------------------------------------------------------- object scale


def test_median_diameter_and_scale_estimate():
    _, inst = discs(centres=((30, 30, 5), (60, 60, 5), (30, 90, 5)))
    d = median_diameter([inst])
    assert 9 <= d <= 11
    assert scale_for(d, target=30) == pytest.approx(30 / d, abs=0.06)
    assert scale_for(29.0, target=30) == 1.0  # close enough: no resampling
    assert scale_for(None) == 1.0
    assert scale_for(1.0, target=30) == 4.0  # clipped


@pytest.mark.slow
def test_scale_is_estimated_recorded_and_applied_by_predict(tmp_path):
    img, inst = discs(centres=((30, 30, 5), (30, 41, 5), (70, 90, 6)))
    cfg = TrainConfig(label_mode="instances", epochs=1, steps_per_epoch=1, model_out=str(tmp_path / "m.pt"), **TINY)
    events, result = collect(iter_train([img], [inst], cfg))
    scale = result.checkpoint.meta["scale"]
    assert scale > 2  # objects of ~10 px grow towards the target size
    assert any(isinstance(e, Message) and "object scale" in e.text for e in events)
    pred = drive(iter_predict_image(load_model(tmp_path / "m.pt", "cpu"), img, probabilities=True))
    assert pred.labels.shape == img.shape and pred.probabilities.shape[1:] == img.shape


def test_a_given_scale_wins_over_the_estimate_and_is_validated():
    img, inst = discs()
    _, result = collect(iter_train([img], [inst], TrainConfig(label_mode="instances", epochs=1, steps_per_epoch=1,
                                                         scale=1.0, **TINY)))
    assert result.checkpoint.meta["scale"] == 1.0
    with pytest.raises(InputError, match="object scale"):
        collect(iter_train([img], [inst], TrainConfig(label_mode="instances", epochs=1, scale=50.0, **TINY)))


def test_resample_labels_keeps_ids_and_shape():
    lab = np.arange(12).reshape(3, 4)
    up = resample_labels(lab, (6, 8))
    assert up.shape == (6, 8) and set(np.unique(up)) == set(range(12))
    assert (resample_labels(up, (3, 4)) == lab).all()


# ----------------------------------------------------------------------------- partially annotated objects


def test_objects_mode_targets_ignore_unpainted_pixels_beyond_the_margin():
    _, inst = discs()
    lab = validate_labels(partial(inst), inst.shape, "objects")
    target = make_target(lab, "objects")
    margin = get_mode("objects").with_margin(lab)
    assert (target[margin == 0] == -1).all()  # unpainted and away from the painted object
    assert (target[margin == 1] == 0).all()  # background strokes and the margin round the object
    obj = lab == 2
    assert set(np.unique(target[obj])) == {1, 2}
    # the painted object's outline is a boundary even where it meets unpainted pixels (object 2 is unpainted)
    assert target[30, 39] == 2 and target[30, 30] == 1


@pytest.mark.parametrize(("lab", "match"), [
    (lambda i: np.where(i == 1, 2, 0).astype(np.uint16), "no background strokes"),
    (lambda i: np.where(i == 1, 1, 0).astype(np.uint16), "no object"),
])
def test_objects_mode_refuses_incomplete_annotation(lab, match):
    _, inst = discs()
    with pytest.raises(InputError, match=match):
        validate_labels(lab(inst), inst.shape, "objects")


def test_objects_mode_trains_and_predicts_instances(tmp_path):
    img, inst = discs()
    cfg = TrainConfig(label_mode="objects", epochs=1, steps_per_epoch=2, model_out=str(tmp_path / "m.pt"),
                      scale=1.0, **TINY)
    _, result = collect(iter_train([img], [partial(inst)], cfg))
    assert result.checkpoint.meta["class_names"] == ["background", "interior", "boundary"]
    pred = drive(iter_predict_image(load_model(tmp_path / "m.pt", "cpu"), img))
    assert pred.kind == "instances"


def test_objects_correction_keeps_each_object_and_marks_background():
    pred = np.array([[0, 1, 1], [0, 0, 2]], np.int32)
    corr = to_correction(pred, "objects", "instances")
    assert corr.tolist() == [[1, 2, 2], [1, 1, 3]]
    semantic = to_correction(np.array([[0, 1, 0, 1]]), "objects", "semantic")
    assert semantic.tolist() == [[1, 2, 1, 3]]
