"""Helpers for the bioimage.io tests: tiny checkpoints of every exportable head, a package SegLab did not
make (built with bioimageio.spec), and the skip when the bioimage.io tools are missing or cannot run here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

#: a 0.3 M-parameter encoder: a package of it exports and passes bioimage.io's test in seconds
TINY_ENCODER = "tu-mobilenetv3_small_050"
#: (name, label mode, classes, instance head) of every head a U-Net exports
HEADS = (("semantic", "scribbles", 2, None), ("boundary", "instances", 3, None),
         ("flows", "objects", 2, "flows"), ("distance", "objects", 2, "distance"))


def require_bioimageio() -> None:
    """Skip unless bioimageio.core can run here (installed, and bioimageio.spec works with this pydantic)."""
    pytest.importorskip("bioimageio.core")
    from napari_seglab.core.models import bioimageio_problem

    problem = bioimageio_problem()
    if problem:
        pytest.skip(problem)


def tiny_checkpoint(path: Path, label_mode: str = "scribbles", n_classes: int = 2, head: str | None = None,
                    per_image: bool = True, seed: int = 0) -> Path:
    """A random-weight 3-level U-Net checkpoint on :data:`TINY_ENCODER` (no download, no training)."""
    import torch

    from napari_seglab.core.data import Normalization
    from napari_seglab.core.models import ModelSpec, build_model, save_checkpoint

    torch.manual_seed(seed)
    options = {"encoder_depth": 3, "decoder_channels": [16, 8, 4]}
    if head:
        options["head"] = head
    spec = ModelSpec(family="unet", arch="Unet", encoder=TINY_ENCODER, in_channels=1, n_classes=n_classes,
                     options=options)
    model, _ = build_model(spec)
    norm = Normalization() if per_image else Normalization(per_image=False, lo=(100.0,), hi=(1800.0,))
    meta = {"model": spec.to_dict(), "label_mode": label_mode, "normalization": norm.to_dict(), "patch": 64}
    return save_checkpoint(path, model, meta)


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
