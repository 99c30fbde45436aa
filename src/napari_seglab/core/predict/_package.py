"""bioimage.io model packages as SegLab models: a package's weights run through the tiled, blended predictor.

:func:`load_package` reads a package (a zip, or an ``rdf.yaml`` / ``bioimageio.yaml`` beside its files)
with bioimageio.spec, offline, and returns a :class:`~napari_seglab.core.predict.LoadedModel` whose
network is a :class:`PackageNetwork`: it takes SegLab's (B, C, Y, X) tiles, puts them in the package's
axis order, pads them to a size the package accepts (with its halo as context), runs the weights and
gives back what SegLab's decoding expects. The package's preprocessing becomes the per-plane scaling
SegLab applies before tiling (statistics over the whole plane, as bioimage.io computes them over a
sample); clipping and the postprocessing steps run in the network.

Weights: TorchScript, ONNX (with onnxruntime), or the state dict of a package SegLab exported (its
architecture file is recognised by hash, and the network is rebuilt from the recorded metadata). Any
other architecture code inside a package is never run.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError
from ..models import CheckpointMeta, ModelSpec
from ._image import LoadedModel
from ._package_ops import (
    InputScaling,
    PackageAxes,
    apply_ops,
    fixed_side,
    split_preprocessing,
    tensor_ops,
    valid_size,
)

#: the names a package's description file has
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
WEIGHT_ORDER = ("pytorch_state_dict", "torchscript", "onnx")


def is_package(path: str | os.PathLike) -> bool:
    """True for a bioimage.io description file, or a zip holding one at its top level."""
    path = Path(path)
    if path.name in RDF_NAMES or path.name.endswith((".rdf.yaml", ".bioimageio.yaml")):
        return True
    if path.suffix.lower() != ".zip" or not path.is_file():
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n in RDF_NAMES for n in zf.namelist()[:10_000])
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def _raw_description(path: Path) -> dict:
    import yaml

    try:
        if path.suffix.lower() == ".zip":
            with zipfile.ZipFile(path) as zf:
                name = next(n for n in zf.namelist() if n in RDF_NAMES)
                text = zf.read(name).decode("utf-8")
        else:
            text = path.read_text(encoding="utf-8")
        doc = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - an unreadable package is the file's fault
        raise InputError(f"{path}: not a readable bioimage.io package ({str(exc).splitlines()[0][:120]})") from exc
    if not isinstance(doc, dict) or doc.get("type") != "model":
        raise InputError(f"{path}: not a bioimage.io model description (type {doc.get('type') if isinstance(doc, dict) else None!r})")
    return doc


def _remote_sources(doc, where: str = "") -> list[str]:
    """The fields of a raw description whose file is a URL (a download)."""
    found = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key in ("source", "uri") and isinstance(value, str) and value.startswith(("http://", "https://")):
                found.append(f"{where}.{key}".lstrip("."))
            elif key not in ("cite", "links", "git_repo", "config", "documentation", "covers", "authors",
                             "maintainers", "parent", "sample_tensor", "attachments", "badges", "icon"):
                found.extend(_remote_sources(value, f"{where}.{key}"))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            found.extend(_remote_sources(value, f"{where}[{i}]"))
    return found


def _describe(path: Path):
    """The package's ModelDescr (bioimageio.spec, latest format), read offline; InputError otherwise."""
    from ..models import bioimageio_problem

    problem = bioimageio_problem()
    if problem:
        raise InputError(f"{path}: is a bioimage.io package; {problem}")
    remote = _remote_sources(_raw_description(path))
    if remote:
        raise InputError(f"{path}: the package needs a download ({remote[0]} is a URL); SegLab reads local "
                         "files only: download the complete package zip first")
    import warnings

    from bioimageio.spec import ValidationContext, load_model_description

    try:
        with warnings.catch_warnings(), ValidationContext(perform_io_checks=True):
            warnings.simplefilter("ignore")
            descr = load_model_description(str(path), format_version="latest")
    except Exception as exc:  # noqa: BLE001 - any failure to read an untrusted package is its fault
        raise InputError(f"{path}: not a valid bioimage.io model ({str(exc).splitlines()[0][:200]})") from exc
    return descr


# ----------------------------------------------------------------------------- the network


