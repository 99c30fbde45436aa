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

import math
import os
import pickle
import warnings
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
MAX_CHANNELS = 4096  # a sanity cap: a crafted file must not make the loader build a giant layer
MAX_PATCH = 8192  # the largest patch side a checkpoint may record (export traces one such input)
MAX_DEPTH, MAX_NODES, MAX_TEXT = 32, 200_000, 100_000  # bounds on the shape of the metadata
# Mask R-CNN options: (kind, low, high[, length]) for each key a file may set
_DETECTOR_OPTIONS = {
    "patch": ("int", 32, MAX_PATCH), "detections_per_img": ("int", 1, 100_000),
    "rpn_pre_nms_top_n": ("int", 1, 100_000), "rpn_post_nms_top_n": ("int", 1, 100_000),
    "rpn_train_top_n": ("int", 1, 100_000), "box_batch_size_per_image": ("int", 1, 100_000),
    "box_score_thresh": ("num", 0.0, 1.0), "anchor_sizes": ("nums", 1, 4096, 5),
    "aspect_ratios": ("nums", 0.01, 100.0, 3), "image_mean": ("nums", -1e3, 1e3, 3),
    "image_std": ("nums", 1e-6, 1e3, 3),
}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _check_shape(meta: dict, bad) -> None:
    """Walk the metadata without recursion: bounded depth, size and text; plain types only."""
    stack, nodes = [(meta, 0, "meta")], 0
    while stack:
        value, depth, where = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise bad(f"more than {MAX_NODES} values")
        if depth > MAX_DEPTH:
            raise bad(f"nested deeper than {MAX_DEPTH} levels at {where[:60]}...")
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str) or len(k) > 200:
                    raise bad(f"a key of {where} is not a short text")
                stack.append((v, depth + 1, f"{where}.{k}"))
        elif isinstance(value, (list, tuple)):
            stack.extend((v, depth + 1, f"{where}[{i}]") for i, v in enumerate(value))
        elif isinstance(value, str):
            if len(value) > MAX_TEXT:
                raise bad(f"{where} is a text of {len(value)} characters")
        elif not (value is None or isinstance(value, (bool, int, float))):
            raise bad(f"{where} is a {type(value).__name__}")


def _check_model(model, bad) -> None:
    from .models import FAMILIES, check_stored_encoder

    if not isinstance(model, dict):
        raise bad(f"'model' is a {type(model).__name__}, not a model description")
    for key, kind in _MODEL_FIELDS.items():
        value = model.get(key)
        if key in model and (not isinstance(value, kind) or isinstance(value, bool)):
            raise bad(f"model.{key} = {value!r:.40} is not a {kind.__name__}")
    if model.get("family", "unet") not in FAMILIES:
        raise bad(f"unknown model family {model.get('family')!r:.40} in model.family; known: {', '.join(FAMILIES)}")
    for key, low in (("in_channels", 1), ("n_classes", 2)):
        if key in model and not low <= model[key] <= MAX_CHANNELS:
            raise bad(f"model.{key} = {model[key]} is outside {low}..{MAX_CHANNELS}")
    if len(model.get("arch", "")) > 100:
        raise bad("model.arch is too long to be an architecture name")
    if model.get("family", "unet") == "unet":
        try:
            check_stored_encoder(model.get("encoder", "resnet34"))
        except InputError as exc:
            raise bad(f"model.encoder: {exc}") from None
    if "head" in model.get("options", {}):
        from .models import check_head

        try:
            check_head(model["options"]["head"], model.get("family", "unet"))
        except InputError as exc:
            raise bad(f"model.options.head: {exc}") from None
    for key, value in model.get("options", {}).items():
        if key in _DETECTOR_OPTIONS:
            _check_option(f"model.options.{key}", value, _DETECTOR_OPTIONS[key], bad)


def _check_option(name: str, value, rule: tuple, bad) -> None:
    kind, low, high = rule[:3]
    values = value if kind == "nums" else [value]
    if kind == "nums" and (not isinstance(value, list) or len(value) != rule[3]):
        raise bad(f"{name} should be a list of {rule[3]} numbers")
    for v in values:
        ok = _is_int(v) if kind == "int" else _is_num(v)
        if not ok or not low <= v <= high:
            raise bad(f"{name} = {value!r:.60} is not {'a whole number' if kind == 'int' else 'a number'} "
                      f"in {low}..{high}")


