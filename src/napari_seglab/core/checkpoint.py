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


# metadata fields the loader relies on, with the types a well-formed file holds
_MODEL_FIELDS = {"family": str, "arch": str, "encoder": str, "in_channels": int, "n_classes": int,
                 "options": dict}
_NORM_FIELDS = {"low": (int, float), "high": (int, float), "per_image": bool, "lo": list, "hi": list}
MAX_CHANNELS = 4096  # a sanity cap: a crafted file must not make the loader build a giant layer


def _check_meta(meta: dict, path: Path) -> None:
    """Refuse metadata of the wrong shape (a crafted or damaged file) with an InputError."""
    def bad(what: str) -> InputError:
        return InputError(f"{path}: malformed checkpoint metadata ({what})")

    model = meta["model"]
    if not isinstance(model, dict):
        raise bad(f"'model' is a {type(model).__name__}, not a model description")
    for key, kind in _MODEL_FIELDS.items():
        value = model.get(key)
        if key in model and (not isinstance(value, kind) or isinstance(value, bool)):
            raise bad(f"model.{key} = {value!r:.40} is not a {kind.__name__}")
    for key in ("in_channels", "n_classes"):
        if key in model and not 1 <= model[key] <= MAX_CHANNELS:
            raise bad(f"model.{key} = {model[key]} is outside 1..{MAX_CHANNELS}")
    norm = meta.get("normalization", {})
    if not isinstance(norm, dict):
        raise bad("'normalization' is not a mapping")
    for key, kind in _NORM_FIELDS.items():
        if key in norm and not isinstance(norm[key], kind):
            raise bad(f"normalization.{key} = {norm[key]!r:.40} has the wrong type")
    for key in ("lo", "hi"):
        if not all(isinstance(v, (int, float)) for v in norm.get(key, [])):
            raise bad(f"normalization.{key} holds non-numbers")


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
    version = payload.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise InputError(f"{path}: checkpoint format version {version!r:.40} is not a number")
    if version > VERSION:
        raise InputError(f"{path}: checkpoint format version {payload['version']} is newer than this "
                         f"napari-seglab understands ({VERSION}); upgrade napari-seglab")
    meta = payload.get("meta") or {}
    if not isinstance(meta, dict) or "model" not in meta:
        raise InputError(f"{path}: checkpoint metadata has no model description")
    _check_meta(meta, path)
    if not isinstance(payload.get("state_dict"), dict):
        raise InputError(f"{path}: checkpoint holds no weights (state_dict)")
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
