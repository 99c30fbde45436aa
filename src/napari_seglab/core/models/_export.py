"""Export a checkpoint for use outside napari-seglab: TorchScript, ONNX, bioimage.io.

Every exported network maps a normalised image batch to class probabilities:

* input ``(B, C, Y, X)`` float32, each channel percentile-normalised the way
  the checkpoint records it (``meta["normalization"]``: the ``low`` and
  ``high`` percentiles of each image map to 0 and 1, not clipped);
  Y and X must be multiples of 32;
* output ``(B, K, Y, X)`` float32 probabilities, ``K = max(2, n_classes)``,
  channel 0 = background (for ``instances`` models: background, interior,
  boundary).

Models with a "flows" or "distance" instance head export their maps instead:
channel 0 the foreground probability, then the flows towards each object's
centre (dy, dx, times 5) or the normalised distance to the boundary; objects
come from them by following the flows (or a watershed of the distance), as
``napari_seglab.core.objects.decode`` does. Families whose output is not a
tensor (``Family.exportable`` False: Mask R-CNN's list of detections) are not
exported. Every file is written atomically.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..io import atomic_path, ensure_not_input
from ._checkpoint import Checkpoint, describe_checkpoint, load_checkpoint
from ._registry import families

FORMATS = ("torchscript", "onnx", "bioimageio")
META_FILE = "seglab_meta.json"  # name of the metadata stored inside a TorchScript file
ALIGN = 32


class ProbabilityModel(nn.Module):
    """A segmentation network followed by its final activation.

    ``forward``: (B, C, Y, X) float32 -> (B, K, Y, X) float32 probabilities
    (sigmoid for a one-logit binary network, softmax otherwise).
    """

    def __init__(self, network: nn.Module, head: bool = False):
        super().__init__()
        self.network = network
        self.head = head  # a flows / distance head: foreground probability, then its maps as they are

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from ._losses import probabilities

        out = self.network(x)
        if self.head:
            return torch.cat([torch.sigmoid(out[:, :1]), out[:, 1:]], 1)
        return probabilities(out)


def _checkpoint(source: str | os.PathLike | Checkpoint) -> Checkpoint:
    return source if isinstance(source, Checkpoint) else load_checkpoint(source)


def exportable_model(source: str | os.PathLike | Checkpoint) -> ProbabilityModel:
    """The checkpoint's network wrapped in :class:`ProbabilityModel`, on the CPU, in eval mode."""
    ckpt = _checkpoint(source)
    family = ckpt.spec.family_entry
    if not family.exportable:
        able = " or ".join(f.name for f in families() if f.exportable)
        raise InputError(f"exporting {family.label} models is not supported (their output is not an image "
                         f"tensor); export a {able} model")
    return ProbabilityModel(ckpt.build("cpu"), head=ckpt.spec.has_regression_head).eval()


def output_description(ckpt: Checkpoint) -> str:
    """What the exported network's output holds, in one sentence."""
    if not ckpt.spec.has_regression_head:
        return "(B, K, Y, X) float32 class probabilities, background first"
    maps = "flows towards each object's centre (dy, dx) x 5" if ckpt.spec.head == "flows" else \
        "distance to the object's boundary over its largest value"
    return (f"(B, K, Y, X) float32: foreground probability, then the {maps}; objects come from "
            "napari_seglab.core.objects.decode")


#: the largest example side traced and shipped as a test tensor: a traced network takes any size,
#: and a big recorded patch (up to 8192) must not make export allocate gigabytes
MAX_EXAMPLE = 512


