"""Pixel sizes end to end: training records them, prediction resamples to them, measurements use them."""

import json

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from napari_seglab.cli import main
from napari_seglab.core.data import match_pixel_sizes, pixel_ratio, pixel_size_or, prediction_factor
from napari_seglab.core.errors import InputError
from napari_seglab.core.events import Message, drive
from napari_seglab.core.models import load_checkpoint
from napari_seglab.core.objects import measure_objects
from napari_seglab.core.predict import iter_predict_image, load_model
from napari_seglab.core.train import TrainConfig, iter_train


def test_prediction_factor_combines_the_object_scale_and_the_pixel_ratio():
    # an image at half the model's pixel size is shrunk by 2, on top of the model's own object scale
    factor, note = prediction_factor(1.5, (0.325, 0.325), (0.65, 0.65))
    assert factor == pytest.approx(0.75)
    assert "0.325 µm" in note and "0.65 µm" in note and "0.75" in note
    assert prediction_factor(1.5, None, (0.65, 0.65)) == (1.5, None)  # unknown: the model's own scale
    assert prediction_factor(1.0, (2.0, 0.652, 0.652), (0.65, 0.65)) == (1.0, None)  # rounding, not a change
    with pytest.raises(InputError, match="outside"):
        prediction_factor(1.0, (0.01, 0.01), (0.65, 0.65))


def test_pixel_ratio_and_fallback():
    assert pixel_ratio((1.0, 4.0), (1.0, 1.0)) == pytest.approx(2.0)  # geometric mean of y and x
    assert pixel_size_or(None, 0.5) == (0.5, 0.5)
    assert pixel_size_or((0.2, 0.3), 0.5) == (0.2, 0.3)  # the file's size wins
    assert pixel_size_or(None, None) is None
    with pytest.raises(InputError, match="µm per pixel"):
        pixel_size_or(None, -1.0)


def test_training_images_of_another_size_are_resampled_to_the_first():
    a, b = np.zeros((40, 60), np.uint16), np.ones((80, 120), np.uint16)
    lab_b = np.zeros((80, 120), np.uint8)
    lab_b[20:40, 30:60] = 2
    images, labels, size, notes = match_pixel_sizes([a, b], [np.zeros((40, 60), np.uint8), lab_b], ["YX", "YX"],
                                                    [(0.5, 0.5), (0.25, 0.25)])
    assert size == (0.5, 0.5)
    assert images[1].shape == labels[1].shape == (40, 60)
    assert set(np.unique(labels[1])) == {0, 2}  # nearest: no new label values
    assert np.count_nonzero(labels[1]) == pytest.approx(10 * 15, rel=0.1)
    assert any("image 2" in n and "0.5" in n for n in notes)
    # an image without a size is taken to be at the reference one, and the note says so
    _, _, size, notes = match_pixel_sizes([a, a], None, ["YX", "YX"], [None, (0.5, 0.5)])
    assert size == (0.5, 0.5) and "image(s) 1 have no pixel size" in notes[0]
    assert match_pixel_sizes([a], None, ["YX"], [None])[2] is None


def test_measurements_in_um():
    lab = np.zeros((40, 40), np.int32)
    lab[10:20, 10:20] = 1
    row = measure_objects(lab, pixel_size=(0.5, 0.5))[0]
    assert row["area"] == 100 and row["area_um2"] == pytest.approx(25.0)
    assert row["perimeter_um"] == pytest.approx(row["perimeter"] * 0.5)
    assert "area_um2" not in measure_objects(lab)[0]
    vol = measure_objects(np.stack([lab, lab]), pixel_size=(2.0, 0.5, 0.5))[0]
    assert vol["volume_um3"] == pytest.approx(200 * 0.5)


def test_a_model_records_its_pixel_size_and_resamples_a_finer_image(blobs, tmp_path):
    img, lab, mask = blobs
    cfg = TrainConfig(label_mode="scribbles", preset="fast", epochs=4, steps_per_epoch=4, patch=64,
                      batch_size=4, lr=3e-3, device="cpu", threads=1, bf16="off", save_last=False,
                      model_out=str(tmp_path / "m.pt"))
    # the second image is the first at half the pixel size: resampled to the first's before training
    big, big_lab = ndi.zoom(img, 2, order=1), ndi.zoom(lab, 2, order=0)
    events = []
    result = drive(iter_train([img, big], [lab, big_lab], cfg, pixel_sizes=[(1.0, 1.0), (0.5, 0.5)]), events.append)
    assert result.checkpoint.info.pixel_size == (1.0, 1.0)
    assert load_checkpoint(tmp_path / "m.pt").info.pixel_size == (1.0, 1.0)
    assert any(isinstance(e, Message) and "image 2 has pixel size 0.5 µm" in e.text for e in events)

    model = load_model(tmp_path / "m.pt", "cpu", runtime="torch")
    same = drive(iter_predict_image(model, img, pixel_size=(1.0, 1.0))).labels
    notes = []
    finer = drive(iter_predict_image(model, big, pixel_size=(0.5, 0.5)),
                  lambda e: notes.append(e.text) if isinstance(e, Message) else None).labels
    assert notes == ["pixel size 0.5 µm, the model's 1 µm: resampling the image by 0.5"]
    assert finer.shape == big.shape
    # the finer image's labels are the same objects as at the training size
    back = finer[::2, ::2] > 0
    assert np.count_nonzero(back & (same > 0)) / max(1, np.count_nonzero(back | (same > 0))) > 0.9


def test_cli_records_and_uses_the_pixel_size(blobs, tmp_path, capsys):
    img, lab, _ = blobs
    tifffile.imwrite(tmp_path / "img.tif", img)  # no metadata: --pixel-size stands in
    tifffile.imwrite(tmp_path / "lab.tif", lab)
    model = tmp_path / "m.pt"
    assert main(["train", "--image", str(tmp_path / "img.tif"), "--labels", str(tmp_path / "lab.tif"),
                 "--label-mode", "scribbles", "--model-out", str(model), "--preset", "fast", "--epochs", "1",
                 "--steps-per-epoch", "2", "--patch", "64", "--batch-size", "2", "--device", "cpu",
                 "--pixel-size", "0.65"]) == 0
    assert load_checkpoint(model).info.pixel_size == (0.65, 0.65)
    capsys.readouterr()
    assert main(["info", str(model)]) == 0
    assert "trained at 0.65 µm per pixel" in json.loads(capsys.readouterr().out)["description"]
    big = ndi.zoom(img, 2, order=1)
    tifffile.imwrite(tmp_path / "big.ome.tif", big, ome=True,
                     metadata={"axes": "YX", "PhysicalSizeX": 0.325, "PhysicalSizeY": 0.325})
    capsys.readouterr()
    assert main(["predict", "--model", str(model), "--input", str(tmp_path / "big.ome.tif"),
                 "--output", str(tmp_path / "out.tif"), "--device", "cpu"]) == 0
    assert "the model's 0.65 µm: resampling the image by 0.5" in capsys.readouterr().err
    assert tifffile.imread(tmp_path / "out.tif").shape == big.shape
    # a file without a size: --pixel-size gives it one
    tifffile.imwrite(tmp_path / "plain.tif", big)
    assert main(["predict", "--model", str(model), "--input", str(tmp_path / "plain.tif"), "--output",
                 str(tmp_path / "out2.tif"), "--device", "cpu", "--pixel-size", "0.325"]) == 0
    assert "resampling the image by 0.5" in capsys.readouterr().err
