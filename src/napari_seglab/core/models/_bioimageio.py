"""bioimage.io model packages: described with bioimageio.spec's own classes and tested with bioimageio.core.

A package holds the network three ways (``pytorch_state_dict`` with its
architecture source for segmentation-models-pytorch networks, ``torchscript``
and ``onnx``), each checked against the others before it is written; a test
input cut from the user's image (or a synthetic nuclei image) as SegLab
prepares it (resampled by the checkpoint's object scale), and the output
SegLab's own normalisation and network give for it; a cover rendered from that
output; a README; and the checkpoint's metadata under ``config.napari_seglab``.

SegLab's normalisation (each channel's ``low`` / ``high`` percentiles of the
image map to 0 and 1, not clipped) is bioimage.io's ``scale_range`` over the
spatial axes of each sample; a checkpoint with fixed training values is a
``scale_linear``. Before the file is reported written, bioimageio.core's test
runs on it (every weight format on the test input, several sizes and batch
sizes) and its verdict is returned.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data import normalize, percentiles, resample_image, scaled_shape, to_chw
from ..errors import InputError
from ..io import atomic_path
from ._checkpoint import Checkpoint, describe_checkpoint
from ._traced import (
    ALIGN,
    as_checkpoint,
    check_exportable,
    example_side,
    exportable_model,
    onnx_available,
    onnx_bytes,
    output_description,
    script_bytes,
    trace,
)

INSTALL = "pip install 'napari-seglab[bioimageio]'"
#: the test tensors' largest side: bioimage.io's test runs it through every weight format and sizes
TEST_SIDE = 256
#: output pixels at each border a tile should drop (the network sees no context beyond them)
HALO = 16
#: what the weight formats may differ by, at least (measured: float32 TorchScript / ONNX Runtime against
#: eager torch differ by under 2e-6 on probabilities and 2e-5 on flows of tiny U-Nets)
MIN_TOLERANCE = 1e-4
ARCH_FILE = "seglab_network.py"
_ARCH_SOURCE = '''"""The network of a napari-seglab bioimage.io package, for its pytorch_state_dict weights.

A segmentation-models-pytorch network followed by the output activation SegLab exports: class
probabilities (sigmoid of a single logit as [1 - p, p], else softmax), or for an instance head the
foreground probability followed by the head's maps as the network gives them.
"""
import torch
import segmentation_models_pytorch as smp


class SegLabNetwork(torch.nn.Module):
    def __init__(self, arch, encoder, in_channels, classes, head=False, smp_kwargs=None):
        super().__init__()
        self.network = getattr(smp, arch)(encoder_name=encoder, encoder_weights=None,
                                          in_channels=in_channels, classes=classes, **(smp_kwargs or {}))
        self.head = head

    def forward(self, x):
        out = self.network(x)
        if self.head:
            return torch.cat([torch.sigmoid(out[:, :1]), out[:, 1:]], 1)
        if out.shape[1] == 1:
            p = torch.sigmoid(out)
            return torch.cat([1 - p, p], 1)
        return torch.softmax(out, 1)
'''
#: how a package's architecture file is recognised as SegLab's own (the only architecture code SegLab runs)
ARCH_SHA256 = hashlib.sha256(_ARCH_SOURCE.encode()).hexdigest()


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


@dataclass(frozen=True)
class Verdict:
    """bioimageio.core's test of a package: ``status`` ("passed", "failed" or "not tested"), one
    ``line`` for the user and the ``failures`` (one line each)."""

    status: str
    line: str
    failures: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_bioimageio` wrote: the package's ``path``, the ``verdict`` of its test, the
    weight ``formats`` it holds and the largest difference between them (``agreement``)."""

    path: Path
    verdict: Verdict
    formats: tuple[str, ...] = ()
    agreement: float = 0.0
    tolerance: float = field(default=MIN_TOLERANCE)


def bioimageio_problem() -> str | None:
    """Why bioimage.io packages cannot be written or tested here (one sentence), or None."""
    try:
        import bioimageio.spec
        import pydantic
    except ImportError:
        return f"bioimage.io packages need bioimageio.spec and bioimageio.core: {INSTALL}"
    spec_version = _version_tuple(bioimageio.spec.__version__)
    if spec_version < (0, 5, 14) and _version_tuple(pydantic.VERSION) >= (2, 14):
        # bioimageio.spec before 0.5.14 passes an argument pydantic 2.14 refuses to its file serializer
        return (f"bioimageio.spec {bioimageio.spec.__version__} fails under pydantic {pydantic.VERSION}: "
                "pip install 'pydantic<2.14' (or bioimageio.spec>=0.5.14)")
    return None


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


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


