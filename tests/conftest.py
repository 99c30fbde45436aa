"""Shared fixtures and markers: tiny synthetic data and the few models the whole suite shares.

Training is the slow part of this suite, so each kind of model is trained once
per session here and every test that needs one takes it from here: the U-Net
scribbles model (``tiny_model``) and the flows-head objects model
(``flows_model``). A test that checks plumbing rather than learning takes a
random-weight checkpoint (``random_unet``), which costs no training at all.

Markers (registered in pyproject.toml): ``slow`` for training beyond a few
steps, learning checks, subprocess kill tests and heavy fuzzing; ``gui`` for
everything that needs a viewer (set here for any test that asks for one, and
for all of tests/widgets in its conftest); ``gpu`` for tests that need CUDA
(skipped without it). ``make test-fast`` runs ``-m "not slow and not gui"``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

# helpers shared by test folders (painted.py, boxfamily.py in core/; widget_helpers.py in widgets/)
for _helpers in ("core", "widgets"):
    sys.path.insert(0, str(Path(__file__).parent / _helpers))


def _pin_xdist_worker() -> None:
    """Give each pytest-xdist worker its own share of the cores (``make test`` runs two workers).

    Training sizes torch's thread pool from the affinity mask; two workers that
    each think they own both cores would fight over them at every barrier.
    """
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not worker or not count or not hasattr(os, "sched_setaffinity"):
        return
    cpus, n, i = sorted(os.sched_getaffinity(0)), int(count), int(worker.removeprefix("gw"))
    if len(cpus) >= n > 1:
        os.sched_setaffinity(0, set(cpus[i::n]))


_pin_xdist_worker()

#: fixtures that open a Qt viewer or drive Qt: a test asking for one is a ``gui`` test
GUI_FIXTURES = {"make_napari_viewer", "make_napari_viewer_proxy", "qtbot", "qapp"}


def pytest_collection_finish(session):
    """Move what collection imported (torch, napari, Qt: millions of objects) out of the collector's sight.

    napari's viewer fixture runs a full ``gc.collect()`` after every viewer test; frozen, the modules
    are no longer scanned each time (they are never freed anyway).
    """
    import gc

    gc.collect()
    gc.freeze()


def pytest_collection_modifyitems(config, items):
    """Mark viewer tests ``gui``; skip ``gpu`` tests where torch sees no CUDA device."""
    gpu_skip = None
    for item in items:
        if GUI_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.gui)
        if item.get_closest_marker("gpu") is not None:
            if gpu_skip is None:
                import torch

                has_cuda = torch.cuda.is_available()
                gpu_skip = False if has_cuda else pytest.mark.skip(reason="needs a CUDA device")
            if gpu_skip:
                item.add_marker(gpu_skip)


@pytest.fixture(scope="session")
def blobs():
    """A (96, 128) float32 image with two bright discs and its dense scribbles (1 bg, 2 fg)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :128]
    mask = ((yy - 40) ** 2 + (xx - 50) ** 2 < 15**2) | ((yy - 70) ** 2 + (xx - 100) ** 2 < 12**2)
    img = rng.normal(100, 10, mask.shape).astype(np.float32)
    img[mask] += 80
    lab = np.where(mask, 2, 1).astype(np.uint8)
    return img, lab, mask


@pytest.fixture(scope="session")
def tiny_nuclei():
    """A (64, 96) uint16 nuclei image, its instances and painted scribbles (0/1/2)."""
    from napari_seglab.core.synthetic import make_nuclei, make_scribbles

    image, instances = make_nuclei((64, 96), seed=2)
    return image, instances, make_scribbles(instances, seed=2)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, blobs):
    """Path of a tiny U-Net ('fast' preset: 3-level resnet18) trained 16 steps on ``blobs`` scribbles.

    The one trained scribbles model of the session: core, CLI and widget tests
    predict with it (it finds the two discs of ``blobs``). The preset trains in
    a third of the time of a 5-level resnet18 and writes 93 MB instead of 218.
    """
    from napari_seglab.core.events import drive
    from napari_seglab.core.train import TrainConfig, iter_train

    img, lab, _ = blobs
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    cfg = TrainConfig(label_mode="scribbles", preset="fast", epochs=4, steps_per_epoch=4, patch=64,
                      batch_size=4, lr=3e-3, device="cpu", model_out=str(path))
    drive(iter_train([img], [lab], cfg))
    return path


@pytest.fixture(scope="session")
def random_unet(tmp_path_factory):
    """Path of a random-weight U-Net (resnet18, scribbles) checkpoint: plumbing needs no training."""
    import torch

    from napari_seglab.core.data import Normalization
    from napari_seglab.core.models import ModelSpec, build_model, save_checkpoint

    torch.manual_seed(0)
    spec = ModelSpec(family="unet", arch="Unet", encoder="resnet18", in_channels=1, n_classes=2)
    model, _ = build_model(spec)
    meta = {"model": spec.to_dict(), "label_mode": "scribbles",
            "normalization": Normalization().to_dict()}
    return save_checkpoint(tmp_path_factory.mktemp("random_unet") / "model.pt", model, meta)


@pytest.fixture(scope="session")
def flows_model(tmp_path_factory):
    """Path of a flows-head U-Net trained 2 steps on partially painted discs, object scale 1.5.

    The session's instances model (objects mode, fast preset): tests that predict objects,
    batch them or fine-tune from a head model take it from here.
    """
    from painted import discs, partial

    from napari_seglab.core.events import drive
    from napari_seglab.core.train import TrainConfig, iter_train

    img, inst = discs()
    path = tmp_path_factory.mktemp("flows_model") / "m.pt"
    cfg = TrainConfig(label_mode="objects", instance_head="flows", epochs=1, steps_per_epoch=2,
                      model_out=str(path), patch=64, batch_size=2, lr=3e-3, device="cpu", bf16="off",
                      threads=1, scale=1.5, save_last=False)
    drive(iter_train([img], [partial(inst)], cfg))
    return path
