"""Untrusted checkpoint metadata and training options, fuzzed with hypothesis.

A checkpoint is a file from anywhere. Whatever its metadata holds, loading
either gives a checkpoint every consumer can use (describe, info JSON,
normalise, export example, build, predict) or one InputError naming the
file; it never builds something the weights do not describe, never asks
timm for a name outside SegLab's registry, never recurses without bound.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import napari_seglab.core.models._checkpoint as ckpt_mod
from napari_seglab.core.data import Normalization
from napari_seglab.core.errors import InputError
from napari_seglab.core.models import check_stored_encoder, describe_checkpoint, load_checkpoint
from napari_seglab.core.train import TrainConfig

JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)

#: where a mutation lands: a path of keys into the payload
TARGETS = [("meta",), ("meta", "model"), ("meta", "model", "family"), ("meta", "model", "arch"),
           ("meta", "model", "encoder"), ("meta", "model", "in_channels"), ("meta", "model", "n_classes"),
           ("meta", "model", "options"), ("meta", "normalization"), ("meta", "normalization", "low"),
           ("meta", "normalization", "high"), ("meta", "normalization", "per_image"), ("meta", "normalization", "lo"),
           ("meta", "normalization", "hi"), ("meta", "patch"), ("meta", "label_mode"), ("meta", "class_names"),
           ("meta", "metrics"), ("meta", "training"), ("meta", "extra"), ("version",), ("state_dict",)]


@pytest.fixture(scope="module")
def base_payload(tiny_model):
    return torch.load(tiny_model, weights_only=True)


def _set(payload: dict, path: tuple, value) -> None:
    node = payload
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value


def _use_everything(ckpt) -> None:
    """What info, predict and export do with a loaded checkpoint's metadata."""
    from napari_seglab.core.models import example_input

    describe_checkpoint(ckpt)
    json.dumps(ckpt.meta, default=str)
    norm = Normalization.from_dict(ckpt.meta["normalization"])
    chw = np.random.default_rng(0).random((ckpt.spec.in_channels, 32, 32)).astype(np.float32)
    assert np.all(np.isfinite(norm.apply(chw)))
    assert example_input(ckpt).shape[1] == ckpt.spec.in_channels


@pytest.mark.slow
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(st.tuples(st.sampled_from(TARGETS), JSONISH), min_size=1, max_size=3))
def test_fuzzed_metadata_loads_cleanly_or_is_one_input_error(tmp_path, monkeypatch, base_payload, mutations):
    import timm

    payload = {**base_payload, "meta": copy.deepcopy(base_payload["meta"])}
    for path, value in mutations:
        _set(payload, path, value)
    monkeypatch.setattr(ckpt_mod.torch, "load", lambda *a, **k: payload)  # the file as parsed
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: pytest.fail(f"timm asked for {a}"))
    path = tmp_path / "m.pt"
    path.write_bytes(b"stand-in for the parsed file")
    try:
        ckpt = load_checkpoint(path)
    except InputError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
        return
    _use_everything(ckpt)
    ckpt.build("cpu")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(meta=JSONISH)
def test_fuzzed_metadata_files_on_disk(tmp_path, meta):
    """Real files through torch.save / torch.load(weights_only=True), any metadata at all."""
    path = tmp_path / "m.pt"
    torch.save({"format": "napari-seglab", "version": 1, "meta": meta, "state_dict": {}}, path)
    with pytest.raises(InputError):
        load_checkpoint(path)  # no weights: every such file is refused, each with one clear line


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "efficientnet-b0", "tu-resnet18"])
def test_registry_encoders_are_allowed(name):
    assert check_stored_encoder(name) == name


@pytest.mark.parametrize("name", ["tu-../../x", "tu-hf-hub:user/repo", "hf-hub:user/repo", "local-dir:/tmp/m",
                                  "tu-local-dir:/tmp/m", "/etc/passwd", "resnet18 ", "tu-", "tu-resnet18/..",
                                  "tu-no_such_model", "x" * 500, 5, None, ["resnet18"]])
def test_names_outside_the_registry_are_refused(name):
    with pytest.raises(InputError, match="registry|not a name"):
        check_stored_encoder(name)


@pytest.mark.slow
def test_weights_are_checked_without_allocating_the_model(tmp_path, base_payload, monkeypatch):
    """The skeleton is built on the meta device: no parameter memory is ever allocated for it."""
    from napari_seglab.core import models

    built = []
    real = models.build_model

    def spy(spec, *args, **kwargs):
        model, note = real(spec, *args, **kwargs)
        built.append({p.device.type for p in model.parameters()})
        return model, note

    monkeypatch.setattr(ckpt_mod, "build_model", spy)
    payload = copy.deepcopy(base_payload)
    payload["meta"]["model"]["encoder"] = "tu-convnext_xxlarge"
    path = tmp_path / "m.pt"
    torch.save(payload, path)
    with pytest.raises(InputError, match="weights do not fit"):
        load_checkpoint(path)
    assert built == [{"meta"}]


# ----------------------------------------------------------------------------- training options

ANY_VALUE = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
             | st.text(max_size=5))


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(["epochs", "time_limit", "steps_per_epoch", "patch", "batch_size", "lr", "focal_gamma",
                              "val_fraction", "seed"]), value=ANY_VALUE,
       arch=st.sampled_from(["Unet", "FPN", "DeepLabV3Plus", "PSPNet", "PAN"]))
def test_training_options_are_accepted_or_refused_cleanly(field, value, arch):
    config = TrainConfig(arch=arch, device="cpu", **{field: value})
    try:
        config.check()
    except InputError:
        return
    value = getattr(config, field)
    if field in ("time_limit", "lr", "focal_gamma", "val_fraction") and value is not None:
        assert math.isfinite(value)
    if field == "seed":
        assert 0 <= value < 2**63
        np.random.default_rng(value)
        torch.Generator().manual_seed(value)
    if field == "patch" and value is not None:
        assert 32 <= value <= 8192 and value % 32 == 0
    if field == "val_fraction":
        assert 0 <= value < 1


def test_patch_that_cannot_fit_in_memory_is_refused():
    with pytest.raises(InputError, match="GiB"):
        TrainConfig(patch=8192, batch_size=64, device="cpu").check()
