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


@pytest.mark.parametrize("command", ["predict", "batch"])
def test_a_cpu_prediction_from_the_command_line_leaves_triton_out(random_unet, tmp_path, command):
    """torchvision pulls in torch._dynamo, which imports triton where it is installed (0.07 GiB resident);
    `seglab predict/batch --device cpu` mark it missing first, and still predict. A GPU request keeps it."""
    import importlib.util
    import os
    import subprocess
    import sys

    import tifffile

    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed: nothing to leave out")
    image = tmp_path / "img.tif"
    tifffile.imwrite(image, np.zeros((64, 64), np.uint16))
    code = ("import sys\nfrom napari_seglab.core.device import leave_out_triton\n"
            "assert not leave_out_triton('cuda:0') and 'triton' not in sys.modules\n"
            "from napari_seglab.cli import main\n"
            "rc = main(sys.argv[1:])\n"
            "print('RESULT', rc, 'torchvision' in sys.modules, 'triton' in sys.modules, sys.modules.get('triton'))\n")
    where = (["--input", str(image), "--output", str(tmp_path / "o.tif")] if command == "predict"
             else ["--input-dir", str(tmp_path), "--output-dir", str(tmp_path / "out")])
    proc = subprocess.run([sys.executable, "-c", code, command, "--model", str(random_unet), *where,
                           "--device", "cpu", "--runtime", "torch"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert "RESULT 0 True True None" in proc.stdout, proc.stderr[-2000:]
    written = tmp_path / "o.tif" if command == "predict" else tmp_path / "out" / "img_labels.tif"
    assert written.exists(), sorted(p.name for p in tmp_path.rglob("*"))
