"""bioimage.io model packages: described with bioimageio.spec's own classes and tested with bioimageio.core.

A package holds the network three ways (``pytorch_state_dict`` with its
architecture source for segmentation-models-pytorch networks, ``torchscript``
and ``onnx``), each checked against the others before it is written; a test
input cut from the user's image (or a synthetic nuclei image) as SegLab
prepares it (resampled by the checkpoint's object scale), and the output
SegLab's own normalisation and network give for it; a cover rendered from that
output; a README; and the checkpoint's metadata under ``config.napari_seglab``.

The description itself is built in ``_bioimageio_descr``: SegLab's normalisation (each
channel's ``low`` / ``high`` percentiles of the image map to 0 and 1, not clipped) is
bioimage.io's ``scale_range`` over the spatial axes of each sample; a checkpoint with fixed
training values is a ``scale_linear``. Before the file is reported written, bioimageio.core's
test runs on it (every weight format on the test input, several sizes and batch sizes) and its
verdict is returned.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import warnings
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data import normalize, percentiles, resample_image, scaled_shape, to_chw
from ..errors import InputError
from ..events import Message, drive
from ..io import atomic_path
from ._bioimageio_descr import ARCH_FILE, PackageInfo, cover, describe_package, readme
from ._checkpoint import Checkpoint
from ._traced import (
    ALIGN,
    as_checkpoint,
    check_exportable,
    example_side,
    exportable_model,
    onnx_available,
    onnx_bytes,
    script_bytes,
    trace,
)

INSTALL = "pip install 'napari-seglab[bioimageio]'"
#: the test tensors' largest side: bioimage.io's test runs it through every weight format and sizes
TEST_SIDE = 256
#: what the weight formats may differ by, at least (measured: float32 TorchScript / ONNX Runtime against
#: eager torch differ by under 2e-6 on probabilities and 2e-5 on flows of tiny U-Nets)
MIN_TOLERANCE = 1e-4
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
        return Verdict("passed", f"bioimage.io test passed ({checks} checks)")
    first = failures[0] if failures else summary.status
    return Verdict("failed", f"bioimage.io test FAILED ({len(failures)} of {len(summary.details)} checks): {first}",
                   tuple(failures))


def export_bioimageio(source: str | os.PathLike | Checkpoint, out: str | os.PathLike, *,
                      image: np.ndarray | None = None, info: PackageInfo | None = None) -> ExportResult:
    """Write a bioimage.io model package (a zip, format 0.5) and test it with bioimageio.core.

    ``image``: a raw plane, (Y, X) or (Y, X, C), whose centre becomes the test input (None: a
    synthetic nuclei image). The package is written only when every weight format agrees with the
    model and bioimageio.core's test passes; a failed test raises InputError with its verdict and
    writes nothing. The blocking twin of :func:`iter_export_bioimageio`.
    """
    return drive(iter_export_bioimageio(source, out, image=image, info=info))


def iter_export_bioimageio(source: str | os.PathLike | Checkpoint, out: str | os.PathLike, *,
                           image: np.ndarray | None = None, info: PackageInfo | None = None
                           ) -> Generator[Message, None, ExportResult]:
    """:func:`export_bioimageio` as a generator: a Message at each stage, the ExportResult returned."""
    ckpt = as_checkpoint(source)
    check_exportable(ckpt)  # a family bioimage.io cannot express is refused whatever is installed
    problem = bioimageio_problem()
    if problem:
        raise InputError(problem)
    info = info or PackageInfo()
    yield Message("tracing the network and checking its weight formats against each other")
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
    data["cover.png"] = cover(x.numpy(), expected, ckpt.spec.has_regression_head)
    data["README.md"] = readme(ckpt, info, formats, tolerance).encode()
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="seglab-bioimageio-") as folder:
        files = {}
        for name, content in data.items():
            files[name] = Path(folder) / name
            files[name].write_bytes(content)
        descr = describe_package(ckpt, info, files, arch, formats, tolerance)
        built = _save_package(descr, Path(folder) / "package.zip")
        yield Message("testing the package with bioimageio.core (every weight format, several sizes)")
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
