"""Model registry: segmentation-models-pytorch architectures, torchvision FCN and Mask R-CNN.

Every name is looked up here; an unknown name raises an InputError listing the
valid ones. Pretrained weights are used only when they are already on disk
(a cache or a file): nothing downloads unless the caller allows it.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import InputError

FAMILIES = ("unet", "fcn", "maskrcnn")
SMP_ARCHS = ("Unet", "UnetPlusPlus", "FPN", "DeepLabV3Plus", "MAnet", "Linknet", "PAN", "PSPNet", "DeepLabV3")
FCN_ARCHS = ("fcn_resnet50", "fcn_resnet101")
MASKRCNN_ARCHS = ("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2")
DEFAULT_ARCH = {"unet": "Unet", "fcn": "fcn_resnet50", "maskrcnn": "maskrcnn_resnet50_fpn"}
DEFAULT_ENCODER = "resnet34"
#: instance heads of the unet / fcn families (``options["head"]``): "boundary" is the 3-class
#: background / interior / boundary map (absent from older checkpoints); "flows" and "distance"
#: are the regression heads of :mod:`.flows` (a foreground logit plus flow or distance channels)
INSTANCE_HEADS = ("boundary", "flows", "distance")


@dataclass(frozen=True)
class Preset:
    """A named U-Net choice for the Model tab and ``seglab train --preset``.

    ``cpu_step_s``: seconds per training step (batch 8 of 128 px, 1 channel,
    bfloat16 autocast, 2 threads) measured on this project's quiet 2-core
    machine with ``benchmarks/train_step_profile.py``; float32 costs about
    1.5-1.8x more, a busy machine 2-4x more; a GPU step costs milliseconds.
    """

    name: str
    encoder: str
    encoder_depth: int
    decoder_channels: tuple[int, ...]
    cpu_step_s: float
    summary: str

    def options(self) -> dict:
        return {"encoder_depth": self.encoder_depth, "decoder_channels": list(self.decoder_channels)}


#: ``fast`` won the 2-core measurement (benchmarks/quality_vs_time.py): a 3-level ResNet-18
#: encoder with a narrow decoder takes ~5x the steps per second of the 5-level ResNet-34 and
#: reaches its quality within the first minute; ``accurate`` is the classic deep U-Net for a GPU
#: or long runs.
PRESETS = {
    "fast": Preset("fast", "resnet18", 3, (64, 32, 16), 0.08,
                   "3-level ResNet-18 U-Net, narrow decoder: useful within a minute on a laptop CPU"),
    "accurate": Preset("accurate", "resnet34", 5, (256, 128, 64, 32, 16), 0.22,
                       "5-level ResNet-34 U-Net: more context; slow on a CPU, the choice for a GPU"),
}
DEFAULT_PRESET = {"cpu": "fast", "cuda": "accurate", "mps": "fast"}
#: the largest U-Net options a checkpoint may ask for (metadata is untrusted input)
_MAX_DEPTH, _MAX_DECODER = 5, 1024


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model; stored in the checkpoint.

    ``out_channels`` is the number of logit channels (1 for a binary
    semantic model); ``n_classes`` counts background. ``options`` holds
    family-specific settings (detector sizes and limits).
    """

    family: str = "unet"
    arch: str = "Unet"
    encoder: str = DEFAULT_ENCODER
    in_channels: int = 1
    n_classes: int = 2
    options: dict = field(default_factory=dict)

    @property
    def head(self) -> str:
        """The instance head: "boundary" (also every semantic and old model), "flows" or "distance"."""
        return (self.options or {}).get("head", "boundary") if self.family != "maskrcnn" else "boundary"

    @property
    def has_regression_head(self) -> bool:
        """True for the "flows" and "distance" heads, whose raw outputs are decoded into objects."""
        return self.head in ("flows", "distance")

    @property
    def out_channels(self) -> int:
        if self.has_regression_head:
            from .flows import n_outputs

            return n_outputs(self.head)
        return 1 if self.n_classes == 2 and self.family != "maskrcnn" else self.n_classes

    @property
    def semantic(self) -> bool:
        return self.family != "maskrcnn"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        known = {k: d[k] for k in ("family", "arch", "encoder", "in_channels", "n_classes", "options") if k in d}
        return cls(**known)


def _choose(name: str, options, what: str) -> str:
    if name in options:
        return name
    lowered = {o.lower(): o for o in options}
    if name.lower() in lowered:
        return lowered[name.lower()]
    raise InputError(f"unknown {what} {name!r}; choose one of: {', '.join(options)}")


def smp_encoders() -> list[str]:
    """Names of the encoders segmentation-models-pytorch offers."""
    from segmentation_models_pytorch.encoders import get_encoder_names

    return list(get_encoder_names())


