"""Checkpoints: one file, written atomically, loaded without unpickling code.

Layout (a plain dict saved with ``torch.save``)::

    {"format": "napari-seglab", "version": 1,
     "meta": {...}            # plain str/int/float/bool/list/dict only
     "state_dict": {...},     # tensors
     "optimizer": {...}}      # optional, for continue-training

``meta`` holds everything prediction needs: ``model`` (a ModelSpec dict),
``label_mode``, ``class_names``, ``normalization``, ``patch``, ``training``
(data summary, settings, steps, seconds) and ``metrics``.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import InputError
from .io import atomic_path
from .models import ModelSpec, build_model

FORMAT = "napari-seglab"
VERSION = 1


@dataclass
class Checkpoint:
    """A loaded checkpoint: metadata, weights and (maybe) optimiser state."""

    meta: dict
    state_dict: dict
    optimizer: dict | None = None
    path: str | None = None

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec.from_dict(self.meta["model"])

    @property
    def label_mode(self) -> str:
        return self.meta.get("label_mode", "scribbles")

    def build(self, device: torch.device | str = "cpu") -> nn.Module:
        """The model with these weights, in eval mode, on ``device``."""
        model, _ = build_model(self.spec, None)
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as exc:
            raise InputError(f"{self.path}: weights do not fit the recorded model "
                             f"({self.spec.family}/{self.spec.arch}): {str(exc).splitlines()[0]}") from exc
        return model.to(device).eval()


def _plain(value):
    """Check that metadata holds only types weights_only loading accepts."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: dict,
                    optimizer: torch.optim.Optimizer | dict | None = None) -> Path:
    """Write a checkpoint atomically (temporary file + ``os.replace``)."""
    state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "version": VERSION, "meta": _plain(meta), "state_dict": state}
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict() if hasattr(optimizer, "state_dict") else optimizer
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: str | os.PathLike, *, with_optimizer: bool = False) -> Checkpoint:
    """Load a checkpoint safely (``weights_only=True``); bad files raise InputError.

    A file carrying pickled code is refused without running it.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such checkpoint")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a checkpoint file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: checkpoint file is empty")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc).lower():
            raise InputError(f"{path}: truncated or corrupt checkpoint (not a readable torch file)") from exc
        raise InputError(f"{path}: refused: the checkpoint carries pickled Python objects, which could run "
                         "code; only plain weights and metadata are loaded") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InputError(f"{path}: truncated or corrupt checkpoint ({str(exc).splitlines()[0][:200]})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(f"{path}: not a napari-seglab checkpoint")
    if int(payload.get("version", 0)) > VERSION:
        raise InputError(f"{path}: checkpoint format version {payload['version']} is newer than this "
                         f"napari-seglab understands ({VERSION}); upgrade napari-seglab")
    meta = payload.get("meta") or {}
    if "model" not in meta:
        raise InputError(f"{path}: checkpoint metadata has no model description")
    return Checkpoint(meta=meta, state_dict=payload["state_dict"],
                      optimizer=payload.get("optimizer") if with_optimizer else None, path=str(path))


def describe_checkpoint(ckpt: Checkpoint) -> str:
    """One line for the user: family, architecture, classes, metrics."""
    spec = ckpt.spec
    m = ckpt.meta.get("metrics", {})
    metric = f", val Dice {m['val_dice']:.3f}" if isinstance(m.get("val_dice"), float) else ""
    enc = f"/{spec.encoder}" if spec.family == "unet" else ""
    return (f"{spec.family} {spec.arch}{enc}, {spec.in_channels} channel(s), {spec.n_classes} classes, "
            f"label mode {ckpt.label_mode}{metric}")
