"""Fixtures for the dock-widget tests: tiny data, a checkpoint trained once, captured errors."""

from __future__ import annotations

import pytest
from widget_helpers import TINY

from napari_seglab.core.events import run_to_completion
from napari_seglab.core.synthetic import make_nuclei, make_scribbles
from napari_seglab.core.train import TrainConfig, iter_train


@pytest.fixture(scope="session")
def tiny_nuclei():
    """A (64, 96) uint16 nuclei image, its instances and painted scribbles (0/1/2)."""
    image, instances = make_nuclei((64, 96), seed=2)
    return image, instances, make_scribbles(instances, seed=2)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_nuclei):
    """A U-Net/resnet18 checkpoint trained for a few steps on the tiny scribbles."""
    image, _instances, scribbles = tiny_nuclei
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    config = TrainConfig(epochs=1, steps_per_epoch=3, model_out=str(path), save_last=False, **TINY)
    run_to_completion(iter_train([image], [scribbles], config))
    return path


@pytest.fixture
def errors(monkeypatch):
    """Messages passed to napari's show_error (and receive_error) while the test runs."""
    from napari.utils import notifications

    seen: list[str] = []
    monkeypatch.setattr(notifications, "show_error", lambda message: seen.append(str(message)))
    monkeypatch.setattr(notifications.notification_manager, "receive_error",
                        lambda _type, exc, _tb: seen.append(f"{type(exc).__name__}: {exc}"))
    return seen