class PackageNetwork(nn.Module):
    """A package's weights behind SegLab's network interface.

    ``forward``: normalised (B, C, Y, X) float32 -> (B, K, Y, X) values SegLab's activation turns back
    into the package's output: ``mode`` "probabilities" gives log-probabilities (softmax restores them),
    "foreground" the logit of a one-channel probability, "head" the logit of channel 0 followed by the
    other channels as they are (SegLab's flows / distance heads), "logits" the output as it is (two
    class logits as their difference, the one logit of SegLab's binary networks).
    """

    def __init__(self, run: nn.Module, inputs: PackageAxes, outputs: PackageAxes, pre_ops, post_ops, mode: str):
        super().__init__()
        self.run, self.inputs, self.outputs = run, inputs, outputs
        self.pre_ops, self.post_ops, self.mode = pre_ops, post_ops, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # padded at the bottom and right to a size the package accepts, as SegLab pads its own tiles; the
        # package's halo is left to the blending of overlapping tiles (LoadedModel.halo)
        h, w = x.shape[-2:]
        ty, tx = valid_size(self.inputs.sizes["y"], h), valid_size(self.inputs.sizes["x"], w)
        pads = (0, tx - w, 0, ty - h)
        x = apply_ops(self.pre_ops, x.float())
        if any(pads):
            x = torch.nn.functional.pad(x, pads, mode="reflect" if min(h, w) > max(pads) else "replicate")
        y = self.outputs.from_package(self.run(self.inputs.to_package(x))).float()
        y = apply_ops(self.post_ops, y)[:, :, :h, :w]
        return self._as_logits(y)

    def _as_logits(self, y: torch.Tensor) -> torch.Tensor:
        if self.mode == "probabilities":
            return torch.log(y.clamp(min=1e-12))
        if self.mode == "foreground":  # two channels (SegLab's binary export, [1 - p, p]): the second
            y = y[:, -1:]
            return torch.logit(y.clamp(1e-7, 1 - 1e-7))
        if self.mode == "head":
            return torch.cat([torch.logit(y[:, :1].clamp(1e-7, 1 - 1e-7)), y[:, 1:]], 1)
        if y.shape[1] == 2:  # two-class logits: SegLab's binary network has one, their difference
            return y[:, 1:] - y[:, :1]
        return y


def _read_source(source) -> bytes:
    """The bytes of a file of the package (local: URLs were refused when it was read)."""
    from bioimageio.spec.utils import get_reader

    return get_reader(source).read()


def _seglab_meta(descr, path: Path) -> CheckpointMeta | None:
    """The checkpoint metadata a SegLab package records (checked as a checkpoint's is), or None."""
    from ..models import parse_meta

    config = descr.config.model_dump() if hasattr(descr.config, "model_dump") else dict(descr.config or {})
    seglab = config.get("napari_seglab") or {}
    meta = seglab.get("meta") if isinstance(seglab, dict) else None
    return parse_meta(meta, path) if isinstance(meta, dict) and "model" in meta else None


def _weights(descr, path: Path, prefer: str | None, meta: CheckpointMeta | None, device) -> tuple[str, nn.Module]:
    """(format, module) of the weights to run: ``prefer`` if the package has it, else the first usable."""
    from ..models import ARCH_SHA256

    available = {f: getattr(descr.weights, f, None) for f in WEIGHT_ORDER}
    order = [prefer] if prefer else list(WEIGHT_ORDER)
    if prefer and available.get(prefer) is None:
        have = ", ".join(f for f, w in available.items() if w is not None) or "none SegLab runs"
        raise InputError(f"{path}: the package has no {prefer} weights (it has {have})")
    ours = ARCH_SHA256
    for fmt in order:
        entry = available.get(fmt)
        if entry is None:
            continue
        if fmt == "pytorch_state_dict":
            arch = entry.architecture
            if meta is None or str(getattr(arch, "sha256", "")) != ours:
                if prefer:
                    raise InputError(f"{path}: the state dict's architecture is code from the package; SegLab "
                                     "runs only its own architectures: use the torchscript or onnx weights")
                continue
            return fmt, _seglab_state_dict(entry, path, meta, device)
        data = _read_source(entry.source)
        if fmt == "torchscript":
            import io
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = torch.jit.load(io.BytesIO(data), map_location=device)
            return fmt, module.eval()
        from ._onnx import OnnxNetwork

        return fmt, OnnxNetwork(data)
    raise InputError(f"{path}: none of the package's weights are ones SegLab runs (TorchScript, ONNX, or the state "
                     "dict of a SegLab export)")