def check_spec(spec: ModelSpec) -> ModelSpec:
    """Normalise names and validate a spec; unknown names list the valid ones."""
    spec.family = _choose(spec.family, FAMILIES, "model family")
    archs = {"unet": SMP_ARCHS, "fcn": FCN_ARCHS, "maskrcnn": MASKRCNN_ARCHS}[spec.family]
    if spec.family != "unet" and spec.arch in SMP_ARCHS:
        spec.arch = DEFAULT_ARCH[spec.family]
    spec.arch = _choose(spec.arch, archs, f"{spec.family} architecture")
    if spec.family == "unet":
        encoders = smp_encoders()
        if spec.encoder not in encoders and not spec.encoder.startswith("tu-"):
            close = [e for e in encoders if spec.encoder.lower()[:4] in e][:12]
            hint = f" (similar: {', '.join(close)})" if close else f"; e.g. {', '.join(encoders[:10])}, ..."
            raise InputError(f"unknown encoder {spec.encoder!r}{hint}")
    if spec.family == "unet":
        _unet_options(spec)
    check_head((spec.options or {}).get("head", "boundary"), spec.family)
    if spec.in_channels < 1:
        raise InputError("a model needs at least one input channel")
    if spec.n_classes < 2:
        raise InputError("a model needs at least two classes (background and one class)")
    return spec


def check_head(head, family: str = "unet") -> str:
    """Validate an instance head name (from a user or a checkpoint) for ``family``; InputError if unknown."""
    if not isinstance(head, str) or head not in INSTANCE_HEADS:
        raise InputError(f"unknown instance head {str(head)[:40]!r}; choose one of {', '.join(INSTANCE_HEADS)}")
    if head != "boundary" and family == "maskrcnn":
        raise InputError(f"Mask R-CNN has its own instance head; the {head!r} head is for the unet and fcn families")
    return head


def _unet_options(spec: ModelSpec) -> dict:
    """smp keyword arguments from ``spec.options`` (absent: smp's 5-level default, as old checkpoints)."""
    opts = spec.options or {}
    depth = opts.get("encoder_depth", 5)
    if not isinstance(depth, int) or isinstance(depth, bool) or not 3 <= depth <= _MAX_DEPTH:
        raise InputError(f"encoder_depth must be an integer from 3 to {_MAX_DEPTH}; got {depth!r}")
    dec = opts.get("decoder_channels", [256, 128, 64, 32, 16][:depth])
    if (not isinstance(dec, (list, tuple)) or len(dec) != depth
            or not all(isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= _MAX_DECODER for c in dec)):
        raise InputError(f"decoder_channels must be {depth} integers from 1 to {_MAX_DECODER}; got {dec!r}")
    return {"encoder_depth": depth, "decoder_channels": tuple(dec)}


def preset_spec(name: str, in_channels: int = 1, n_classes: int = 2, head: str = "boundary") -> ModelSpec:
    """The U-Net ModelSpec of preset ``name`` (see :data:`PRESETS`), with instance ``head`` when not boundary."""
    preset = PRESETS[_choose(name, tuple(PRESETS), "model preset")]
    options = preset.options()
    if check_head(head) != "boundary":
        options["head"] = head
    return ModelSpec(family="unet", arch="Unet", encoder=preset.encoder, in_channels=in_channels,
                     n_classes=n_classes, options=options)


def check_stored_encoder(name) -> str:
    """Validate an encoder name read from a file (untrusted) against SegLab's own registry.

    Allowed: segmentation-models-pytorch's built-in encoder names, and
    ``tu-NAME`` where NAME is a model in timm's in-process registry (plain
    letters, digits, ``_`` and ``.``). Refused: hub or folder prefixes
    (``hf-hub:``, ``local-dir:``), paths and anything else, so a checkpoint
    can never make SegLab look something up on the network or on disk.
    """
    import re

    if not isinstance(name, str) or not 0 < len(name) <= 100:
        raise InputError(f"encoder name {str(name)[:40]!r} is not a name SegLab knows")
    if name in smp_encoders():
        return name
    inner = name[3:] if name.startswith("tu-") else None
    if inner and re.fullmatch(r"[A-Za-z0-9_.]+", inner) and ".." not in inner:
        import timm

        if inner in timm.list_models():
            return name
    raise InputError(f"encoder {name[:60]!r} is not in SegLab's registry of encoders (smp encoders and "
                     "timm models by plain name); hub, folder and path names are never built from a file")


# ----------------------------------------------------------------------------- pretrained weights


def _hub_file(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _load_state_file(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: pretrained weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"{path}: cannot read pretrained weights safely ({type(exc).__name__}: {exc})") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(f"{path}: not a state dict of tensors")
    return state


def _smp_imagenet_file(encoder: str, allow_download: bool) -> Path | None:
    """Path of the ImageNet encoder weights in the Hugging Face cache, or None."""
    from segmentation_models_pytorch.encoders import encoders

    settings = encoders.get(encoder, {}).get("pretrained_settings", {}).get("imagenet")
    if not settings:
        return None
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(settings["repo_id"], filename="model.safetensors",
                                    revision=settings["revision"], local_files_only=not allow_download))
    except Exception:
        return None


