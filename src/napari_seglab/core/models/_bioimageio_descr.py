"""The description of a SegLab bioimage.io package, built with bioimageio.spec's own model classes.

:func:`describe_package` gives the ``ModelDescr`` (format 0.5) of an export: tensors and axes, SegLab's
normalisation as preprocessing, weights, citations, documentation, cover and the checkpoint's metadata
under ``config.napari_seglab``; :func:`readme` and :func:`cover` make the files it points at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ._checkpoint import Checkpoint, describe_checkpoint
from ._traced import ALIGN, output_description

#: output pixels at each border a tile should drop (the network sees no context beyond them)
HALO = 16
ARCH_FILE = "seglab_network.py"


@dataclass(frozen=True)
class PackageInfo:
    """What the user adds to a package: ``name``, ``description``, ``authors`` (names), ``license``
    (an SPDX id), ``cite`` (pairs of text and DOI or URL) and ``tags``; empty fields take defaults
    from the checkpoint."""

    name: str | None = None
    description: str | None = None
    authors: tuple[str, ...] = ()
    license: str = "CC-BY-4.0"
    cite: tuple[tuple[str, str], ...] = ()
    tags: tuple[str, ...] = ()


def _identifier(text: str, fallback: str) -> str:
    ident = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_")
    return ident if ident and ident[0].isalpha() else fallback


def output_channels(ckpt: Checkpoint) -> list[str]:
    """One name per output channel of the exported network."""
    spec = ckpt.spec
    if spec.head == "flows" and spec.has_regression_head:
        return ["foreground", "flow_y", "flow_x"]
    if spec.head == "distance" and spec.has_regression_head:
        return ["foreground", "distance"]
    k = max(2, spec.n_classes)
    names = list(ckpt.info.class_names or [])
    if len(names) != k:
        names = (["background", "interior", "boundary"] if ckpt.label_mode == "instances" and k == 3
                 else ["background"] + [f"class{i}" for i in range(1, k)])
    idents = [_identifier(n, f"class{i}") for i, n in enumerate(names)]
    return idents if len(set(idents)) == len(idents) else [f"class{i}" for i in range(k)]


def _preprocessing(ckpt: Checkpoint, v0_5) -> list:
    """bioimage.io preprocessing that gives SegLab's normalised input from the raw image."""
    norm = ckpt.normalization
    steps = [v0_5.EnsureDtypeDescr(kwargs=v0_5.EnsureDtypeKwargs(dtype="float32"))]
    if not norm.per_image and norm.lo:
        lo, hi = np.asarray(norm.lo, np.float64), np.asarray(norm.hi, np.float64)
        span = np.where(hi - lo > 0, hi - lo, np.inf)
        gain, offset = (1.0 / span).tolist(), (-lo / span).tolist()
        steps.append(v0_5.ScaleLinearDescr(kwargs=v0_5.ScaleLinearAlongAxisKwargs(
            axis=v0_5.AxisId("channel"), gain=gain, offset=offset)))
    else:
        steps.append(v0_5.ScaleRangeDescr(kwargs=v0_5.ScaleRangeKwargs(
            axes=[v0_5.AxisId("y"), v0_5.AxisId("x")], min_percentile=float(norm.low),
            max_percentile=float(norm.high))))
    return steps


def cover(normalised: np.ndarray, output: np.ndarray, head: bool) -> bytes:
    """A PNG, twice as wide as high: the normalised input (grey) beside the foreground probability."""
    import imageio.v3 as iio

    grey = np.clip(normalised[0].mean(axis=0), 0, 1)
    fg = output[0, 0] if head else 1 - output[0, 0]
    left = np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=-1)
    right = np.stack([fg, 0.2 * fg, fg], axis=-1) * 0.8 + grey[..., None] * 0.2
    right = (np.clip(right, 0, 1) * 255).astype(np.uint8)
    return iio.imwrite("<bytes>", np.concatenate([left, right], axis=1), extension=".png")


def readme(ckpt: Checkpoint, info: PackageInfo, formats: list[str], tolerance: float) -> str:
    norm = ckpt.normalization
    how = (f"the {norm.low:g} and {norm.high:g} percentiles of each channel of the image map to 0 and 1 (not "
           "clipped)" if norm.per_image or not norm.lo else "each channel is scaled with the training data's values")
    scale = (f"\nImages are resampled by x{ckpt.info.scale:g} before the network (the object scale it learnt "
             "at); SegLab does this itself, other tools should resample first.\n" if ckpt.info.scale != 1.0 else "")
    decoding = ""
    if ckpt.spec.has_regression_head:
        decoding = (f"\nObjects come from the outputs with `napari_seglab.core.objects.decode(outputs, "
                    f"{ckpt.spec.head!r})` (the foreground channel as a logit), or by running this package "
                    "with `seglab predict --model package.zip`.\n")
    return (f"# {info.name or 'napari-seglab model'}\n\n{info.description or describe_checkpoint(ckpt)}.\n\n"
            f"Made with napari-seglab (`seglab export --format bioimageio`).\n\n## Input and output\n\n"
            f"Input: one image, channels first; {how}. Spatial sizes: 64 + n x 32.\n{scale}\n"
            f"Output: {output_description(ckpt)}. Drop {HALO} pixels at each tile border.\n{decoding}\n"
            f"## Validation\n\nThe weights ({', '.join(formats)}) were checked against each other and the test "
            f"output was made by SegLab's own normalisation and network; outputs agree within {tolerance:.0e} "
            "(absolute and relative). bioimageio.core's test passed on this package before it was written.\n")