def test_image(ckpt: Checkpoint, image: np.ndarray | None) -> np.ndarray:
    """The raw test input (1, C, S, S) float32: the centre of ``image`` ((Y, X) or (Y, X, C); None: a
    synthetic nuclei image) resampled by the checkpoint's object scale, S a multiple of 32."""
    channels = ckpt.spec.in_channels
    if image is None:
        from ..synthetic import make_nuclei

        plane, _ = make_nuclei((TEST_SIDE, TEST_SIDE), seed=0)
        chw = np.stack([np.asarray(plane, np.float32) * (1 + 0.25 * c) for c in range(channels)])
    else:
        image = np.asarray(image)
        if image.ndim not in (2, 3) or not np.issubdtype(image.dtype, np.number):
            raise InputError(f"the test image must be one plane, (Y, X) or (Y, X, C) numbers; got shape {image.shape}")
        chw = np.asarray(to_chw(image, channels), np.float32)
    if ckpt.info.scale != 1.0:
        chw = resample_image(chw, scaled_shape(chw.shape[-2:], ckpt.info.scale))
    side = min(example_side(ckpt), TEST_SIDE, min(chw.shape[-2:]) // ALIGN * ALIGN)
    if side < 2 * ALIGN:
        raise InputError(f"the test image is too small: it needs at least {2 * ALIGN}x{2 * ALIGN} pixels at the "
                         f"network's scale (x{ckpt.info.scale:g}); got {chw.shape[-2]}x{chw.shape[-1]}")
    y0, x0 = (chw.shape[-2] - side) // 2, (chw.shape[-1] - side) // 2
    return np.ascontiguousarray(chw[None, :, y0:y0 + side, x0:x0 + side], dtype=np.float32)


def seglab_normalised(ckpt: Checkpoint, raw: np.ndarray) -> np.ndarray:
    """SegLab's normalisation of a raw (1, C, Y, X) test input, as prediction applies it to a plane."""
    norm = ckpt.normalization
    chw = raw[0]
    lohi = (norm.lo, norm.hi) if (not norm.per_image and norm.lo) else percentiles(chw, norm.low, norm.high)
    return normalize(chw, *lohi)[None]


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


def _smp_architecture(ckpt: Checkpoint) -> dict | None:
    """The keyword arguments of :data:`_ARCH_SOURCE`'s network, or None for a network it cannot build."""
    spec = ckpt.spec
    if spec.family != "unet":
        return None
    from ._unet import _SIZED_DECODERS, unet_options

    smp_kwargs = unet_options(spec) if spec.arch in _SIZED_DECODERS else {}
    smp_kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in smp_kwargs.items()}
    return {"arch": spec.arch, "encoder": spec.encoder, "in_channels": spec.in_channels,
            "classes": spec.out_channels, "head": spec.has_regression_head, "smp_kwargs": smp_kwargs}


def _state_dict_model(kwargs: dict, model: torch.nn.Module) -> torch.nn.Module:
    """The network as bioimage.io builds it from :data:`_ARCH_SOURCE`, with ``model``'s weights."""
    namespace: dict = {}
    exec(compile(_ARCH_SOURCE, ARCH_FILE, "exec"), namespace)  # noqa: S102 - our own constant source
    net = namespace["SegLabNetwork"](**kwargs)
    net.load_state_dict(model.state_dict())
    return net.eval()


def _onnx_run(data: bytes, x: np.ndarray) -> np.ndarray | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _cover(normalised: np.ndarray, output: np.ndarray, head: bool) -> bytes:
    """A PNG, twice as wide as high: the normalised input (grey) beside the foreground probability."""
    import imageio.v3 as iio

    grey = np.clip(normalised[0].mean(axis=0), 0, 1)
    fg = output[0, 0] if head else 1 - output[0, 0]
    left = np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=-1)
    right = np.stack([fg, 0.2 * fg, fg], axis=-1) * 0.8 + grey[..., None] * 0.2
    right = (np.clip(right, 0, 1) * 255).astype(np.uint8)
    return iio.imwrite("<bytes>", np.concatenate([left, right], axis=1), extension=".png")


def _readme(ckpt: Checkpoint, info: PackageInfo, formats: list[str], tolerance: float) -> str:
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


def _description(ckpt: Checkpoint, info: PackageInfo, files: dict[str, Path], arch: dict | None,
                 formats: list[str], tolerance: float):
    from bioimageio.spec.model import v0_5

    spec = ckpt.spec
    torch_version = v0_5.Version(torch.__version__.split("+")[0])
    channels = ([f"channel{i}" for i in range(spec.in_channels)])
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


