"""bioimage.io packages SegLab did not make, built here with bioimageio.spec, run in seglab predict and batch.

The networks are one TorchScript line (a steep sigmoid of the z-scored image), so what they find is
known exactly: the pixels more than half a standard deviation above the image's mean.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile
import torch
from packages import require_bioimageio

from napari_seglab.core.errors import InputError

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")


class Bright(torch.nn.Module):
    """z-scored image -> probability of being above half a standard deviation, in any axis order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(40.0 * (x - 0.5))


def expected_foreground(image: np.ndarray) -> np.ndarray:
    z = (image - image.mean()) / (image.std() + 1e-6)
    return z > 0.5


def build_package(folder, axes: str = "byxc", fixed: int | None = None, halo: int = 0):
    """A zip package of :class:`Bright`: axes ``byxc`` (channels last, sizes 40 + n x 8) or ``bcyx`` of a
    fixed size, zero-mean-unit-variance preprocessing, a [0, 1] output."""
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5

    folder.mkdir(parents=True, exist_ok=True)
    side = fixed or 64
    raw = tifffile.imread("sample_data/nuclei_test.tif")[:side, :side].astype(np.float32)
    z = (raw - raw.mean()) / (raw.std() + 1e-6)
    shape = (1, side, side, 1) if axes == "byxc" else (1, 1, side, side)
    np.save(folder / "in.npy", raw.reshape(shape))
    np.save(folder / "out.npy", Bright()(torch.from_numpy(z)).numpy().reshape(shape))
    torch.jit.save(torch.jit.script(Bright()), str(folder / "net.pt"))
    size = side if fixed else v0_5.ParameterizedSize(min=40, step=8)
    space_in = {a: v0_5.SpaceInputAxis(id=v0_5.AxisId(a), size=size) for a in "yx"}
    ref = {a: v0_5.SizeReference(tensor_id=v0_5.TensorId("image"), axis_id=v0_5.AxisId(a)) for a in "yx"}
    space_out = {a: (v0_5.SpaceOutputAxisWithHalo(id=v0_5.AxisId(a), size=ref[a], halo=halo) if halo
                     else v0_5.SpaceOutputAxis(id=v0_5.AxisId(a), size=ref[a])) for a in "yx"}
    chan_in = v0_5.ChannelAxis(channel_names=[v0_5.Identifier("dapi")])
    chan_out = v0_5.ChannelAxis(channel_names=[v0_5.Identifier("nucleus")])
    order = (lambda c, s: [v0_5.BatchAxis(), s["y"], s["x"], c]) if axes == "byxc" else \
        (lambda c, s: [v0_5.BatchAxis(), c, s["y"], s["x"]])
    descr = v0_5.ModelDescr(
        name="bright pixels", description="a test network", authors=[v0_5.Author(name="tests")],
        cite=[v0_5.CiteEntry(text="tests", url="https://example.org")], license="MIT",
        inputs=[v0_5.InputTensorDescr(
            id=v0_5.TensorId("image"), axes=order(chan_in, space_in),
            test_tensor=v0_5.FileDescr(source=folder / "in.npy"), data=v0_5.IntervalOrRatioDataDescr(type="float32"),
            preprocessing=[v0_5.ZeroMeanUnitVarianceDescr(
                kwargs=v0_5.ZeroMeanUnitVarianceKwargs(axes=[v0_5.AxisId("y"), v0_5.AxisId("x")]))])],
        outputs=[v0_5.OutputTensorDescr(
            id=v0_5.TensorId("mask"), axes=order(chan_out, space_out),
            test_tensor=v0_5.FileDescr(source=folder / "out.npy"),
            data=v0_5.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)))],
        weights=v0_5.WeightsDescr(torchscript=v0_5.TorchscriptWeightsDescr(
            source=folder / "net.pt", pytorch_version=v0_5.Version("2.4"))))
    return save_bioimageio_package(descr, output_path=folder / "bright.zip")


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
