import threading

import numpy as np
import pytest
import torch

from napari_seglab.core.errors import InputError
from napari_seglab.core.events import (
    CheckpointSaved,
    EpochEnd,
    Message,
    Preview,
    TileDone,
    TrainStep,
    collect,
)
from napari_seglab.core.models import load_checkpoint
from napari_seglab.core.predict import iter_predict_image, load_model
from napari_seglab.core.tiling import TilePlan, window
from napari_seglab.core.train import TrainConfig, iter_train

TINY = dict(preset="fast", patch=64, batch_size=2, lr=3e-3, device="cpu")  # 3-level resnet18


drive = collect  # (events, result) of a core generator


@pytest.mark.slow
def test_training_yields_progress_and_saves_best(tmp_path, blobs):
    img, lab, mask = blobs
    cfg = TrainConfig(label_mode="scribbles", epochs=2, steps_per_epoch=3, model_out=str(tmp_path / "m.pt"), **TINY)
    events, result = drive(iter_train([img], [lab], cfg))
    steps = [e for e in events if isinstance(e, TrainStep)]
    assert [s.step for s in steps] == list(range(1, 7))
    assert steps[-1].fraction == pytest.approx(1.0)
    assert sum(isinstance(e, EpochEnd) for e in events) == 2
    assert any(isinstance(e, CheckpointSaved) for e in events)
    assert isinstance(events[0], Message)
    ckpt = load_checkpoint(tmp_path / "m.pt")
    meta = ckpt.meta
    assert meta["label_mode"] == "scribbles" and meta["model"]["encoder"] == "resnet18"
    assert meta["normalization"]["method"] == "percentile"
    assert meta["training"]["steps"] == 6 and len(meta["metrics"]["history"]) == 2
    assert (tmp_path / "m.last.pt").exists()
    assert load_checkpoint(tmp_path / "m.last.pt", with_optimizer=True).optimizer
    assert result.steps == 6 and not result.stopped


@pytest.mark.slow
def test_stop_event_ends_training_and_keeps_model(tmp_path, blobs):
    img, lab, _ = blobs
    stop = threading.Event()
    cfg = TrainConfig(label_mode="scribbles", epochs=50, steps_per_epoch=5, model_out=str(tmp_path / "m.pt"), **TINY)
    gen = iter_train([img], [lab], cfg, stop=stop)
    for ev in gen:
        if isinstance(ev, TrainStep) and ev.step == 2:
            stop.set()
            break
    events, result = drive(gen)
    assert result.stopped and result.steps == 2
    load_checkpoint(tmp_path / "m.pt")


@pytest.mark.slow
def test_closing_generator_leaves_valid_checkpoint(tmp_path, blobs):
    img, lab, _ = blobs
    cfg = TrainConfig(label_mode="scribbles", epochs=50, steps_per_epoch=2, model_out=str(tmp_path / "m.pt"), **TINY)
    gen = iter_train([img], [lab], cfg)
    for ev in gen:
        if isinstance(ev, CheckpointSaved):
            break
    for ev in gen:
        if isinstance(ev, TrainStep):
            break
    gen.close()  # what a cancelled napari worker does
    load_checkpoint(tmp_path / "m.pt")
    assert load_checkpoint(tmp_path / "m.last.pt", with_optimizer=True).optimizer
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.last.pt", "m.pt"]


def test_learns_blobs_and_predicts(tiny_model, blobs):
    img, _, mask = blobs
    lm = load_model(tiny_model, "cpu")
    events, pred = drive(iter_predict_image(lm, img, probabilities=True))
    assert isinstance(events[-1], TileDone)
    assert pred.labels.shape == img.shape and pred.labels.dtype == np.int32
    assert pred.probabilities.shape == (2, *img.shape)
    np.testing.assert_allclose(pred.probabilities.sum(0), 1, atol=1e-4)
    assert (pred.labels.astype(bool) == mask).mean() > 0.9


@pytest.mark.slow
def test_continue_training_restores_optimizer(tmp_path, tiny_model, blobs):
    img, lab, _ = blobs
    last = tiny_model.with_suffix(".last.pt")
    cfg = TrainConfig(label_mode="scribbles", epochs=1, steps_per_epoch=1, init=str(last),
                      model_out=str(tmp_path / "m2.pt"), **TINY)
    events, result = drive(iter_train([img], [lab], cfg))
    assert any(isinstance(e, Message) and "optimizer state restored" in e.text for e in events)
    assert result.checkpoint.meta["training"]["config"]["init"] == str(last)


