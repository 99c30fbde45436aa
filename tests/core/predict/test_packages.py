"""bioimage.io packages SegLab did not make, built here with bioimageio.spec, run in seglab predict and batch.

The networks are one TorchScript line (a steep sigmoid of the z-scored image), so what they find is
known exactly: the pixels more than half a standard deviation above the image's mean.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile
from packages import build_package, expected_foreground, require_bioimageio

from napari_seglab.core.errors import InputError

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("pkg_image") / "img.tif"
    tifffile.imwrite(path, tifffile.imread("sample_data/nuclei_test.tif")[:100, :130])
    return path


@pytest.mark.parametrize("axes, fixed, halo", [("byxc", None, 0), ("bcyx", 96, 8)])
def test_a_foreign_package_runs_in_seglab_predict(tmp_path, image, capsys, axes, fixed, halo):
    require_bioimageio()
    from napari_seglab.cli import main

    package = build_package(tmp_path / "pkg", axes, fixed, halo)
    out = tmp_path / "labels.tif"
    rc = main(["predict", "--model", str(package), "--input", str(image), "--output", str(out), "--tile", "64"])
    assert rc == 0, capsys.readouterr().err
    labels = tifffile.imread(out)
    want = expected_foreground(tifffile.imread(image).astype(np.float64))
    assert labels.shape == want.shape
    assert np.mean((labels > 0) == want) > 0.999  # pixels within 1e-6 of the threshold may differ


def test_a_foreign_package_runs_in_seglab_batch(tmp_path, image, capsys):
    require_bioimageio()
    from napari_seglab.cli import main

    package = build_package(tmp_path / "pkg")
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        tifffile.imwrite(folder / f"img{i}.tif", np.rot90(tifffile.imread(image), i).copy())
    rc = main(["batch", "--model", str(package), "--input-dir", str(folder), "--output-dir", str(tmp_path / "out"),
               "--workers", "1"])
    assert rc == 0, capsys.readouterr().err
    with open(tmp_path / "out" / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["status"] for r in rows] == ["ok", "ok"]
    labels = tifffile.imread(next((tmp_path / "out").rglob("img1*labels*.tif")))
    want = expected_foreground(np.rot90(tifffile.imread(image), 1).astype(np.float64))
    # batch splits a binary mask into objects (edges snapped, specks dropped): the same pixels, nearly
    assert labels.max() > 1 and np.mean((labels > 0) == want) > 0.95


def test_a_package_that_needs_a_download_is_refused_offline(tmp_path):
    require_bioimageio()
    import yaml

    from napari_seglab.core.predict import load_package

    package = build_package(tmp_path / "pkg")
    import zipfile

    with zipfile.ZipFile(package) as zf:
        zf.extractall(tmp_path / "unzipped")
    rdf = tmp_path / "unzipped" / "rdf.yaml"
    doc = yaml.safe_load(rdf.read_text())
    doc["weights"]["torchscript"]["source"] = "https://example.org/net.pt"
    rdf.write_text(yaml.safe_dump(doc))
    with pytest.raises(InputError, match="needs a download .*weights.torchscript.source is a URL"):
        load_package(rdf, "cpu")


def test_a_checkpoint_command_names_what_a_package_is_for(tmp_path):
    require_bioimageio()
    from napari_seglab.core.models import load_checkpoint

    package = build_package(tmp_path / "pkg")
    with pytest.raises(InputError, match="seglab predict and seglab batch take it as --model"):
        load_checkpoint(package)
