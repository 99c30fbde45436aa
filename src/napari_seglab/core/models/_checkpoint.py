"""Checkpoints: one file, written atomically, loaded without unpickling code.

Layout (a plain dict saved with ``torch.save``)::

    {"format": "napari-seglab", "version": 1,
     "meta": {...}            # plain str/int/float/bool/list/dict only
     "state_dict": {...},     # tensors
     "optimizer": {...}}      # optional, for continue-training

``meta`` is a :class:`~napari_seglab.core.models._metadata.CheckpointMeta` in its on-disk form (see
:mod:`napari_seglab.core.models._metadata`): everything prediction needs, and how the model was trained.
"""

from __future__ import annotations

import errno
import math
import os
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError
from ..io import atomic_path, check_regular_file, is_disk_full
from ._metadata import CheckpointMeta, DescribedModel, parse_meta
from ._registry import ModelSpec, build_model

FORMAT = "napari-seglab"
VERSION = 1


class Checkpoint(DescribedModel):
    """A loaded checkpoint: typed metadata (``info``), weights and (maybe) optimiser state.

    ``meta`` may be given as a :class:`CheckpointMeta` or in its on-disk dict
    form; the :attr:`meta` property gives the on-disk form back (a new dict:
    for JSON and for callers that read keys).
    """

    def __init__(self, meta: CheckpointMeta | Mapping, state_dict: dict, optimizer: dict | None = None,
                 path: str | None = None):
        self.info = CheckpointMeta.coerce(meta)
        self.state_dict = state_dict
        self.optimizer = optimizer
        self.path = path

    def __repr__(self) -> str:
        return f"Checkpoint(path={self.path!r}, {self.info.model})"

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


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: CheckpointMeta | Mapping,
                    optimizer: torch.optim.Optimizer | dict | None = None) -> Path:
    """Write a checkpoint atomically (temporary file + ``os.replace``); ``meta`` typed or in its dict form."""
    state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    layout = meta.to_dict() if isinstance(meta, CheckpointMeta) else meta
    payload = {"format": FORMAT, "version": VERSION, "meta": _plain(layout), "state_dict": state}
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict() if hasattr(optimizer, "state_dict") else optimizer
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        try:  # through a Python file, so a full disk is an OSError torch's writer keeps as the context
            torch.save(payload, fh)
        except RuntimeError as exc:
            if is_disk_full(exc):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc
            raise
    return path


def check_weights_fit(spec: ModelSpec, state_dict: dict, path) -> None:
    """Refuse weights whose names or shapes do not fit ``spec``, without allocating the model.

    The model is built on PyTorch's ``meta`` device (shapes only, no memory),
    so metadata that describes a huge network over small weights is refused
    before anything large is allocated.
    """
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise InputError(f"{path}: malformed checkpoint weights (entry {str(key)[:60]!r} is not a tensor)")
    try:
        with torch.device("meta"):
            skeleton, _ = build_model(ModelSpec.from_dict(spec.to_dict()), None)
    except InputError as exc:
        raise InputError(f"{path}: the recorded model cannot be built: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - metadata that breaks the builder is the file's fault
        first = (str(exc).splitlines() or [""])[0][:200]
        raise InputError(f"{path}: the recorded model cannot be built ({type(exc).__name__}: {first})") from exc
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [k for k in expected if k in state_dict and tuple(state_dict[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        parts = [f"{len(v)} {what} (e.g. {v[0][:60]})" for v, what in
                 ((missing, "missing"), (unexpected, "unexpected"), (wrong, "of another shape")) if v]
        raise InputError(f"{path}: weights do not fit the recorded model ({spec.family}/"
                         f"{spec.family_entry.model_name(spec)}): {', '.join(parts)}")


def _foreign_format(path: Path) -> str | None:
    """A description of a known non-checkpoint model file (our own exports), else None."""
    if path.suffix.lower() == ".onnx":
        return "an ONNX model (made by seglab export); it runs in ONNX Runtime, not as --model"
    try:
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()[:10_000]
    except (OSError, zipfile.BadZipFile, ValueError):
        return None
    if "rdf.yaml" in names:
        return ("a bioimage.io model package: seglab predict and seglab batch take it as --model; here "
                "pass the original .pt checkpoint")
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        return ("a TorchScript export (made by seglab export --format torchscript); load it with "
                "torch.jit.load, or pass the original .pt checkpoint to seglab")
    return None


def load_checkpoint(path: str | os.PathLike, *, with_optimizer: bool = False) -> Checkpoint:
    """Load a checkpoint safely (``weights_only=True``); bad files raise InputError.

    A file carrying pickled code is refused without running it. Metadata is
    checked field by field and the weights against the model it describes
    (see :func:`check_weights_fit`) before anything is built.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such checkpoint")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a checkpoint file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: checkpoint file is empty")
    check_regular_file(path, "a checkpoint file")
    foreign = _foreign_format(path)
    if foreign:
        raise InputError(f"{path}: is {foreign}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc).lower():
            raise InputError(f"{path}: truncated or corrupt checkpoint (not a readable torch file)") from exc
        raise InputError(f"{path}: refused: the checkpoint carries pickled Python objects, which could run "
                         "code; only plain weights and metadata are loaded") from exc
    except MemoryError as exc:
        raise InputError(f"{path}: the checkpoint does not fit in memory") from exc
    except RecursionError as exc:
        raise InputError(f"{path}: malformed checkpoint (nested too deeply)") from exc
    except Exception as exc:  # noqa: BLE001 - any failure to parse an untrusted file is the file's fault
        first = (str(exc).splitlines() or [""])[0][:200]
        raise InputError(f"{path}: truncated or corrupt checkpoint ({first})") from exc
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
    info = parse_meta(meta, path)
    if not isinstance(payload.get("state_dict"), dict):
        raise InputError(f"{path}: checkpoint holds no weights (state_dict)")
    ckpt = Checkpoint(meta=info, state_dict=payload["state_dict"],
                      optimizer=payload.get("optimizer") if with_optimizer else None, path=str(path))
    check_weights_fit(ckpt.spec, ckpt.state_dict, path)
    if ckpt.optimizer is not None and not isinstance(ckpt.optimizer, dict):
        ckpt.optimizer = None
    return ckpt


def describe_checkpoint(ckpt: Checkpoint) -> str:
    """One line for the user: family, architecture, classes, metrics."""
    spec, info = ckpt.spec, ckpt.info
    val_dice = info.metrics.get("val_dice")
    metric = f", val Dice {val_dice:.3f}" if isinstance(val_dice, float) else ""
    head = f", {spec.head} instance head" if spec.has_regression_head else ""
    resample = f", images resampled x{info.scale:g}" if info.scale != 1.0 else ""
    area = f", typical object {info.object_area:.0f} px" if info.object_area else ""
    size = f", trained at {info.pixel_size[-1]:.4g} µm per pixel" if info.pixel_size else ""
    if info.pixel_size and info.object_area:  # the typical object in µm: its area is in the network's pixels
        across = 2 * math.sqrt(info.object_area / math.pi) / info.scale * info.pixel_size[-1]
        size += f" (objects about {across:.3g} µm across)"
    return (f"{spec.family} {spec.family_entry.model_name(spec)}, {spec.in_channels} channel(s), {spec.n_classes} classes{head}, "
            f"label mode {ckpt.label_mode}{resample}{area}{size}{metric}")