@pytest.mark.slow
def test_validation_holdout_reports_dice(tmp_path):
    from napari_seglab.core.synthetic import make_nuclei, make_scribbles

    img, inst = make_nuclei(shape=(160, 160), seed=3)
    scrib = make_scribbles(inst, seed=3, n_objects=16, n_background=16)  # 12 and 16 strokes
    cfg = TrainConfig(label_mode="scribbles", epochs=1, steps_per_epoch=2, **TINY)
    events, result = drive(iter_train([img], [scrib], cfg))
    ends = [e for e in events if isinstance(e, EpochEnd)]
    assert ends and ends[0].val_dice is not None and 0.0 <= ends[0].val_dice <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["scribbles", "classes"])
def test_patch_and_batch_follow_the_label_mode(mode):
    from napari_seglab.core.train import DENSE_BATCH, DENSE_PATCH, SPARSE_BATCH, SPARSE_PATCH

    img = np.random.default_rng(0).normal(100, 10, (96, 96)).astype(np.float32)
    lab = np.zeros((96, 96), np.uint8)
    lab[10:20, 10:20], lab[60:70, 60:70] = 1, 2
    if mode == "classes":
        lab = (lab == 2).astype(np.uint8)  # dense: 0 background everywhere else, 1 object
    cfg = TrainConfig(label_mode=mode, epochs=1, steps_per_epoch=1, encoder="resnet18", device="cpu")
    assert cfg.patch is None and cfg.batch_size is None
    _events, result = drive(iter_train([img], [lab], cfg))
    used = result.checkpoint.meta["training"]["config"]
    sparse = mode == "scribbles"
    assert used["patch"] == (SPARSE_PATCH if sparse else DENSE_PATCH)["cpu"]
    assert used["batch_size"] == (SPARSE_BATCH if sparse else DENSE_BATCH)


@pytest.mark.slow
def test_few_strokes_all_train_without_holdout():
    from napari_seglab.core.data import MIN_STROKES_FOR_HOLDOUT, split_validation
    from napari_seglab.core.synthetic import make_nuclei, make_scribbles

    img, inst = make_nuclei(shape=(128, 128), seed=3)
    scrib = make_scribbles(inst, seed=3, n_objects=12, n_background=MIN_STROKES_FOR_HOLDOUT - 4)
    target = scrib.astype(np.int64) - 1
    assert not split_validation(target, True, 0.15).any()
    assert split_validation(target, True, 0.15, min_strokes=3).any()
    # scale 1: the painted pixels are counted at the image's own size (scribbles otherwise resample)
    cfg = TrainConfig(label_mode="scribbles", epochs=1, steps_per_epoch=1, scale=1.0, **TINY)
    events, result = drive(iter_train([img], [scrib], cfg))
    assert any(isinstance(e, Message) and "every stroke trains" in e.text for e in events)
    assert [e.val_dice for e in events if isinstance(e, EpochEnd)] == [None]
    # every painted pixel trained: none was held out
    assert result.checkpoint.meta["training"]["class_pixels"] == np.bincount(target[target >= 0]).tolist()


@pytest.mark.slow
def test_preview_events(blobs):
    img, lab, _ = blobs
    cfg = TrainConfig(label_mode="scribbles", epochs=1, steps_per_epoch=4, preview_every=2, **TINY)
    events, _ = drive(iter_train([img], [lab], cfg, preview_plane=img))
    previews = [e for e in events if isinstance(e, Preview)]
    assert [p.step for p in previews] == [2, 4]
    assert previews[0].labels.shape == img.shape


@pytest.mark.slow
def test_multiple_pairs_of_different_sizes_and_stack(blobs):
    img, lab, _ = blobs
    stack = np.stack([img, img[::-1]])
    stack_lab = np.zeros(stack.shape, np.uint8)
    stack_lab[1] = lab[::-1]  # only plane 1 annotated
    cfg = TrainConfig(label_mode="scribbles", epochs=1, steps_per_epoch=1, **TINY)
    _, result = drive(iter_train([img[:64, :80], stack], [lab[:64, :80], stack_lab], cfg, axes=["YX", "ZYX"]))
    assert len(result.checkpoint.meta["training"]["data"]) == 2