class _ChannelAdapter(nn.Module):
    """Maps C input channels to the 3 a torchvision backbone expects (repeat for 1, learnable 1x1 else)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.in_channels = in_channels
        self.mix = None if in_channels in (1, 3) else nn.Conv2d(in_channels, 3, 1)
        if self.mix is not None:
            nn.init.constant_(self.mix.weight, 1.0 / in_channels)
            nn.init.zeros_(self.mix.bias)

    def forward(self, x):
        if self.in_channels == 1:
            return x.expand(-1, 3, -1, -1)
        return x if self.mix is None else self.mix(x)


class FCNWrapper(nn.Module):
    """torchvision FCN returning logits (B, K, Y, X) instead of a dict."""

    def __init__(self, fcn: nn.Module, in_channels: int):
        super().__init__()
        self.adapt = _ChannelAdapter(in_channels)
        self.fcn = fcn

    def forward(self, x):
        return self.fcn(self.adapt(x))["out"]


def _build_smp(spec: ModelSpec, pretrained: str | None, allow_download: bool) -> tuple[nn.Module, str]:
    import segmentation_models_pytorch as smp

    cls = getattr(smp, spec.arch)
    # only the U-Net-like decoders take decoder channels; the others keep smp's defaults
    kwargs = _unet_options(spec) if spec.arch in ("Unet", "UnetPlusPlus", "MAnet") else {}
    note = "random initialisation"
    weights_file = None
    if pretrained in ("imagenet", "auto"):
        weights_file = _smp_imagenet_file(spec.encoder, allow_download)
        if weights_file is None:
            why = "and could not be downloaded" if allow_download else \
                "(downloading was not allowed: pass --allow-download on a connected machine)"
            note = (f"ImageNet weights for encoder {spec.encoder!r} are not in the local cache "
                    f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}) {why}; "
                    "training from random initialisation")
    elif pretrained:
        weights_file = Path(pretrained)
    if weights_file is None:
        return cls(encoder_name=spec.encoder, encoder_weights=None, in_channels=spec.in_channels,
                   classes=spec.out_channels, **kwargs), note
    model = cls(encoder_name=spec.encoder, encoder_weights=None, in_channels=3, classes=spec.out_channels,
                **kwargs)
    state = _load_state_file(weights_file)
    missing, unexpected = model.encoder.load_state_dict(state, strict=False)
    if len(missing) > len(state) // 2:
        raise InputError(f"{weights_file}: does not hold weights for encoder {spec.encoder!r}")
    model.encoder.set_in_channels(spec.in_channels, pretrained=True)
    return model, f"encoder weights from {weights_file}"


def _torchvision_stock(weights_enum, allow_download: bool):
    if allow_download or _hub_file(weights_enum.url).is_file():
        return weights_enum
    return None


def _build_fcn(spec: ModelSpec, pretrained: str | None, allow_download: bool) -> tuple[nn.Module, str]:
    from torchvision.models import segmentation as seg

    builder = getattr(seg, spec.arch)
    enum = {"fcn_resnet50": seg.FCN_ResNet50_Weights, "fcn_resnet101": seg.FCN_ResNet101_Weights}[spec.arch]
    note = "random initialisation"
    state = None
    if pretrained in ("voc", "coco", "auto", "imagenet"):
        stock = _torchvision_stock(enum.DEFAULT, allow_download)
        if stock is None:
            note = (f"stock {spec.arch} weights ({os.path.basename(enum.DEFAULT.url)}) are not in the torch "
                    f"cache {_hub_file(enum.DEFAULT.url).parent}; training from random initialisation")
        else:
            state = stock.get_state_dict(progress=False)
            note = f"stock weights {enum.DEFAULT}"
    elif pretrained:
        state = _load_state_file(pretrained)
        note = f"weights from {pretrained}"
    fcn = builder(weights=None, weights_backbone=None, num_classes=21 if state is not None else spec.out_channels,
                  aux_loss=False)
    if state is not None:
        fcn.load_state_dict({k: v for k, v in state.items() if not k.startswith("aux_classifier")}, strict=False)
        last = fcn.classifier[-1]
        if last.out_channels != spec.out_channels:  # a stock VOC model keeps its 21 classes
            fcn.classifier[-1] = nn.Conv2d(last.in_channels, spec.out_channels, 1)
    return FCNWrapper(fcn, spec.in_channels), note


def build_model(spec: ModelSpec, pretrained: str | None = None, *, allow_download: bool = False
                ) -> tuple[nn.Module, str]:
    """Build the model of ``spec``; returns (model, a note on where its weights came from).

    ``pretrained``: None (random init), ``"auto"`` / ``"imagenet"`` / ``"coco"``
    / ``"voc"`` (the family's stock weights when on disk; a note says when they
    are not), or a path to a ``.pth`` / ``.safetensors`` state dict.
    """
    spec = check_spec(spec)
    if spec.family == "unet":
        return _build_smp(spec, pretrained, allow_download)
    if spec.family == "fcn":
        return _build_fcn(spec, pretrained, allow_download)
    from .detection import build_maskrcnn

    return build_maskrcnn(spec, pretrained, allow_download)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