def _state_dict_checkpoint(entry, path: Path, meta: CheckpointMeta):
    """The Checkpoint of a SegLab package's state dict (loaded with ``weights_only=True``, checked to fit)."""
    import io

    from ..models import Checkpoint, check_weights_fit

    try:
        state = torch.load(io.BytesIO(_read_source(entry.source)), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - untrusted file
        raise InputError(f"{path}: the state dict weights cannot be read safely ({str(exc).splitlines()[0][:120]})") from exc
    if not isinstance(state, dict):
        raise InputError(f"{path}: the state dict weights are not a state dict")
    inner = {k.removeprefix("network."): v for k, v in state.items() if isinstance(k, str)}
    check_weights_fit(meta.model, inner, path)
    return Checkpoint(meta=meta, state_dict=inner, path=str(path))


def _seglab_state_dict(entry, path: Path, meta: CheckpointMeta, device) -> nn.Module:
    from ..models import ProbabilityModel

    ckpt = _state_dict_checkpoint(entry, path, meta)
    return ProbabilityModel(ckpt.build(device), head=meta.model.has_regression_head).eval()


def package_checkpoint(source: str | os.PathLike):
    """The :class:`~napari_seglab.core.models.Checkpoint` inside a package SegLab exported (its state dict
    and recorded metadata), e.g. to train on from it; InputError for any other package."""
    from ..models import ARCH_SHA256

    path = Path(source)
    descr = _describe(path)
    meta = _seglab_meta(descr, path)
    entry = getattr(descr.weights, "pytorch_state_dict", None)
    if meta is None or entry is None or str(getattr(entry.architecture, "sha256", "")) != ARCH_SHA256:
        raise InputError(f"{path}: only a bioimage.io package exported by SegLab (with its state dict) can be "
                         "trained on; this one's network is not one SegLab builds")
    return _state_dict_checkpoint(entry, path, meta)


def load_package(source: str | os.PathLike, device: str | torch.device = "auto", *,
                 weights: str | None = None) -> LoadedModel:
    """A bioimage.io model package (zip or description file) ready for :func:`iter_predict_image`.

    ``weights``: "torchscript", "onnx" or "pytorch_state_dict" to run those (default: the state dict of a
    SegLab export, else TorchScript, else ONNX). The package must have one 2D input and one output.
    """
    from ..device import pick_device, precision_for

    path = Path(source)
    if weights is not None and weights not in WEIGHT_ORDER:
        raise InputError(f"unknown weights format {weights!r}; choose one of {', '.join(WEIGHT_ORDER)}")
    descr = _describe(path)
    if len(descr.inputs) != 1 or len(descr.outputs) != 1:
        raise InputError(f"{path}: the package has {len(descr.inputs)} inputs and {len(descr.outputs)} outputs; "
                         "SegLab runs packages with one of each")
    tin, tout = descr.inputs[0], descr.outputs[0]
    inputs, outputs = PackageAxes(tin, path, "input"), PackageAxes(tout, path, "output")
    dev = device if isinstance(device, torch.device) else pick_device(device)
    meta = _seglab_meta(descr, path)
    affine, rest = split_preprocessing(list(tin.preprocessing))
    scaling = InputScaling(affine, inputs.channels, path)
    pre_ops = tensor_ops(rest, path, "preprocessing")
    post_ops = tensor_ops(list(tout.postprocessing), path, "postprocessing")
    fmt, run = _weights(descr, path, weights, meta, dev)
    if meta is not None:
        mode = "head" if meta.model.has_regression_head else \
            "foreground" if meta.model.out_channels == 1 else "probabilities"
    else:
        meta = _foreign_meta(descr, inputs, outputs, path)
        mode = _foreign_mode(tout, post_ops, outputs.channels)
    if fmt == "pytorch_state_dict":
        # SegLab's own network: its logits as they are, and the recorded normalisation
        net, scaling_used = run.network, None
    else:
        net, scaling_used = PackageNetwork(run, inputs, outputs, pre_ops, post_ops, mode).eval(), scaling
    side = fixed_side(inputs)
    max_tile = None
    if side is not None:
        max_tile = (side - 2 * outputs.halo) // 32 * 32
        if max_tile < 32:
            raise InputError(f"{path}: the package's fixed input size {side} leaves no tile after its halo")
    extra = dict(meta.extra)
    extra["bioimageio"] = {"name": str(descr.name), "weights": fmt, "source": str(path)}
    meta = meta.replace(extra=extra)
    return LoadedModel(model=net, meta=meta, device=dev, precision=precision_for(dev),
                       scaling=scaling_used, max_tile=max_tile, halo=outputs.halo if fmt != "pytorch_state_dict" else 0)


def _foreign_meta(descr, inputs: PackageAxes, outputs: PackageAxes, path: Path) -> CheckpointMeta:
    """Metadata for a package SegLab did not make: a dense network of its channel counts."""
    k = outputs.channels
    spec = ModelSpec(family="unet", arch="Unet", encoder="resnet18", in_channels=inputs.channels,
                     n_classes=max(2, k))
    return CheckpointMeta(model=spec, label_mode="classes")


def _foreign_mode(tout, post_ops, channels: int) -> str:
    """How a foreign package's output maps to SegLab's activation: probabilities unless it says otherwise."""
    data = tout.data[0] if isinstance(tout.data, (list, tuple)) else tout.data
    rng = tuple(getattr(data, "range", (None, None)) or (None, None))
    probability = any(op[0] in ("sigmoid", "binarize") for op in post_ops) or (
        rng[0] is not None and rng[1] is not None and rng[0] >= 0 and rng[1] <= 1)
    if not probability and rng == (None, None):
        probability = True  # undeclared: most segmentation packages end with a sigmoid or softmax
    if not probability:
        return "logits"
    return "foreground" if channels <= 2 else "probabilities"


def package_summary(model: LoadedModel) -> str:
    """One line about a loaded package: its name and the weights that run."""
    info = model.info.extra.get("bioimageio", {})
    return f"bioimage.io package {info.get('name', '?')!r} ({info.get('weights', '?')} weights)"