def _short_output(ckpt: Checkpoint) -> str:
    """The output tensor's description (bioimage.io allows 128 characters; the README has the rest)."""
    if not ckpt.spec.has_regression_head:
        return "class probabilities, background first"
    maps = "flows (dy, dx) x 5 towards each object's centre" if ckpt.spec.head == "flows" else \
        "distance to the boundary over its largest value"
    return f"foreground probability, then the {maps}; see the README for decoding"


def describe_package(ckpt: Checkpoint, info: PackageInfo, files: dict[str, Path], arch: dict | None,
                 formats: list[str], tolerance: float):
    from bioimageio.spec.model import v0_5

    spec = ckpt.spec
    torch_version = v0_5.Version(torch.__version__.split("+")[0])
    channels = [f"channel{i}" for i in range(spec.in_channels)]
    space_in = [v0_5.SpaceInputAxis(id=v0_5.AxisId(a), size=v0_5.ParameterizedSize(min=2 * ALIGN, step=ALIGN))
                for a in ("y", "x")]
    space_out = [v0_5.SpaceOutputAxisWithHalo(id=v0_5.AxisId(a), halo=HALO,
                                              size=v0_5.SizeReference(tensor_id=v0_5.TensorId("raw"),
                                                                      axis_id=v0_5.AxisId(a)))
                 for a in ("y", "x")]
    head = spec.has_regression_head
    out_id = "outputs" if head else "probabilities"
    inputs = [v0_5.InputTensorDescr(
        id=v0_5.TensorId("raw"), description="the image, channels first, as the microscope gave it",
        axes=[v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=[v0_5.Identifier(c) for c in channels]), *space_in],
        test_tensor=v0_5.FileDescr(source=files["test_input.npy"]),
        sample_tensor=v0_5.FileDescr(source=files["sample_input.tif"]),
        data=v0_5.IntervalOrRatioDataDescr(type="float32"), preprocessing=_preprocessing(ckpt, v0_5))]
    outputs = [v0_5.OutputTensorDescr(
        id=v0_5.TensorId(out_id), description=_short_output(ckpt),
        axes=[v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=[v0_5.Identifier(c) for c in output_channels(ckpt)]),
              *space_out],
        test_tensor=v0_5.FileDescr(source=files["test_output.npy"]),
        sample_tensor=v0_5.FileDescr(source=files["sample_output.tif"]),
        data=v0_5.IntervalOrRatioDataDescr(type="float32", range=(None, None) if head else (0.0, 1.0)))]
    weights = {"torchscript": v0_5.TorchscriptWeightsDescr(source=files["weights.pt"], pytorch_version=torch_version)}
    if arch is not None:
        weights["pytorch_state_dict"] = v0_5.PytorchStateDictWeightsDescr(
            source=files["weights_state_dict.pt"], pytorch_version=torch_version,
            architecture=v0_5.ArchitectureFromFileDescr(source=files[ARCH_FILE], callable="SegLabNetwork",
                                                        kwargs=arch))
        weights["torchscript"] = v0_5.TorchscriptWeightsDescr(source=files["weights.pt"], pytorch_version=torch_version,
                                                               parent="pytorch_state_dict")
    if "onnx" in formats:
        weights["onnx"] = v0_5.OnnxWeightsDescr(source=files["weights.onnx"], opset_version=17,
                                                parent="pytorch_state_dict" if arch is not None else "torchscript")
    cite = [v0_5.CiteEntry(text=text, **({"doi": v0_5.Doi(ref)} if ref.startswith("10.") else {"url": ref}))
            for text, ref in info.cite]
    cite.append(v0_5.CiteEntry(text="Ronneberger, Fischer and Brox: U-Net (MICCAI 2015)",
                               doi=v0_5.Doi("10.1007/978-3-319-24574-4_28")))
    if spec.head == "flows" and head:
        cite.append(v0_5.CiteEntry(text="Stringer et al.: Cellpose (Nature Methods 2021)",
                                   doi=v0_5.Doi("10.1038/s41592-020-01018-x")))
    config = {"bioimageio": {"reproducibility_tolerance": [
                  {"absolute_tolerance": tolerance, "relative_tolerance": tolerance}]},
              "napari_seglab": {"meta": ckpt.meta, "output": out_id,
                                "decoding": {"head": spec.head, "function": "napari_seglab.core.objects.decode"}
                                if head else None}}
    return v0_5.ModelDescr(
        name=info.name or f"napari-seglab {spec.family} {spec.arch} {spec.encoder}"[:128],
        description=(info.description or f"Segmentation exported from napari-seglab: {describe_checkpoint(ckpt)}")[:1024],
        authors=[v0_5.Author(name=n) for n in (info.authors or ("napari-seglab user",))],
        cite=cite, license=v0_5.LicenseId(info.license), documentation=v0_5.FileDescr(source=files["README.md"]),
        covers=[v0_5.FileDescr(source=files["cover.png"])], tags=["segmentation", "napari-seglab", spec.family, *info.tags],
        inputs=inputs, outputs=outputs, weights=v0_5.WeightsDescr(**weights), config=config,
        version="0.1.0")
