"""``--runtime onnx``: the checkpoint's network under onnxruntime gives torch's labels and probabilities."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from packages import tiny_checkpoint

from napari_seglab.core.errors import InputError

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")


@pytest.mark.parametrize("mode, n_classes, head", [("scribbles", 2, None), ("objects", 2, "flows")])
def test_onnx_runtime_gives_torch_labels(tmp_path, mode, n_classes, head):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from napari_seglab.core.api import predict_image
    from napari_seglab.core.predict import OnnxNetwork, load_model

    ckpt = tiny_checkpoint(tmp_path / "m.pt", mode, n_classes, head)
    image = tifffile.imread("sample_data/nuclei_test.tif")[:150, :200]
    onnx = load_model(ckpt, "cpu", runtime="onnx")
    assert isinstance(onnx.model, OnnxNetwork)
    want = predict_image(load_model(ckpt, "cpu", runtime="torch"), image, probabilities=True, tile=96)
    got = predict_image(onnx, image, probabilities=True, tile=96)
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_allclose(got.probabilities, want.probabilities, atol=1e-4)


def test_onnx_runtime_is_refused_where_it_cannot_run(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    import torch

    from napari_seglab.cli import main
    from napari_seglab.core.models import get_family
    from napari_seglab.core.predict import use_onnx

    with pytest.raises(InputError, match="per-pixel networks .* not Mask R-CNN"):
        use_onnx("onnx", torch.device("cpu"), get_family("maskrcnn"))
    with pytest.raises(InputError, match="runs on the CPU"):
        use_onnx("onnx", torch.device("cuda"), get_family("unet"))
    assert not use_onnx("auto", torch.device("cuda"), get_family("unet"))
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    image = tmp_path / "img.tif"
    tifffile.imwrite(image, np.zeros((64, 64), np.uint16))
    rc = main(["predict", "--model", str(ckpt), "--input", str(image), "--output", str(tmp_path / "o.tif"),
               "--runtime", "onnx", "--device", "cpu"])
    assert rc == 0 and (tmp_path / "o.tif").exists()


def test_batch_runs_a_folder_under_onnx_runtime(tmp_path, capsys):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from napari_seglab.cli import main

    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    folder = tmp_path / "in"
    folder.mkdir()
    image = tifffile.imread("sample_data/nuclei_test.tif")[:96, :128]
    for i in range(2):
        tifffile.imwrite(folder / f"img{i}.tif", image)
    for runtime in ("torch", "onnx"):
        rc = main(["batch", "--model", str(ckpt), "--input-dir", str(folder), "--output-dir",
                   str(tmp_path / runtime), "--workers", "0", "--runtime", runtime])
        assert rc == 0, capsys.readouterr().err
    for i in range(2):
        want = tifffile.imread(next((tmp_path / "torch").rglob(f"img{i}*labels*.tif")))
        got = tifffile.imread(next((tmp_path / "onnx").rglob(f"img{i}*labels*.tif")))
        np.testing.assert_array_equal(got, want)


def test_auto_runtime_is_the_default_and_switches_to_onnx_once_a_job_is_large_enough(tmp_path):
    """A small job stays in torch (converting would cost more than it saves); past the threshold the same
    model converts once and gives the same labels."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from napari_seglab.core.api import predict_image
    from napari_seglab.core.predict import AUTO_ONNX_PIXELS, AutoNetwork, PredictOptions, load_model

    assert PredictOptions().runtime == "auto" and AUTO_ONNX_PIXELS >= 1_000_000
    ckpt = tiny_checkpoint(tmp_path / "m.pt", "objects", 2, "flows")
    image = tifffile.imread("sample_data/nuclei_test.tif")[:150, :200]
    want = predict_image(load_model(ckpt, "cpu", runtime="torch"), image, probabilities=True, tile=96)
    small = load_model(ckpt, "cpu")  # the default
    assert isinstance(small.model, AutoNetwork)
    np.testing.assert_array_equal(predict_image(small, image, tile=96).labels, want.labels)
    assert not small.model.converted  # 30,000 pixels: torch all along
    # as if a large image: the switch comes after the first tile (tiles above AUTO_TORCH_TILE_PIXELS)
    image = np.tile(image, (3, 2))
    want = predict_image(load_model(ckpt, "cpu", runtime="torch"), image, probabilities=True, tile=320)
    large = load_model(ckpt, "cpu")
    large.model.switch_pixels = 320 * 320
    got = predict_image(large, image, probabilities=True, tile=320)
    assert large.model.converted
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_allclose(got.probabilities, want.probabilities, atol=1e-4)
    # a detector, or a model on a GPU, never switches
    assert not isinstance(load_model(ckpt, "cpu", runtime="torch").model, AutoNetwork)


def test_auto_keeps_small_tiles_in_torch_and_one_copy_of_the_weights_after_the_switch(tmp_path):
    """Tiles up to AUTO_TORCH_TILE_PIXELS (block by block on the CPU) stay with torch however many pixels a
    job predicts (onnxruntime's arena would hold their activations out of the decoding's reach); on larger
    tiles the switch exports the network and lets it go (the session holds the weights), the checkpoint's
    weights were never kept, the labels are torch's, and a copy (the CPU fallback) runs the same session."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import copy

    import torch

    from napari_seglab.core.api import predict_image
    from napari_seglab.core.predict import AUTO_TORCH_TILE_PIXELS, load_model

    ckpt = tiny_checkpoint(tmp_path / "m.pt", "objects", 2, "flows")
    image = np.tile(tifffile.imread("sample_data/nuclei_test.tif"), (2, 1))  # 512 x 512
    want = predict_image(load_model(ckpt, "cpu", runtime="torch"), image, tile=256)
    small = load_model(ckpt, "cpu")
    small.model.switch_pixels = 0  # as if the job had predicted many megapixels already
    assert AUTO_TORCH_TILE_PIXELS >= 256 * 256
    np.testing.assert_array_equal(predict_image(small, image, tile=256).labels, want.labels)
    assert not small.model.converted and small.model.network is not None

    auto = load_model(ckpt, "cpu")
    assert auto.model._state["ckpt"].state_dict == {}  # the network holds the only copy
    auto.model.switch_pixels = 0
    np.testing.assert_array_equal(predict_image(auto, image, tile=512).labels,
                                  predict_image(load_model(ckpt, "cpu", runtime="torch"), image, tile=512).labels)
    assert auto.model.converted and auto.model.network is None
    assert list(auto.model.parameters()) == []  # nothing of torch's weights is left to hold memory
    twin = copy.deepcopy(auto.model)
    assert twin.converted and twin._state["session"] is auto.model._state["session"]
    x = torch.rand(1, 1, 320, 320)
    np.testing.assert_array_equal(twin(x).numpy(), auto.model(x).numpy())


def test_auto_runtime_imports_onnxruntime_only_when_it_switches(tmp_path):
    """onnxruntime holds 0.02 GiB resident once imported: a job that never switches never imports it."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import os
    import subprocess
    import sys

    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    code = ("import sys, torch\nfrom napari_seglab.core.predict import AutoNetwork, load_model\n"
            "lm = load_model(sys.argv[1], 'cpu')\n"
            "assert isinstance(lm.model, AutoNetwork)\n"
            "before = 'onnxruntime' in sys.modules\n"
            "lm.model.switch_pixels = 0\n"
            "with torch.inference_mode():\n"
            "    lm.model(torch.rand(1, 1, 320, 320))\n"
            "print('RESULT', before, lm.model.converted, 'onnxruntime' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(ckpt)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert "RESULT False True True" in proc.stdout, proc.stderr[-2000:]
