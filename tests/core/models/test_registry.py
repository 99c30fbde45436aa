"""The model family registry: every family builds, runs, learns, saves and exports as it declares.

Parametrised over :func:`families`, so a new family is tested by adding it to
the registry. Also: the core imports without cycles, and a box family plugs in
through its record alone.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from painted import two_discs
from torch import nn

from napari_seglab.core.data import Normalization
from napari_seglab.core.device import precision_for
from napari_seglab.core.errors import InputError
from napari_seglab.core.events import drive
from napari_seglab.core.models import (
    CheckpointMeta,
    Family,
    Kind,
    LossInputs,
    ModelSpec,
    build_model,
    check_spec,
    export_model,
    families,
    get_family,
    load_checkpoint,
    save_checkpoint,
)
from napari_seglab.core.models import (
    _registry as registry,
)
from napari_seglab.core.predict import LoadedModel, iter_predict_image, load_model

FAMILIES = [pytest.param(f, id=f.name) for f in families()]
# small options for each family, so the CPU tests stay quick
SMALL = {"encoder_depth": 3, "decoder_channels": [16, 8, 4]}
DETECTOR = {"box_batch_size_per_image": 16, "rpn_train_top_n": 100, "detections_per_img": 50}


def tiny_spec(family: Family, n_classes: int = 2) -> ModelSpec:
    options = dict(SMALL) if family.presets else dict(DETECTOR) if not family.semantic else {}
    encoder = "resnet18" if family.encoders is not None else ModelSpec.encoder
    return ModelSpec(family=family.name, arch=family.default_arch, encoder=encoder, in_channels=1,
                     n_classes=n_classes, options=options)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_record_is_consistent(family):
    assert isinstance(family.kind, Kind) and family.default_arch in family.archs and family.label
    assert get_family(family.name) is family and get_family(family.name.upper()) is family
    assert (family.predict_objects is None) == family.semantic
    assert family.bytes_per_pixel > 0 and family.train_bytes_per_pixel > 0
    assert 0 < family.lr < 1 and 0 < family.lr_finetune < 1
    assert "boundary" in family.heads
    if family.presets:
        assert set(family.default_preset.values()) <= set(family.presets)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_family_builds_and_predicts_its_kind(family):
    torch.manual_seed(0)
    spec = tiny_spec(family)
    model, note = build_model(spec)
    assert "random" in note
    model.eval()
    chw, _ = two_discs()
    if family.semantic:
        with torch.no_grad():
            out = model(torch.from_numpy(chw)[None])
        assert out.shape == (1, spec.out_channels, 64, 64)
        return
    lm = LoadedModel(model, CheckpointMeta(model=spec), torch.device("cpu"), precision_for(torch.device("cpu")))
    labels, rows = drive(family.predict_objects(lm, chw, tile=64, overlap=0.0, score_threshold=0.0))
    assert labels.shape == (64, 64) and labels.dtype == np.int32
    if family.kind.boxes:  # a box detector's result is its rows; the label plane stays empty
        assert not labels.any() and all({"y0", "x0", "y1", "x1", "class", "score"} <= set(r) for r in rows)
        return
    assert len(rows) == int(labels.max())


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_family_loss_hook_gives_a_gradient(family):
    torch.manual_seed(0)
    model, _ = build_model(tiny_spec(family))
    model.train()
    chw, inst = two_discs()
    images = torch.from_numpy(np.stack([chw, chw[:, ::-1].copy()]))
    targets = np.stack([inst > 0, (inst > 0)[::-1]]).astype(np.int64)
    targets[:, :4] = -1  # unannotated rows are ignored
    batch = LossInputs(images=images, targets=targets, instances=[inst, inst[::-1].copy()])
    loss = family.loss(model, batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_family_checkpoint_round_trips(family, tmp_path):
    spec = tiny_spec(family, n_classes=3 if family.semantic else 2)
    model, _ = build_model(spec)
    meta = CheckpointMeta(model=spec, label_mode="classes" if family.semantic else "instances",
                          class_names=("background", "a", "b")[:spec.n_classes], normalization=Normalization(),
                          patch=64, scale=1.0, training={"steps": 3}, metrics={"val_dice": 0.5})
    save_checkpoint(tmp_path / "m.pt", model, meta)
    ckpt = load_checkpoint(tmp_path / "m.pt")
    assert ckpt.info == meta
    assert ckpt.spec.family_entry is family
    rebuilt = ckpt.build("cpu")
    for key, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_family_export_follows_its_flag(family, tmp_path):
    spec = tiny_spec(family)
    model, _ = build_model(spec)
    save_checkpoint(tmp_path / "m.pt", model, CheckpointMeta(model=spec, patch=64))
    out = tmp_path / "m.torchscript"
    if not family.exportable:
        with pytest.raises(InputError, match="not supported"):
            export_model(tmp_path / "m.pt", "torchscript", out)
        assert not out.exists()
        return
    export_model(tmp_path / "m.pt", "torchscript", out)
    scripted = torch.jit.load(str(out))
    assert scripted(torch.rand(1, 1, 64, 64)).shape[:2] == (1, max(2, spec.out_channels))


def test_unknown_family_lists_the_registered_ones():
    with pytest.raises(InputError) as err:
        get_family("yolo")
    assert all(f.name in str(err.value) for f in families())


def test_a_record_that_contradicts_its_kind_is_refused():
    fields = dict(name="x", label="X", archs=("a",), default_arch="a", build=None, loss=None, bytes_per_pixel=1,
                  train_bytes_per_pixel=1, lr=1e-3, lr_finetune=1e-3, exportable=False)
    with pytest.raises(ValueError, match="kind"):
        Family(kind="panoptic", **fields)
    with pytest.raises(ValueError, match="predict_objects"):
        Family(kind="boxes", **fields)  # an object family must say how it predicts tiles
    with pytest.raises(ValueError, match="default architecture"):
        Family(kind="semantic", **{**fields, "default_arch": "b"})
    with pytest.raises(ValueError, match="GPU architecture 'b'"):
        Family(kind="semantic", **{**fields, "gpu_arch": "b"})
    with pytest.raises(ValueError, match="architecture of arch_lr 'b'"):
        Family(kind="semantic", **{**fields, "arch_lr": {"b": 1e-4}})


class _BoxNet(nn.Module):
    """A stand-in detector: one learnable score."""

    def __init__(self):
        super().__init__()
        self.score = nn.Parameter(torch.tensor(0.9))


def _boxes_in_tiles(lm, chw, *, tile, overlap, score_threshold=0.5, stop=None):
    """One box around the bright pixels of the plane (a stand-in for a detector's tiled prediction)."""
    yield 1, 1
    ys, xs = np.nonzero(chw[0] > 0.5)
    labels = np.zeros(chw.shape[-2:], np.int32)
    labels[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = 1
    row = {"y0": float(ys.min()), "x0": float(xs.min()), "y1": float(ys.max() + 1), "x1": float(xs.max() + 1),
           "class": 1, "score": float(lm.model.score)}
    return labels, [row]


def test_a_box_family_plugs_in_through_its_record_alone(monkeypatch, tmp_path):
    """What issue 16's detectors need: one Family record (its module) and one registry entry."""
    boxes = Family(name="boxnet", kind="boxes", label="Box net", archs=("boxnet",), default_arch="boxnet",
                   build=lambda spec, pretrained, allow_download: (_BoxNet(), "random initialisation"),
                   loss=lambda model, batch: (model.score - 1.0) ** 2, predict_objects=_boxes_in_tiles,
                   bytes_per_pixel=100, train_bytes_per_pixel=200, lr=1e-4, lr_finetune=1e-4, exportable=False,
                   label_modes=("instances",), channels_last=False, holdout=False)
    monkeypatch.setitem(registry.REGISTRY, "boxnet", boxes)
    spec = check_spec(ModelSpec(family="BoxNet", arch="BOXNET", n_classes=2))
    assert (spec.family, spec.arch) == ("boxnet", "boxnet") and not spec.semantic
    model, _ = build_model(spec)
    save_checkpoint(tmp_path / "b.pt", model, CheckpointMeta(model=spec, label_mode="instances"))
    lm = load_model(tmp_path / "b.pt", "cpu")
    chw, inst = two_discs()
    pred = drive(iter_predict_image(lm, chw[0], tile=64))
    assert pred.kind is Kind.BOXES and pred.labels.max() == 1  # the kind is the family's
    ys, xs = np.nonzero(inst)
    assert [pred.boxes[0][k] for k in ("y0", "x0", "y1", "x1")] == [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]


CHECK_IMPORT_ORDER = """
import importlib, pkgutil, sys
import napari_seglab.core as core
names = sorted(m.name for m in pkgutil.walk_packages(core.__path__, "napari_seglab.core."))
for name in names:
    for loaded in [m for m in sys.modules if m.startswith("napari_seglab")]:
        del sys.modules[loaded]  # third-party packages stay imported: only our own order is tested
    try:
        importlib.import_module(name)
    except Exception as exc:
        sys.exit(f"importing {name} first fails: {type(exc).__name__}: {exc}")
print(len(names))
"""


@pytest.mark.slow
def test_each_core_module_imports_first():
    """No import cycle hides behind an import order: each core module imports with none of ours loaded before."""
    result = subprocess.run([sys.executable, "-c", CHECK_IMPORT_ORDER], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.split()[-1]) >= 30  # every module of the core was tried
