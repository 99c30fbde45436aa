"""The network as every export format ships it: activation included, traced once, CPU, eval mode.

Input ``(B, C, Y, X)`` float32, each channel normalised the way the checkpoint
records it; Y and X multiples of :data:`ALIGN`. Output ``(B, K, Y, X)`` float32:
class probabilities (``K = max(2, n_classes)``, background first), or for a
"flows" / "distance" instance head the foreground probability followed by the
head's maps as the network gives them. TorchScript (:func:`trace`,
:func:`save_script`) and ONNX (:func:`onnx_bytes`) are written from here; the
file formats around them live in ``_export`` and ``_bioimageio``.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError
from ._checkpoint import Checkpoint, load_checkpoint
from ._registry import families

META_FILE = "seglab_meta.json"  # name of the metadata stored inside a TorchScript file
ALIGN = 32
#: the ONNX opset written: 17 is read by every onnxruntime since 1.13 and by bioimage.io's runtime
OPSET = 17


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


def as_checkpoint(source: str | os.PathLike | Checkpoint) -> Checkpoint:
    """``source`` itself, or the checkpoint loaded (safely) from its path."""
    return source if isinstance(source, Checkpoint) else load_checkpoint(source)


def check_exportable(ckpt: Checkpoint) -> None:
    """Refuse, in one sentence, a family whose output is not an image tensor (Mask R-CNN, box detectors)."""
    family = ckpt.spec.family_entry
    if not family.exportable:
        able = " or ".join(f.name for f in families() if f.exportable)
        raise InputError(f"exporting {family.label} models is not supported (their output is not an image "
                         f"tensor); export a {able} model")


def exportable_model(source: str | os.PathLike | Checkpoint) -> ProbabilityModel:
    """The checkpoint's network wrapped in :class:`ProbabilityModel`, on the CPU, in eval mode."""
    ckpt = as_checkpoint(source)
    check_exportable(ckpt)
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


def example_side(ckpt: Checkpoint, size: int | None = None) -> int:
    """The side of an example input: the recorded patch (a multiple of 32, at most :data:`MAX_EXAMPLE`
    and about 16 M values over all channels) unless ``size`` is given."""
    side = size or ckpt.info.patch or 256
    if isinstance(side, bool) or not isinstance(side, int):
        raise InputError(f"example size {side!r:.40} is not a whole number of pixels")
    side = max(ALIGN, side // ALIGN * ALIGN)
    if size is None:
        fits = int(math.sqrt(2**24 / ckpt.spec.in_channels)) // ALIGN * ALIGN
        side = min(side, MAX_EXAMPLE, max(ALIGN, fits))
    return side


def example_input(source: str | os.PathLike | Checkpoint, size: int | None = None, seed: int = 0) -> torch.Tensor:
    """A random (1, C, S, S) float32 input; S from :func:`example_side`."""
    ckpt = as_checkpoint(source)
    side = example_side(ckpt, size)
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((1, ckpt.spec.in_channels, side, side), generator=gen)


def trace(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` without its warnings (the export is checked against the model afterwards)."""
    # torch.jit is deprecated in favour of torch.export, but TorchScript is
    # still what bioimage.io, deepImageJ and the C++ runtime load.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.jit.trace(model, example, check_trace=False)


def meta_json(ckpt: Checkpoint) -> str:
    """The checkpoint's metadata with a note of the exported input and output, as JSON."""
    meta = ckpt.meta
    meta["export"] = {"input": "(B, C, Y, X) float32, percentile-normalised, Y and X multiples of 32",
                      "output": output_description(ckpt)}
    return json.dumps(meta, default=str)


def save_script(module: torch.jit.ScriptModule, target, ckpt: Checkpoint) -> None:
    """``torch.jit.save`` to a path or file object, with the metadata as an extra file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(module, target, _extra_files={META_FILE: meta_json(ckpt)})


def script_bytes(module: torch.jit.ScriptModule, ckpt: Checkpoint) -> bytes:
    """The TorchScript file of ``module`` (metadata included), in memory."""
    buf = io.BytesIO()
    save_script(module, buf, ckpt)
    return buf.getvalue()


def onnx_available() -> bool:
    try:
        import onnx  # noqa: F401
    except ImportError:
        return False
    return True


def onnx_bytes(model: nn.Module, example: torch.Tensor, ckpt: Checkpoint, opset: int = OPSET,
               output_name: str = "probabilities") -> bytes:
    """The ONNX file of ``model`` (one file, dynamic batch and spatial axes, metadata as a property).

    Written with the TorchScript-based exporter (``dynamo=False``): torch 2.9+ otherwise writes the
    weights as a second file and needs onnxscript.
    """
    if not onnx_available():
        raise InputError("install onnx to export ONNX (pip install onnx)")
    import onnx

    dims = {0: "batch", 2: "y", 3: "x"}
    with tempfile.TemporaryDirectory(prefix="seglab-onnx-") as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(folder) / "model.onnx"
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=[output_name],
                          dynamic_axes={"input": dims, output_name: dims})
        proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {"seglab_meta": meta_json(ckpt)})
    return proto.SerializeToString()