def test_package(path: str | os.PathLike) -> Verdict:
    """bioimageio.core's test of a package (zip or rdf.yaml), in this process, as one verdict."""
    problem = bioimageio_problem()
    if problem:
        return Verdict("not tested", f"bioimage.io test not run: {problem}")
    from bioimageio.core import test_description

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = test_description(str(path))
    failures = []
    for detail in summary.details:
        if detail.status == "failed":
            why = "; ".join(e.msg.splitlines()[0] for e in detail.errors) or detail.name
            failures.append(f"{detail.name}: {why}"[:300])
    checks = sum(1 for d in summary.details if d.status == "passed")
    if summary.status == "passed":
        return Verdict("passed", f"bioimage.io test passed ({checks} checks, bioimageio.core "
                                 f"{summary.env_bioimageio_core_version()})" if hasattr(summary, "env_bioimageio_core_version")
                       else f"bioimage.io test passed ({checks} checks)")
    first = failures[0] if failures else summary.status
    return Verdict("failed", f"bioimage.io test FAILED ({len(failures)} of {len(summary.details)} checks): {first}",
                   tuple(failures))


def export_bioimageio(source: str | os.PathLike | Checkpoint, out: str | os.PathLike, *,
                      image: np.ndarray | None = None, info: PackageInfo | None = None) -> ExportResult:
    """Write a bioimage.io model package (a zip, format 0.5) and test it with bioimageio.core.

    ``image``: a raw plane, (Y, X) or (Y, X, C), whose centre becomes the test input (None: a
    synthetic nuclei image). The package is written only when every weight format agrees with the
    model and bioimageio.core's test passes; a failed test raises InputError with its verdict and
    writes nothing.
    """
    ckpt = as_checkpoint(source)
    check_exportable(ckpt)  # a family bioimage.io cannot express is refused whatever is installed
    problem = bioimageio_problem()
    if problem:
        raise InputError(problem)
    info = info or PackageInfo()
    model = exportable_model(ckpt)
    raw = test_image(ckpt, image)
    x = torch.from_numpy(seglab_normalised(ckpt, raw))
    with torch.no_grad():
        expected = model(x).numpy()
    traced = trace(model, x)
    with torch.no_grad():
        outputs = {"torchscript": traced(x).numpy()}
    data = {"weights.pt": script_bytes(traced, ckpt)}
    arch = _smp_architecture(ckpt)
    if arch is not None:
        with torch.no_grad():
            outputs["pytorch_state_dict"] = _state_dict_model(arch, model)(x).numpy()
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        data["weights_state_dict.pt"] = buf.getvalue()
        data[ARCH_FILE] = _ARCH_SOURCE.encode()
    if onnx_available():
        data["weights.onnx"] = onnx_bytes(model, x, ckpt, output_name="outputs")
        ran = _onnx_run(data["weights.onnx"], x.numpy())
        if ran is not None:
            outputs["onnx"] = ran
    scale = np.maximum(np.abs(expected), 1.0)
    agreement = max(float(np.max(np.abs(out - expected) / scale)) for out in outputs.values())
    tolerance = max(MIN_TOLERANCE, float(f"{10 * agreement:.0e}"))
    if agreement > 1e-3:
        worst = max(outputs, key=lambda k: float(np.max(np.abs(outputs[k] - expected))))
        raise InputError(f"the {worst} export differs from the model by {agreement:.1e}; nothing was written")
    formats = ["pytorch_state_dict"] * (arch is not None) + ["torchscript"] + ["onnx"] * ("weights.onnx" in data)
    data["test_input.npy"] = _npy(raw)
    data["test_output.npy"] = _npy(expected.astype(np.float32))
    data["sample_input.tif"] = _tif(raw[0])
    data["sample_output.tif"] = _tif(expected[0])
    data["cover.png"] = _cover(x.numpy(), expected, ckpt.spec.has_regression_head)
    data["README.md"] = _readme(ckpt, info, formats, tolerance).encode()
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="seglab-bioimageio-") as folder:
        files = {}
        for name, content in data.items():
            files[name] = Path(folder) / name
            files[name].write_bytes(content)
        descr = _description(ckpt, info, files, arch, formats, tolerance)
        built = _save_package(descr, Path(folder) / "package.zip")
        verdict = test_package(built)
        if not verdict.passed:
            raise InputError(f"{out}: {verdict.line}; nothing was written")
        with atomic_path(out) as tmp:
            tmp.write_bytes(built.read_bytes())
    return ExportResult(out, verdict, tuple(formats), agreement, tolerance)


def _save_package(descr, path: Path) -> Path:
    from bioimageio.spec import save_bioimageio_package

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Path(save_bioimageio_package(descr, output_path=path))


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _tif(chw: np.ndarray) -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, np.ascontiguousarray(chw, np.float32), metadata={"axes": "CYX"})
    return buf.getvalue()