@pytest.mark.parametrize("change,message", [
    (dict(family="maskrcnn"), "instances"),
    (dict(patch=50), "multiple of 32"),
    (dict(epochs=0), "epochs must be"),
    (dict(time_limit=-1.0), "time limit"),
    (dict(encoder="resnet999", preset=None), "unknown encoder"),
    (dict(arch="NotANet"), "unknown unet architecture"),
])
def test_bad_config_is_refused(blobs, change, message):
    img, lab, _ = blobs
    with pytest.raises(InputError, match=message):
        cfg = TrainConfig(**{"label_mode": "scribbles", "epochs": 1, "steps_per_epoch": 1, **TINY, **change})
        drive(iter_train([img], [lab], cfg))


def test_bad_images_are_refused(blobs):
    img, lab, _ = blobs
    cfg = TrainConfig(label_mode="scribbles", epochs=1, steps_per_epoch=1, **TINY)
    bad = img.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        drive(iter_train([bad], [lab], cfg))
    with pytest.raises(InputError, match="constant"):
        drive(iter_train([np.full_like(img, 3)], [lab], cfg))


@pytest.mark.slow
def test_small_image_is_padded_to_patch(blobs):
    img, lab, _ = blobs
    cfg = TrainConfig(label_mode="scribbles", epochs=1, steps_per_epoch=1, **{**TINY, "patch": 128})
    _, result = drive(iter_train([img[:40, :50]], [lab[:40, :50]], cfg))
    assert result.steps == 1


def test_predict_refuses_wrong_channels(tiny_model, blobs):
    img, _, _ = blobs
    lm = load_model(tiny_model, "cpu")
    with pytest.raises(InputError, match="channel"):
        drive(iter_predict_image(lm, np.stack([img, img, img], -1), "YXC"))


def test_tiling_helpers():
    assert TilePlan.fixed((100, 100), 128, 0.25).ys == (0,)
    starts = TilePlan.fixed((1000, 10), 256, 0.25).ys
    assert starts[0] == 0 and starts[-1] == 1000 - 256
    assert all(b - a <= 192 for a, b in zip(starts, starts[1:], strict=False))
    w = window(64, 64)
    assert w.shape == (64, 64) and w.min() > 0 and w[32, 32] == pytest.approx(w.max())
    assert torch is not None


@pytest.mark.slow
def test_out_of_memory_halves_the_tile_and_reports(tiny_model, blobs):
    """An OOM on a large tile is retried with smaller tiles and reported as a warning."""
    img, _, mask = blobs
    lm = load_model(tiny_model, "cpu")
    real = lm.model

    class Fussy(torch.nn.Module):
        def forward(self, x):
            if x.shape[-1] * x.shape[-2] > 128 * 128:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
            return real(x)

    lm.model = Fussy()
    big = np.tile(img, (3, 3))
    events, pred = drive(iter_predict_image(lm, big, tile=384))
    warnings = [e for e in events if isinstance(e, Message) and e.level == "warning"]
    assert warnings and "out of memory" in warnings[0].text
    assert pred.labels.shape == big.shape


def test_out_of_memory_at_smallest_tile_is_a_clear_error(tiny_model, blobs):
    img, _, _ = blobs
    lm = load_model(tiny_model, "cpu")

    class Hopeless(torch.nn.Module):
        def forward(self, x):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    lm.model = Hopeless()
    with pytest.raises(InputError, match="out of memory"):
        drive(iter_predict_image(lm, np.tile(img, (3, 3)), tile=256))


def test_stop_during_prediction_returns_partial(tiny_model, blobs):
    img, _, _ = blobs
    lm = load_model(tiny_model, "cpu")
    stop = threading.Event()
    gen = iter_predict_image(lm, np.tile(img, (4, 4)), tile=128, overlap=0.25, stop=stop)
    first = next(gen)
    assert isinstance(first, TileDone) and first.tiles > 4
    stop.set()
    _, pred = drive(gen)
    assert pred.stopped


