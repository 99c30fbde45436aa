"""bioimage.io packages: every exportable head passes bioimageio.core's test, and comes back as the same labels.

Each package is exported once per module (random-weight tiny U-Nets: no download, no training) and
shared by the tests that read it.
"""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import tifffile
from packages import HEADS, TINY_ENCODER, require_bioimageio, tiny_checkpoint

from napari_seglab.core.errors import InputError

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")


@pytest.fixture(scope="module", params=[h[0] for h in HEADS])
def exported(request, tmp_path_factory):
    """(checkpoint, package, ExportResult) of one head; the semantic model keeps fixed training values."""
    require_bioimageio()
    from napari_seglab.core.models import export_bioimageio

    name, mode, n_classes, head = next(h for h in HEADS if h[0] == request.param)
    folder = tmp_path_factory.mktemp(f"bioimageio_{name}")
    ckpt = tiny_checkpoint(folder / "m.pt", mode, n_classes, head, per_image=name != "semantic")
    result = export_bioimageio(ckpt, folder / "m.zip")
    return ckpt, folder / "m.zip", result


def test_every_head_exports_a_package_that_passes_bioimageio_test(exported):
    _, package, result = exported
    assert result.verdict.passed, result.verdict.failures
    assert "bioimage.io test passed" in result.verdict.line and "\n" not in result.verdict.line
    assert set(result.formats) == {"pytorch_state_dict", "torchscript", "onnx"}
    assert result.agreement < 1e-4 <= result.tolerance
    assert package.is_file()


def test_the_package_describes_seglab_normalisation_as_bioimageio_preprocessing(exported):
    import yaml

    ckpt, package, _ = exported
    with zipfile.ZipFile(package) as zf:
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
        names = set(zf.namelist())
    steps = [s["id"] for s in rdf["inputs"][0]["preprocessing"]]
    meta = rdf["config"]["napari_seglab"]["meta"]
    if meta["normalization"]["per_image"]:
        scale = next(s for s in rdf["inputs"][0]["preprocessing"] if s["id"] == "scale_range")["kwargs"]
        assert (scale["min_percentile"], scale["max_percentile"]) == (1.0, 99.8)
        assert scale["axes"] == ["y", "x"]
    else:
        assert "scale_linear" in steps
    assert "clip" not in steps  # SegLab does not clip its normalised values
    assert {"cover.png", "README.md", "test_input.npy", "test_output.npy"} <= names
    assert all(ax.get("halo") for ax in rdf["outputs"][0]["axes"] if ax["type"] == "space")
    assert rdf["documentation"]["sha256"] and rdf["covers"][0]["sha256"]


@pytest.mark.parametrize("weights", ["torchscript", "onnx", "pytorch_state_dict"])
def test_export_import_predict_gives_the_checkpoint_labels(exported, weights):
    from napari_seglab.core.api import predict_image
    from napari_seglab.core.predict import load_model, load_package

    ckpt, package, result = exported
    image = tifffile.imread("sample_data/nuclei_test.tif")[:160, :224]
    want = predict_image(load_model(ckpt, "cpu"), image, probabilities=True)
    got = predict_image(load_package(package, "cpu", weights=weights), image, probabilities=True)
    assert got.kind == want.kind
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_allclose(got.probabilities, want.probabilities, atol=result.tolerance)


def test_onnxruntime_agrees_with_torch_within_1e4(exported):
    """The ONNX weights under onnxruntime against the checkpoint's network in torch, on a new size."""
    ort = pytest.importorskip("onnxruntime")
    import torch

    from napari_seglab.core.models import exportable_model

    ckpt, package, _ = exported
    with zipfile.ZipFile(package) as zf:
        session = ort.InferenceSession(zf.read("weights.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 1, 96, 160)
    with torch.no_grad():
        want = exportable_model(ckpt)(x).numpy()
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_a_family_bioimageio_cannot_express_is_refused_in_one_sentence(tmp_path):
    from napari_seglab.core.models import Checkpoint, ModelSpec, export_bioimageio

    spec = ModelSpec(family="maskrcnn", arch="maskrcnn_resnet50_fpn", n_classes=2)
    with pytest.raises(InputError, match="Mask R-CNN models is not supported") as err:
        export_bioimageio(Checkpoint(meta={"model": spec.to_dict()}, state_dict={}), tmp_path / "m.zip")
    assert "\n" not in str(err.value)
    assert not list(tmp_path.iterdir())


def test_cli_export_prints_the_verdict_trains_on_from_the_package_and_refuses_package_options_elsewhere(tmp_path, capsys):
    require_bioimageio()
    from napari_seglab.cli import main

    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    image = tmp_path / "img.tif"
    tifffile.imwrite(image, tifffile.imread("sample_data/nuclei_test.tif")[:100, :130])
    rc = main(["export", "--model", str(ckpt), "--format", "bioimageio", "--out", str(tmp_path / "m.zip"),
               "--image", str(image), "--author", "A. Biologist", "--cite", "10.1038/s41592-020-01018-x"])
    out = capsys.readouterr().out
    assert rc == 0 and "bioimage.io test passed" in out.splitlines()[-1]
    with zipfile.ZipFile(tmp_path / "m.zip") as zf:
        assert "A. Biologist" in zf.read("rdf.yaml").decode()
        assert np.load(zf.open("test_input.npy")).shape == (1, 1, 64, 64)  # the image's centre, 64 px
    # a SegLab package is a starting point for training, as its checkpoint is
    rc = main(["train", "--image", "sample_data/nuclei_train.tif", "--labels", "sample_data/nuclei_train_scribbles.tif",
               "--label-mode", "scribbles", "--init", str(tmp_path / "m.zip"), "--model-out", str(tmp_path / "ft.pt"),
               "--epochs", "1", "--steps-per-epoch", "1", "--patch", "64", "--batch-size", "2", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    from napari_seglab.core.models import load_checkpoint

    assert load_checkpoint(tmp_path / "ft.pt").spec.encoder == TINY_ENCODER  # the package's network, trained on
    capsys.readouterr()
    rc = main(["export", "--model", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "m.onnx"),
               "--author", "A. Biologist"])
    assert rc == 2 and "--author: only --format bioimageio" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_a_validator_that_cannot_run_here_is_named_in_one_line(monkeypatch):
    """bioimageio.spec before 0.5.14 fails under pydantic 2.14: export and reading say what to install."""
    spec = pytest.importorskip("bioimageio.spec")
    import pydantic

    from napari_seglab.core.models import bioimageio_problem

    monkeypatch.setattr(spec, "__version__", "0.5.12.0")
    monkeypatch.setattr(pydantic, "VERSION", "2.14.4")
    assert "pip install 'pydantic<2.14'" in bioimageio_problem()
    monkeypatch.setattr(spec, "__version__", "0.5.14.3")
    assert bioimageio_problem() is None
