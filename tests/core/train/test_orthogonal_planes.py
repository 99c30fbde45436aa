"""A fully painted run of a z-stack's planes also teaches its ZX and ZY planes, z stretched by the anisotropy."""

from __future__ import annotations

import numpy as np
import pytest

from napari_seglab.core.events import Message, collect
from napari_seglab.core.synthetic import make_nuclei_3d, make_scribbles
from napari_seglab.core.train import TrainConfig, iter_train
from napari_seglab.core.train._data import painted_runs, prepare_training_data, section_runs

TINY = dict(patch=32, batch_size=2, lr=3e-3, device="cpu", bf16="off", threads=1, save_last=False, scale=1.0,
            epochs=1, steps_per_epoch=1)


@pytest.fixture(scope="module")
def stack():
    image, instances = make_nuclei_3d((12, 40, 36), seed=3, anisotropy=2.0)
    return image, instances.astype(np.int32)


def _shapes(samples):
    return [s.image.shape[-2:] for s in samples]


def test_painted_runs_need_three_consecutive_planes():
    lab = np.zeros((9, 4, 4), np.int32)
    lab[[0, 1, 3, 4, 5, 7]] = 1
    assert painted_runs(lab) == [(3, 6)]


def test_a_painted_stack_gives_its_zx_and_zy_planes_stretched_in_z(stack):
    image, instances = stack
    samples, *_ = prepare_training_data([image], [instances], "instances", axes=["ZYX"], scale=1.0, head="flows",
                                        anisotropy=[2.0])
    yx, zx, zy = samples[:12], samples[12:12 + 20], samples[12 + 20:]
    assert _shapes(yx) == [(40, 36)] * 12
    # one ZX plane every 2 rows (40 / 2) and one ZY plane every 2 columns (36 / 2), 12 planes -> 24 rows
    assert _shapes(zx) == [(24, 36)] * 20 and _shapes(zy) == [(24, 40)] * 18
    # the ZX plane of row 4 is that section of the stack, each plane's row twice: its foreground learns it
    assert np.array_equal(zx[2].target > 0, np.repeat(instances[:, 4, :] > 0, 2, axis=0))
    assert np.array_equal(zy[3].target > 0, np.repeat(instances[:, :, 6] > 0, 2, axis=0))
    # the flows of a section point along its own rows and columns, as in any plane
    assert zx[2].regression.shape[-2:] == (24, 36)


def test_without_an_anisotropy_or_a_run_only_yx_planes(stack):
    image, instances = stack
    samples, *_ = prepare_training_data([image], [instances], "instances", axes=["ZYX"], scale=1.0, head="flows")
    assert len(samples) == 12
    two = np.zeros_like(instances)
    two[[1, 2, 4]] = instances[[1, 2, 4]]  # no three consecutive painted planes
    samples, *_ = prepare_training_data([image], [two], "instances", axes=["ZYX"], scale=1.0, head="flows",
                                        anisotropy=[2.0])
    assert len(samples) == 3


def test_a_run_thinner_than_its_nuclei_gives_no_sections(stack):
    # 3 planes at anisotropy 2 are 6 pixels deep: every section would be a nucleus cut at both faces
    image, instances = stack
    thin = np.zeros_like(instances)
    thin[4:7] = instances[4:7]
    assert painted_runs(thin) == [(4, 7)] and section_runs(thin, 2.0, "instances") == []
    assert section_runs(instances, 2.0, "instances") == [(0, 12)]
    events, _ = collect(iter_train([image], [thin], TrainConfig(label_mode="instances", anisotropy=2.0, **TINY),
                                   axes=["ZYX"]))
    assert any("ZX/ZY planes: none" in t and "Paint more consecutive planes" in t for t in _notes(events))