def _check_normalization(norm, in_channels: int, bad) -> None:
    if not isinstance(norm, dict):
        raise bad("'normalization' is not a mapping")
    for key in ("low", "high"):
        if key in norm and not (_is_num(norm[key]) and 0 <= norm[key] <= 100):
            raise bad(f"normalization.{key} = {norm[key]!r:.40} is not a percentile in [0, 100]")
    if norm.get("low", 1.0) >= norm.get("high", 99.8):
        raise bad(f"normalization.low = {norm.get('low', 1.0)} is not below normalization.high = "
                  f"{norm.get('high', 99.8)}")
    if "per_image" in norm and not isinstance(norm["per_image"], bool):
        raise bad(f"normalization.per_image = {norm['per_image']!r:.40} is not true or false")
    for key in ("lo", "hi"):
        values = norm.get(key, [])
        if not isinstance(values, list):
            raise bad(f"normalization.{key} is not a list")
        if not all(_is_num(v) for v in values):
            raise bad(f"normalization.{key} holds non-numbers (or NaN/Inf)")
    if not norm.get("per_image", True) and not (len(norm.get("lo", [])) == len(norm.get("hi", []))
                                                == in_channels):
        raise bad(f"normalization.lo and .hi need one value per channel ({in_channels})")


def _check_meta(meta: dict, path: Path) -> None:
    """Refuse metadata of the wrong shape (a crafted or damaged file) with an InputError naming the field."""
    from .labels import LABEL_MODES

    def bad(what: str) -> InputError:
        return InputError(f"{path}: malformed checkpoint metadata ({what})")

    _check_shape(meta, bad)
    _check_model(meta["model"], bad)
    _check_normalization(meta.get("normalization", {}), meta["model"].get("in_channels", 1), bad)
    if meta.get("label_mode", "scribbles") not in LABEL_MODES:
        raise bad(f"label_mode = {meta.get('label_mode')!r:.40} is not one of {', '.join(LABEL_MODES)}")
    patch = meta.get("patch")
    if patch is not None and not (_is_int(patch) and 32 <= patch <= MAX_PATCH):
        raise bad(f"patch = {patch!r:.40} is not a whole number of pixels in 32..{MAX_PATCH}")
    names = meta.get("class_names")
    if names is not None and not (isinstance(names, list) and len(names) <= MAX_CHANNELS
                                  and all(isinstance(n, str) and len(n) <= 200 for n in names)):
        raise bad("class_names is not a list of short texts")
    for key in ("metrics", "training"):
        if key in meta and not isinstance(meta[key], dict):
            raise bad(f"'{key}' is not a mapping")


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
        raise InputError(f"{path}: weights do not fit the recorded model ({spec.family}/{spec.arch}"
                         f"{'/' + spec.encoder if spec.family == 'unet' else ''}): {', '.join(parts)}")


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
        return ("a bioimage.io model package (made by seglab export); open it with bioimage.io tools, "
                "or pass the original .pt checkpoint")
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
    from .io import check_regular_file

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
    _check_meta(meta, path)
    meta.setdefault("normalization", {})
    if not isinstance(payload.get("state_dict"), dict):
        raise InputError(f"{path}: checkpoint holds no weights (state_dict)")
    ckpt = Checkpoint(meta=meta, state_dict=payload["state_dict"],
                      optimizer=payload.get("optimizer") if with_optimizer else None, path=str(path))
    check_weights_fit(ckpt.spec, ckpt.state_dict, path)
    if ckpt.optimizer is not None and not isinstance(ckpt.optimizer, dict):
        ckpt.optimizer = None
    return ckpt


def describe_checkpoint(ckpt: Checkpoint) -> str:
    """One line for the user: family, architecture, classes, metrics."""
    spec = ckpt.spec
    m = ckpt.meta.get("metrics", {})
    m = m if isinstance(m, dict) else {}
    metric = f", val Dice {m['val_dice']:.3f}" if isinstance(m.get("val_dice"), float) else ""
    enc = f"/{spec.encoder}" if spec.family == "unet" else ""
    head = f", {spec.head} instance head" if spec.has_regression_head else ""
    scale = ckpt.meta.get("scale", 1.0)
    resample = f", images resampled x{scale:g}" if isinstance(scale, (int, float)) and scale != 1.0 else ""
    return (f"{spec.family} {spec.arch}{enc}, {spec.in_channels} channel(s), {spec.n_classes} classes{head}, "
            f"label mode {ckpt.label_mode}{resample}{metric}")
