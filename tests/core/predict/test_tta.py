"""Test-time augmentation: flips averaged, so a flipped image gives the flipped prediction."""

import numpy as np
import pytest
import tifffile
import torch

from napari_seglab.core.events import drive
from napari_seglab.core.predict import iter_predict_image, load_model


def predict(lm, image, **options):
    return drive(iter_predict_image(lm, image, probabilities=True, **options))


@pytest.mark.slow
def test_tta_prediction_is_flip_equivariant(tiny_model, blobs):
    lm = load_model(tiny_model, "cpu")
    img = blobs[0]
    for flip in (np.flipud, np.fliplr):
        plain, flipped = predict(lm, img).probabilities, predict(lm, np.ascontiguousarray(flip(img))).probabilities
        tta, tta_flipped = predict(lm, img, tta=True).probabilities, \
            predict(lm, np.ascontiguousarray(flip(img)), tta=True).probabilities
        # a plain network is not flip-equivariant; averaging over the flips makes it so
        assert np.abs(flip(plain[1]) - flipped[1]).max() > 1e-4
        np.testing.assert_allclose(flip(tta[1]), tta_flipped[1], atol=2e-5)
    assert lm.tta is False  # the caller's (cached) model is left as it was


def test_tta_turns_flow_vectors_back(monkeypatch):
    """A flows head's raw outputs: averaged with the vectors of each flipped pass turned back."""
    from napari_seglab.core.device import precision_for
    from napari_seglab.core.models import build_model, preset_spec
    from napari_seglab.core.predict import LoadedModel
    from napari_seglab.core.predict import _forward as forward

    torch.manual_seed(0)
    spec = preset_spec("fast", head="flows")
    model = build_model(spec)[0].eval()
    lm = LoadedModel(model=model, meta={"model": spec.to_dict()}, device=torch.device("cpu"),
                     precision=precision_for(torch.device("cpu")), tta=True)
    chw = np.random.default_rng(0).random((1, 64, 64), dtype=np.float32)
    out = forward._tile_output(lm, chw, raw=True)
    out_flipped = forward._tile_output(lm, np.ascontiguousarray(chw[:, ::-1]), raw=True)
    # flipping the image vertically flips the map and negates dy; the logit and dx only move
    np.testing.assert_allclose(out_flipped[0], out[0][::-1], atol=1e-4)
    np.testing.assert_allclose(out_flipped[1], -out[1][::-1], atol=1e-4)
    np.testing.assert_allclose(out_flipped[2], out[2][::-1], atol=1e-4)


@pytest.mark.slow
def test_cli_predict_tta_flag(tiny_model, blobs, tmp_path, capsys):
    from napari_seglab.cli import main

    tifffile.imwrite(tmp_path / "img.tif", blobs[0])
    code = main(["predict", "--model", str(tiny_model), "--input", str(tmp_path / "img.tif"), "--output",
                 str(tmp_path / "tta.tif"), "--probabilities", str(tmp_path / "p.tif"), "--device", "cpu", "--tta"])
    assert code == 0, capsys.readouterr().err
    lm = load_model(tiny_model, "cpu")
    expected = predict(lm, blobs[0], tta=True).probabilities
    np.testing.assert_allclose(tifffile.imread(tmp_path / "p.tif"), expected, atol=1e-5)


@pytest.mark.slow
def test_batch_passes_tta_to_every_file(tiny_model, blobs, tmp_path):
    from napari_seglab.core.api import run_batch

    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "a.tif", blobs[0])
    summary = run_batch(str(tiny_model), str(tmp_path / "in"), str(tmp_path / "out"), workers=0, tta=True,
                        measurements=False, probabilities=True)
    assert summary.ok == 1
    lm = load_model(tiny_model, "cpu")
    tta, plain = predict(lm, blobs[0], tta=True).probabilities, predict(lm, blobs[0]).probabilities
    written = tifffile.imread(tmp_path / "out" / "a_probabilities.tif")
    np.testing.assert_allclose(written, tta, atol=1e-5)
    assert np.abs(written - plain).max() > 1e-4