def test_strokes_give_no_sections(stack):
    # a stroke says nothing of the planes it was not painted on
    image, instances = stack
    strokes = np.stack([make_scribbles(p, seed=z) for z, p in enumerate(instances)])
    samples, *_ = prepare_training_data([image], [strokes], "scribbles", axes=["ZYX"], scale=1.0,
                                        anisotropy=[2.0])
    assert len(samples) == 12


def _objects_labels(instances, ids, planes=None):
    """``objects`` labels: background strokes on every other plane, the nuclei ``ids`` painted whole (on
    ``planes`` only, when given) as 2, 3, ..."""
    lab = np.zeros(instances.shape, np.int32)
    for z in range(0, len(instances), 2):
        lab[z][make_scribbles(instances[z], seed=z, n_objects=0) == 1] = 1
    for k, i in enumerate(ids):
        where = instances == i
        if planes is not None:
            where[np.setdiff1d(np.arange(len(instances)), planes)] = False
        lab[where] = k + 2
    return lab


def _interior_nuclei(instances, n):
    """n nuclei that lie between the stack's first and last planes (so their depth is what is tested)."""
    inside = [i for i in np.unique(instances[1:-1]) if i and not np.isin(i, instances[[0, -1]])]
    return inside[:n]


def test_objects_painted_through_their_planes_give_their_sections(stack):
    # a whole nucleus painted on all its planes: ZX/ZY planes through it are true sections of it
    image, instances = stack
    ids = _interior_nuclei(instances, 3)
    lab = _objects_labels(instances, ids)
    samples, *_ = prepare_training_data([image], [lab], "objects", axes=["ZYX"], scale=1.0, anisotropy=[2.0])
    painted = [z for z in range(12) if lab[z].any()]
    rows = sorted({y for i in ids for y in np.nonzero((instances == i).any(axis=(0, 2)))[0] if y % 2 == 0})
    cols = sorted({x for i in ids for x in np.nonzero((instances == i).any(axis=(0, 1)))[0] if x % 2 == 0})
    assert len(samples) == len(painted) + len(rows) + len(cols)
    zx = samples[len(painted):len(painted) + len(rows)]
    assert _shapes(zx) == [(24, 36)] * len(rows)  # the whole stack's depth, z stretched by the anisotropy
    # the section of the first row through a painted nucleus: its pixels are the object there, the strokes
    # background, the rest unpainted (ignored), each plane's row twice
    section = np.repeat(lab[:, rows[0], :], 2, axis=0)
    target = zx[0].target
    assert np.all(target[section >= 2] > 0) and np.all(target[section == 1] == 0)  # interior or outline
    assert (target == -1).any()


