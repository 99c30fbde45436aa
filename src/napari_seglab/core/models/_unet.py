"""The ``unet`` family: segmentation-models-pytorch architectures on any smp or timm encoder.

A dense (semantic) family: one logit per class and pixel, or the foreground
logit and maps of a "flows" / "distance" instance head. ImageNet encoder
weights are used only when already in the Hugging Face cache (or a file is
given): nothing downloads unless the caller allows it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from torch import nn

from ..errors import InputError
from ._catalogue import CATALOGUE, DEFAULT_ENCODER
from ._dense import dense_loss
from ._family import Family, Spec
from ._weights import load_state_file

#: the largest U-Net options a checkpoint may ask for (metadata is untrusted input)
_MAX_DEPTH, _MAX_DECODER = 5, 1024
#: the decoders that take decoder channels; the others keep smp's defaults
_SIZED_DECODERS = ("Unet", "UnetPlusPlus", "MAnet")


def smp_encoders() -> list[str]:
    """Names of the encoders segmentation-models-pytorch offers."""
    from segmentation_models_pytorch.encoders import get_encoder_names

    return list(get_encoder_names())


def unet_options(spec: Spec) -> dict:
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


def check_unet_spec(spec: Spec) -> None:
    """Refuse an unknown encoder (with similar names) and bad depth / decoder options."""
    encoders = smp_encoders()
    if spec.encoder not in encoders and not spec.encoder.startswith("tu-"):
        close = [e for e in encoders if spec.encoder.lower()[:4] in e][:12]
        hint = f" (similar: {', '.join(close)})" if close else f"; e.g. {', '.join(encoders[:10])}, ..."
        raise InputError(f"unknown encoder {spec.encoder!r}{hint}")
    unet_options(spec)


def check_stored_encoder(name) -> str:
    """Validate an encoder name read from a file (untrusted) against SegLab's own registry.

    Allowed: segmentation-models-pytorch's built-in encoder names, and
    ``tu-NAME`` where NAME is a model in timm's in-process registry (plain
    letters, digits, ``_`` and ``.``). Refused: hub or folder prefixes
    (``hf-hub:``, ``local-dir:``), paths and anything else, so a checkpoint
    can never make SegLab look something up on the network or on disk.
    """
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


def _check_stored(model: Mapping) -> None:
    check_stored_encoder(model.get("encoder", DEFAULT_ENCODER))


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


def build_unet(spec: Spec, pretrained: str | None, allow_download: bool) -> tuple[nn.Module, str]:
    """The smp network of ``spec``; returns (model, weights note)."""
    import segmentation_models_pytorch as smp

    cls = getattr(smp, spec.arch)
    kwargs = unet_options(spec) if spec.arch in _SIZED_DECODERS else {}
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
    state = load_state_file(weights_file)
    missing, unexpected = model.encoder.load_state_dict(state, strict=False)
    if len(missing) > len(state) // 2:
        raise InputError(f"{weights_file}: does not hold weights for encoder {spec.encoder!r}")
    model.encoder.set_in_channels(spec.in_channels, pretrained=True)
    return model, f"encoder weights from {weights_file}"


FAMILY = Family.of(CATALOGUE["unet"], build=build_unet, loss=dense_loss, encoders=smp_encoders,
                   check_options=check_unet_spec, check_stored=_check_stored)