def example_input(source: str | os.PathLike | Checkpoint, size: int | None = None, seed: int = 0) -> torch.Tensor:
    """A random (1, C, S, S) float32 input; S is the recorded patch size (a multiple of 32, at most
    :data:`MAX_EXAMPLE`) unless given."""
    ckpt = _checkpoint(source)
    side = size or ckpt.info.patch or 256
    if isinstance(side, bool) or not isinstance(side, int):
        raise InputError(f"example size {side!r:.40} is not a whole number of pixels")
    side = max(ALIGN, side // ALIGN * ALIGN)
    if size is None:  # at most MAX_EXAMPLE, and about 16 M values over all channels
        fits = int(math.sqrt(2**24 / ckpt.spec.in_channels)) // ALIGN * ALIGN
        side = min(side, MAX_EXAMPLE, max(ALIGN, fits))
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((1, ckpt.spec.in_channels, side, side), generator=gen)


def _trace(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    # torch.jit is deprecated in favour of torch.export, but TorchScript is
    # still what bioimage.io, deepImageJ and the C++ runtime load.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.jit.trace(model, example, check_trace=False)


def _save_script(module: torch.jit.ScriptModule, target, ckpt: Checkpoint) -> None:
    """``torch.jit.save`` to a path or file object, with the metadata as an extra file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(module, target, _extra_files={META_FILE: _meta_json(ckpt)})


def _meta_json(ckpt: Checkpoint) -> str:
    meta = ckpt.meta
    meta["export"] = {"input": "(B, C, Y, X) float32, percentile-normalised, Y and X multiples of 32",
                      "output": output_description(ckpt)}
    return json.dumps(meta, default=str)


def export_torchscript(source: str | os.PathLike | Checkpoint, out: str | os.PathLike) -> Path:
    """Trace the model (see module docstring) and save it with ``torch.jit.save``.

    The checkpoint metadata travels inside the file as ``seglab_meta.json``
    (read it with ``torch.jit.load(path, _extra_files={"seglab_meta.json": ""})``).
    """
    ckpt = _checkpoint(source)
    model = exportable_model(ckpt)
    traced = _trace(model, example_input(ckpt))
    out = Path(out)
    with atomic_path(out) as tmp:
        _save_script(traced, str(tmp), ckpt)
    return out


def _onnx_available() -> bool:
    try:
        import onnx  # noqa: F401
    except ImportError:
        return False
    return True


def export_onnx(source: str | os.PathLike | Checkpoint, out: str | os.PathLike, opset: int = 17) -> Path:
    """Export to ONNX with dynamic batch and spatial axes (needs the ``onnx`` package)."""
    if not _onnx_available():
        raise InputError("install onnx to export ONNX (pip install onnx)")
    ckpt = _checkpoint(source)
    model = exportable_model(ckpt)
    dims = {0: "batch", 2: "y", 3: "x"}
    out = Path(out)
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the TorchScript-based exporter handles dynamic axes without onnxscript
        torch.onnx.export(model, (example_input(ckpt),), str(tmp), dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["probabilities"],
                          dynamic_axes={"input": dims, "probabilities": dims})
        import onnx

        proto = onnx.load(str(tmp))
        onnx.helper.set_model_props(proto, {"seglab_meta": _meta_json(ckpt)})
        onnx.save(proto, str(tmp))
    return out


# ----------------------------------------------------------------------------- bioimage.io


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _yaml_text(doc: dict) -> str:
    try:
        import yaml
    except ImportError:  # JSON is valid YAML
        return json.dumps(doc, indent=2)
    return yaml.safe_dump(doc, sort_keys=False)


def _rdf(ckpt: Checkpoint, hashes: dict[str, str]) -> dict:
    spec = ckpt.spec
    norm = ckpt.info.normalization.to_dict()
    k = max(2, spec.n_classes)
    names = list(ckpt.info.class_names or [])
    names = names if len(names) == k else ["background"] + [f"class{i}" for i in range(1, k)]
    ident = [n.replace(" ", "_") for n in names]
    patch = int(ckpt.info.patch or 256)
    channels = [f"channel{i}" for i in range(spec.in_channels)]
    space_in = [{"type": "space", "id": a, "size": {"min": ALIGN, "step": ALIGN}} for a in ("y", "x")]
    space_out = [{"type": "space", "id": a, "size": {"tensor_id": "input", "axis_id": a}} for a in ("y", "x")]
    return {
        "type": "model",
        "format_version": "0.5.3",
        "name": f"napari-seglab {spec.family} {spec.arch}",
        "description": f"Semantic segmentation exported from napari-seglab: {describe_checkpoint(ckpt)}.",
        "authors": [{"name": "napari-seglab user"}],
        "cite": [{"text": "napari-seglab, a napari plugin for segmentation training", "url": "https://napari.org"}],
        "license": "BSD-3-Clause",
        "documentation": "README.md",
        "tags": ["segmentation", "napari-seglab", spec.family, spec.arch],
        "inputs": [{
            "id": "input",
            "description": "image; each channel is scaled so that its percentiles map to 0 and 1",
            "axes": [{"type": "batch"}, {"type": "channel", "channel_names": channels}, *space_in],
            "test_tensor": {"source": "test_input.npy", "sha256": hashes["test_input.npy"]},
            "data": {"type": "float32"},
            "preprocessing": [
                {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
                {"id": "scale_range", "kwargs": {"axes": ["y", "x"],
                                                 "min_percentile": float(norm.get("low", 1.0)),
                                                 "max_percentile": float(norm.get("high", 99.8))}},
            ],
        }],
        "outputs": [{
            "id": "probabilities",
            "description": "class probabilities; channel 0 is background",
            "axes": [{"type": "batch"}, {"type": "channel", "channel_names": ident}, *space_out],
            "test_tensor": {"source": "test_output.npy", "sha256": hashes["test_output.npy"]},
            "data": {"type": "float32", "range": [0.0, 1.0]},
        }],
        "weights": {"torchscript": {"source": "weights.pt", "sha256": hashes["weights.pt"],
                                    "pytorch_version": torch.__version__.split("+")[0]}},
        "config": {"napari_seglab": {"label_mode": ckpt.label_mode, "patch": patch,
                                     "model": spec.to_dict(), "normalization": norm}},
    }


def export_bioimageio(source: str | os.PathLike | Checkpoint, out: str | os.PathLike) -> Path:
    """Write a minimal bioimage.io model package (a zip, format 0.5).

    The zip holds ``rdf.yaml``, TorchScript ``weights.pt``, a README and a
    test input/output pair (``.npy``, (1, C, S, S) and (1, K, S, S) float32).
    The normalisation is declared as a ``scale_range`` preprocessing step.
    """
    ckpt = _checkpoint(source)
    model = exportable_model(ckpt)
    example = example_input(ckpt)
    traced = _trace(model, example)
    weights = io.BytesIO()
    _save_script(traced, weights, ckpt)
    with torch.no_grad():
        expected = model(example).numpy().astype(np.float32)
    files = {
        "weights.pt": weights.getvalue(),
        "test_input.npy": _npy_bytes(example.numpy().astype(np.float32)),
        "test_output.npy": _npy_bytes(expected),
        "README.md": (f"# napari-seglab model\n\n{describe_checkpoint(ckpt)}.\n\n"
                      "Input: one image, channels first, percentile-normalised; spatial sizes multiples of "
                      f"32. Output: {output_description(ckpt)}.\n").encode(),
    }
    hashes = {name: _sha256(data) for name, data in files.items()}
    rdf = _yaml_text(_rdf(ckpt, hashes)).encode()
    out = Path(out)
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("rdf.yaml", rdf)
        for name, data in files.items():
            # the TorchScript file is a zip archive already: deflating it again costs seconds for nothing
            zf.writestr(name, data, compress_type=zipfile.ZIP_STORED if name == "weights.pt" else None)
    return out


def export_model(source: str | os.PathLike | Checkpoint, fmt: str, out: str | os.PathLike, *,
                 protect: tuple[str | os.PathLike, ...] = ()) -> Path:
    """Export ``source`` in format ``fmt`` (one of :data:`FORMATS`) to ``out``; never over ``protect``."""
    fmt = (fmt or "").lower()
    if fmt not in FORMATS:
        raise InputError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    inputs = list(protect) + ([source] if not isinstance(source, Checkpoint) else [])
    ensure_not_input(out, inputs)
    parent = Path(out).parent
    if not parent.is_dir():  # say so before the slow trace
        raise InputError(f"{parent}: output folder does not exist")
    writer = {"torchscript": export_torchscript, "onnx": export_onnx, "bioimageio": export_bioimageio}[fmt]
    return writer(source, out)