def test_objects_painted_on_some_of_their_planes_give_no_sections(stack):
    # a nucleus painted on one plane of its several: a section would cut it there and teach its faces
    image, instances = stack
    ids = _interior_nuclei(instances, 3)
    depth = {i: np.nonzero((instances == i).any(axis=(1, 2)))[0] for i in ids}
    middle = sorted({int(d[len(d) // 2]) for d in depth.values()})
    lab = _objects_labels(instances, ids, planes=middle)
    samples, *_ = prepare_training_data([image], [lab], "objects", axes=["ZYX"], scale=1.0, anisotropy=[2.0])
    assert len(samples) == len([z for z in range(12) if lab[z].any()])
    events, _ = collect(iter_train([image], [lab], TrainConfig(label_mode="objects", anisotropy=2.0, **TINY),
                                   axes=["ZYX"]))
    assert any("ZX/ZY planes: none" in t and "Paint whole nuclei through all their planes" in t
               for t in _notes(events))
    # one whole nucleus beside them: its rows and columns give sections, but not those the cut ones cross
    whole, partial = _objects_labels(instances, ids[:1]), _objects_labels(instances, ids[1:], planes=middle)
    mixed = np.where(partial >= 2, partial + 1, whole)
    samples, *_ = prepare_training_data([image], [mixed], "objects", axes=["ZYX"], scale=1.0, anisotropy=[2.0])
    rows = {y for y in np.nonzero((instances == ids[0]).any(axis=(0, 2)))[0] if y % 2 == 0}
    cut = {y for i in ids[1:] for y in np.nonzero((instances == i).any(axis=(0, 2)))[0]}
    cols = {x for x in np.nonzero((instances == ids[0]).any(axis=(0, 1)))[0] if x % 2 == 0}
    cut_cols = {x for i in ids[1:] for x in np.nonzero((instances == i).any(axis=(0, 1)))[0]}
    extra = len(samples) - len([z for z in range(12) if mixed[z].any()])
    assert extra == len(rows - cut) + len(cols - cut_cols)


def test_a_time_series_of_stacks_gives_the_sections_of_each(stack):
    image, instances = stack
    movie, labels = np.stack([image, image]), np.stack([instances, np.zeros_like(instances)])
    samples, *_ = prepare_training_data([movie], [labels], "instances", axes=["TZYX"], scale=1.0, head="flows",
                                        anisotropy=[2.0])
    assert len(samples) == 12 + 20 + 18  # the unpainted time point gives nothing
    assert _shapes(samples[12:13]) == [(24, 36)]


def _notes(events):
    return [e.text for e in events if isinstance(e, Message)]


def test_training_reads_the_z_step_from_the_voxel_size(stack):
    image, instances = stack
    cfg = TrainConfig(label_mode="instances", **TINY)
    events, result = collect(iter_train([image], [instances], cfg, axes=["ZYX"], pixel_sizes=[(1.0, 0.5, 0.5)]))
    assert any("ZX/ZY planes: 38 more training planes" in t and "anisotropy 2 (from the voxel size)" in t
               for t in _notes(events))
    assert result.steps == 1
    # the model records the z step it learnt the sections at: 3D prediction's fallback for a stack without one
    assert result.checkpoint.info.anisotropy == 2.0


def test_an_unknown_z_step_trains_on_yx_planes_and_says_how_to_get_more(stack):
    image, instances = stack
    events, result = collect(iter_train([image], [instances], TrainConfig(label_mode="instances", **TINY),
                                        axes=["ZYX"]))
    notes = _notes(events)
    assert any("z step is unknown" in t and "anisotropy" in t for t in notes)
    assert not any("ZX/ZY planes:" in t for t in notes)
    assert result.checkpoint.info.anisotropy is None
    # given, it is used; 0 turns the sections off without a note
    events, _ = collect(iter_train([image], [instances], TrainConfig(label_mode="instances", anisotropy=3.0, **TINY),
                                   axes=["ZYX"]))
    assert any("ZX/ZY planes: 26 more" in t and "anisotropy 3 (given)" in t for t in _notes(events))
    events, _ = collect(iter_train([image], [instances], TrainConfig(label_mode="instances", anisotropy=0, **TINY),
                                   axes=["ZYX"]))
    assert not any("ZX/ZY" in t or "z step is unknown" in t for t in _notes(events))


def test_the_checkpoint_keeps_the_z_step_and_a_file_with_a_wrong_one_is_refused():
    from napari_seglab.core.errors import InputError
    from napari_seglab.core.models import CheckpointMeta
    from napari_seglab.core.models._metadata import parse_meta

    spec = {"family": "unet", "arch": "Unet", "encoder": "resnet18", "in_channels": 1, "n_classes": 2,
            "options": {"head": "flows"}}
    meta = CheckpointMeta.coerce({"model": spec, "label_mode": "instances", "n_classes": 2, "anisotropy": 2.5})
    assert meta.anisotropy == 2.5 and CheckpointMeta.from_dict(meta.to_dict()).anisotropy == 2.5
    assert "anisotropy" not in meta.replace(anisotropy=None).to_dict()
    for bad in (0, -1, "2", 1e9):
        with pytest.raises(InputError, match="anisotropy"):
            parse_meta({"model": spec, "label_mode": "instances", "n_classes": 2, "anisotropy": bad}, "m.pt")
