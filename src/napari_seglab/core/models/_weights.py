"""Pretrained weights on disk, shared by the family modules; nothing here downloads by itself."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError


def hub_file(url: str) -> Path:
    """Where torch's hub cache keeps the file of ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def load_state_file(path: str | os.PathLike) -> dict:
    """A state dict of tensors from a ``.pth`` / ``.pt`` (weights only) or ``.safetensors`` file."""
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


def torchvision_stock(weights_enum, allow_download: bool):
    """``weights_enum`` when its file is cached (or downloading is allowed), else None."""
    if allow_download or hub_file(weights_enum.url).is_file():
        return weights_enum
    return None


class ChannelAdapter(nn.Module):
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


def load_matching(module: nn.Module, state: dict, source: str, model: str = "this model") -> int:
    """Load the entries of ``state`` whose names and shapes fit ``module``; returns how many.

    InputError when fewer than half of ``module``'s tensors fit: ``source`` does not hold weights for
    ``model`` (a file of another network).
    """
    own = module.state_dict()
    usable = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    if len(usable) < len(own) // 2:
        raise InputError(f"{source}: does not hold weights for {model} ({len(usable)} of {len(own)} tensors fit)")
    module.load_state_dict(usable, strict=False)
    return len(usable)
