"""The ``napari_seglab.cli`` package: a stock model reads its input once; boxes come from the core."""

import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_seglab.cli import main


def test_stock_model_reads_the_input_tiff_once(tmp_path, tiny_model, blobs, monkeypatch, capsys):
    # the CLI reaches both through the packages' public faces: patch them there
    import napari_seglab.core.io as io
    import napari_seglab.core.predict as stock
    from napari_seglab.core.predict import load_model

    tifffile.imwrite(tmp_path / "img.tif", blobs[0])
    reads, asked = [], {}
    real_read = io.read_image
    monkeypatch.setattr(io, "read_image", lambda path, *a, **k: reads.append(path) or real_read(path, *a, **k))

    def fake_stock(name, device, in_channels=1):
        asked.update(name=name, in_channels=in_channels)
        return load_model(tiny_model, device)

    monkeypatch.setattr(stock, "load_stock", fake_stock)
    code = main(["predict", "--model", "stock:fcn_resnet50_voc", "--input", str(tmp_path / "img.tif"),
                 "--output", str(tmp_path / "out.tif"), "--boxes", str(tmp_path / "boxes.csv")])
    assert code == 0, capsys.readouterr().err
    assert reads == [str(tmp_path / "img.tif")] and asked == {"name": "fcn_resnet50_voc", "in_channels": 1}
    labels = tifffile.imread(tmp_path / "out.tif")
    assert labels.dtype == np.uint16 and labels.shape == blobs[0].shape
    rows = (tmp_path / "boxes.csv").read_text().splitlines()
    assert rows[0] == "y0,x0,y1,x1,class,score,plane" and len(rows) >= 2  # semantic: boxes from the labels


@pytest.mark.slow
def test_python_dash_m_runs_the_cli_package():
    done = subprocess.run([sys.executable, "-m", "napari_seglab.cli", "train", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "--label-mode {scribbles,instances,objects,classes,boxes}" in done.stdout