@pytest.mark.slow
def test_self_training_adds_confident_pixels_but_not_held_out_ones():
    from napari_seglab.core.synthetic import make_nuclei, make_scribbles
    from napari_seglab.core.train import prepare_samples
    from napari_seglab.core.train._selftrain import _with_confident_pixels

    img, inst = make_nuclei(shape=(96, 96), seed=5)
    scrib = make_scribbles(inst, seed=5, n_objects=8, n_background=4)
    cfg = TrainConfig(label_mode="scribbles", epochs=2, steps_per_epoch=2, self_training=True, self_training_at=(0.5,),
                      **TINY)
    events, result = drive(iter_train([img], [scrib], cfg))
    assert any(isinstance(e, Message) and e.text.startswith("self-training:") for e in events)
    # the pseudo-labelling itself: painted pixels kept, held-out ones stay ignored
    samples, _, _ = prepare_samples([img], [scrib], "scribbles")
    held = np.zeros(scrib.shape, bool)
    held[:10] = True
    lm = load_model(result.checkpoint, "cpu")
    blank = [type(samples[0])(samples[0].image, np.where(held, -1, samples[0].target))]
    dense, added = _with_confident_pixels(lm, blank[0], held, threshold=0.0)
    assert added == int(((scrib == 0) & ~held).sum())
    painted = (scrib > 0) & ~held
    np.testing.assert_array_equal(dense.target[painted], scrib[painted].astype(np.int64) - 1)
    assert (dense.target[held] == -1).all()


@pytest.mark.parametrize(("stroked", "warned"), [(4, True), (12, False)])
def test_scribbles_mode_warns_when_a_class_has_strokes_in_too_few_objects(stroked, warned):
    # twelve bright discs; a short stroke inside 4 or 12 of them, and background strokes between the rows
    from napari_seglab.core.train import MIN_CLASS_STROKES, stroke_counts

    yy, xx = np.mgrid[:120, :160]
    img = np.full((120, 160), 100, np.float32)
    labels = np.zeros((120, 160), np.uint16)
    for k in range(12):
        cy, cx = 20 + 40 * (k // 4), 20 + 40 * (k % 4)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 12**2] += 80
        if k < stroked:
            labels[cy, cx - 5:cx + 5] = 2
    labels[38:42, 4:156] = labels[78:82, 4:156] = 1
    assert stroke_counts([labels], "scribbles") == {2: stroked}
    assert (stroked < MIN_CLASS_STROKES) == warned
    cfg = TrainConfig(label_mode="scribbles", epochs=1, steps_per_epoch=1, scale=1.0, **TINY)
    events, _ = drive(iter_train([img], [labels], cfg))
    notes = [e for e in events if isinstance(e, Message) and "keep only the objects' cores" in e.text]
    assert bool(notes) == warned
    if warned:
        assert notes[0].text.startswith(f"label 2 in {stroked} strokes:") and notes[0].level == "warning"


def test_stroke_counts_count_plane_by_plane_and_only_the_scribbles_classes():
    from napari_seglab.core.train import stroke_counts

    stack = np.zeros((3, 20, 20), np.uint16)
    stack[:, 5, 2:8] = 2  # one stroke through three planes: three strokes, one per plane
    stack[0, 12, 2:8] = 3
    stack[0, 15, 2:18] = 1  # background is not counted
    assert stroke_counts([stack, None], "scribbles") == {2: 3, 3: 1}
    assert stroke_counts([stack], "objects") == {}


@pytest.mark.parametrize(("stroke_width", "warned"), [(1, True), (12, False)])
def test_objects_mode_warns_when_the_background_strokes_are_too_few_for_the_objects(stroke_width, warned):
    # three whole painted discs (about 2400 px) and one background stroke 1 or 12 px wide (5 % or 60 %)
    from napari_seglab.core.train import MIN_BACKGROUND_SHARE, background_share

    yy, xx = np.mgrid[:112, :128]
    img = np.full((112, 128), 100, np.float32)
    labels = np.zeros((112, 128), np.uint16)
    for k, (cy, cx) in enumerate([(30, 30), (30, 90), (70, 60)]):
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < 16**2
        img[disc] += 80
        labels[disc] = k + 2
    labels[110 - stroke_width:110, 4:124] = 1  # below the discs
    share = background_share([labels], "objects")
    assert (share < MIN_BACKGROUND_SHARE) == warned
    cfg = TrainConfig(label_mode="objects", epochs=1, steps_per_epoch=1, scale=1.0, **TINY)
    events, _ = drive(iter_train([img], [labels], cfg))
    notes = [e.text for e in events if isinstance(e, Message) and "of the painted objects' area" in e.text]
    assert bool(notes) == warned
    if warned:
        assert f"background strokes cover {share:.0%} of the painted objects' area" in notes[0]
        assert [e.level for e in events if isinstance(e, Message) and e.text == notes[0]] == ["warning"]
