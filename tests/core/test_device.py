"""Devices: a device that is not there is an InputError up front; a GPU predicts what the CPU predicts.

The ``gpu`` tests run only where torch sees a CUDA device (tests/conftest.py
skips them elsewhere); the rest run everywhere.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_seglab.core.device import describe, is_oom, pick_device
from napari_seglab.core.errors import InputError
from napari_seglab.core.events import drive
from napari_seglab.core.predict import iter_predict_image, load_model


def test_the_cpu_is_always_there_and_unknown_devices_are_input_errors():
    assert pick_device("cpu") == torch.device("cpu") and pick_device("CPU").type == "cpu"
    assert describe(torch.device("cpu")).startswith("cpu (")
    with pytest.raises(InputError, match="unknown device"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            pick_device("cuda")
        assert pick_device("auto").type in ("cpu", "mps")


def test_out_of_memory_is_recognised_by_type_or_by_message():
    assert is_oom(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_oom(RuntimeError("MPS backend out of memory"))
    assert not is_oom(RuntimeError("shape mismatch")) and not is_oom(ValueError("out of memory"))


@pytest.mark.gpu
def test_a_cpu_trained_model_predicts_the_same_discs_on_the_gpu(tiny_model, blobs):
    img, _lab, mask = blobs
    on_cpu = drive(iter_predict_image(load_model(tiny_model, "cpu"), img, tile=64))
    gpu = load_model(tiny_model, "cuda")
    assert gpu.device.type == "cuda" and describe(gpu.device).startswith("cuda:")
    on_gpu = drive(iter_predict_image(gpu, img, tile=64))
    assert on_gpu.labels.shape == img.shape
    assert np.mean(on_gpu.labels == on_cpu.labels) > 0.98  # the GPU may compute in lower precision
    assert (on_gpu.labels.astype(bool) == mask).mean() > 0.9
